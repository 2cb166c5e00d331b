"""Several runs' curves on one screen: loss and accuracy, each run in its own colour, with a legend.

`CompareScreen(runs)` takes any list of run directories: the runs list opens it on the runs marked
there (space, then o); a sweep's trials are run directories too, so the trials screen can open it
on the trials it has. Each run's events.jsonl is folded (the fast replay, cockpit/link.py) in a
worker thread, then both charts are drawn once; r re-reads them.
"""

from __future__ import annotations

import re
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static

from cockpit.history import RunHistory
from cockpit.link import RunLink
from cockpit.sanitize import clean
from cockpit.widgets.chart import Chart, Line

#: One colour a run, in order (plotext's names: every terminal, the 16-colour theme too).
COLOURS = ("cyan", "magenta", "orange", "green", "red", "blue", "yellow", "white")
#: Runs drawn at most (more would leave no colour to tell them apart).
MAX_RUNS = len(COLOURS)


def short_name(run: Path) -> str:
    """A legend's label: the run id without its date and time (YYYYmmdd-HHMMSS-<name>-<hex>)."""
    return clean(re.sub(r"^\d{8}-\d{6}-", "", run.name))[:28]


def curves(histories: list[tuple[Path, RunHistory]]) -> dict[str, list[Line]]:
    """The lines of each chart: a run's training loss; its validation accuracy, else its training one."""
    loss, accuracy = [], []
    for (run, h), colour in zip(histories, COLOURS):
        label = short_name(run)
        xs, ys = h.loss.points()
        loss.append((list(xs), list(ys), label, colour))
        acc = h.val_accuracy if len(h.val_accuracy) else getattr(h, "accuracy", h.val_accuracy)
        xs, ys = acc.points()
        accuracy.append((list(xs), list(ys), label, colour))
    return {"loss": loss, "accuracy": accuracy}


class CompareScreen(Screen):
    """The runs' loss and accuracy curves overlaid; Escape goes back."""

    DEFAULT_CSS = """
    CompareScreen #compare-title { height: 1; padding: 0 1; }
    CompareScreen #compare-charts { height: 1fr; }
    CompareScreen Chart { width: 1fr; height: 1fr; border: round $primary; }
    """

    BINDINGS = [
        Binding("escape,o,q", "back", "Back", id="compare-back", tooltip="Back to the list"),
        Binding("r", "reload", "Re-read", id="compare-reload", tooltip="Read the runs' events again"),
    ]

    def __init__(self, runs: list[Path]):
        super().__init__()
        self.runs = list(runs)[:MAX_RUNS]
        #: What each chart drew last (its lines), for tests and the legend.
        self.drawn: dict[str, list[Line]] = {}

    def compose(self) -> ComposeResult:
        with Vertical(id="compare"):
            yield Static(f"comparing {len(self.runs)} runs: " + ", ".join(short_name(r) for r in self.runs),
                         id="compare-title", markup=False)
            with Horizontal(id="compare-charts"):
                loss, accuracy = Chart(id="compare-loss"), Chart(id="compare-accuracy")
                loss.border_title, accuracy.border_title = "loss", "accuracy (validation; else training)"
                yield loss
                yield accuracy
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        runs = self.runs

        def work() -> None:
            histories = []
            for run in runs:
                link = RunLink(run)
                link.poll()
                histories.append((run, link.history))
            self.app.call_from_thread(self.show, curves(histories))

        self.run_worker(work, thread=True, group="compare", name="compare", exclusive=True)

    def show(self, lines: dict[str, list[Line]]) -> None:
        self.drawn = lines
        self.query_one("#compare-loss", Chart).draw("loss", lines["loss"])
        self.query_one("#compare-accuracy", Chart).draw("accuracy", lines["accuracy"])

    def action_back(self) -> None:
        self.dismiss()
