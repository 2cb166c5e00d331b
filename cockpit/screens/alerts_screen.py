"""The run's alerts (the `!` key): step, severity, kind and message, newest first."""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from cockpit.link import RunLink
from cockpit.ranks import MAX_ALERTS
from cockpit.sanitize import clean

REFRESH_S = 0.5
COLUMNS = (("step", 7), ("severity", 8), ("kind", 16), ("rank", 5), ("message", None))


class AlertsScreen(Screen[None]):
    """Every alert the run raised (the newest MAX_ALERTS), updated as new ones come."""

    BINDINGS = [Binding("escape,exclamation_mark,q", "back", "Back", id="alerts-back", tooltip="Back to the run")]

    def __init__(self, link_of: Callable[[], RunLink | None]) -> None:
        super().__init__()
        self.link_of = link_of
        self.shown_total = -1

    def compose(self) -> ComposeResult:
        yield Static(Text("no alerts in this run"), id="alerts-title")
        yield DataTable(id="alerts-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label, width in COLUMNS:
            table.add_column(label, width=width, key=label)
        self.set_interval(REFRESH_S, self.refresh_alerts)
        self.refresh_alerts()

    def refresh_alerts(self) -> None:
        """Rewrite the list when an alert came since the last look."""
        link = self.link_of()
        if link is None or not self.is_attached:
            return
        with link.lock:
            h = link.history
            if h.alerts_total == self.shown_total:
                return
            self.shown_total, alerts = h.alerts_total, list(h.alerts)
        table = self.query_one(DataTable)
        table.clear()
        colours = self.app.theme_variables
        for a in reversed(alerts):
            critical = a.get("severity") == "critical"
            style = colours.get("error", "red") if critical else colours.get("warning", "yellow")
            table.add_row(str(a.get("step", "")), Text(clean(str(a.get("severity", ""))), style=style),
                          clean(str(a.get("kind", "")))[:16], str(a.get("rank", "")),
                          clean(str(a.get("message", ""))))
        kept = f" (the newest {MAX_ALERTS})" if self.shown_total > len(alerts) else ""
        self.query_one("#alerts-title", Static).update(
            Text(f"{self.shown_total} alerts in this run{kept}, newest first" if alerts else "no alerts in this run"))

    def action_back(self) -> None:
        self.dismiss(None)
