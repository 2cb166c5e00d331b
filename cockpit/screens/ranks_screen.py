"""Every rank of a run in one table (the `R` key), with the ranks' min, median and max on top."""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from cockpit.link import RunLink
from cockpit.widgets.ranks_pane import SLOWEST, summary_lines
from cockpit.widgets.ranks_table import RanksTable

#: Seconds between two looks at the run's newest ranks event.
REFRESH_S = 0.5


class RanksScreen(Screen[None]):
    """The newest ranks event as a table of every rank, updated in place as events come."""

    BINDINGS = [
        Binding("escape,R,q", "back", "Back", id="ranks-back", tooltip="Back to the run"),
        Binding("s", "sort", "Sort", id="ranks-sort", tooltip="Rows by busy time, longest first, or by rank"),
    ]

    def __init__(self, link_of: Callable[[], RunLink | None]) -> None:
        super().__init__()
        self.link_of = link_of

    def compose(self) -> ComposeResult:
        yield Static(Text("waiting for a ranks event (a run of several processes sends one each logging step)"),
                     id="ranks-summary")
        yield RanksTable(id="ranks-table")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(REFRESH_S, self.refresh_ranks)
        self.call_after_refresh(self.refresh_ranks)

    def refresh_ranks(self) -> None:
        """Show the newest ranks event, if it is new (the table writes only changed cells)."""
        link = self.link_of()
        if link is None or not self.is_attached:
            return
        table = self.query_one(RanksTable)
        with link.lock:
            fold = link.history.ranks
            if not fold.records or fold.mark == table.shown_version:
                return
            step = "" if fold.step is None else f" at step {fold.step:.0f}"
            head = f"{len(fold.records)} ranks{step}; slowest {SLOWEST} rank {fold.slowest}"
            lines = summary_lines(fold)
            table.show(fold, style="bold " + self.app.theme_variables.get("warning", "yellow"))
        self.query_one("#ranks-summary", Static).update(Text("\n".join([head, *lines]), no_wrap=True))

    def action_sort(self) -> None:
        """Rows by busy time, or by rank."""
        self.query_one(RanksTable).toggle_sort()

    def action_back(self) -> None:
        self.dismiss(None)
