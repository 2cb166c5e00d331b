"""A run's compression frontier (RUN/compress/frontier.json) as a chart and a table, and the
compress job's progress while it runs (RUN/compress/progress.jsonl), re-read every second.

`x` switches the chart's x axis between file size and CPU latency; Escape goes back."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static

from cockpit.frontier import frontier_path, job_running, progress_line, read_frontier, read_progress
from cockpit.sanitize import clean
from cockpit.widgets.frontier_chart import FrontierChart

#: Seconds between two re-reads of the compress folder.
REREAD_S = 1.0


def table(points: list[dict]) -> str:
    """The points as plain-text rows (frontier ones starred)."""
    rows = [("", "point", "val acc", "size", "latency", "training")]
    for p in points:
        train = p.get("train_s")
        rows.append(("*" if p.get("pareto") else "", clean(str(p["name"]))[:40], f"{100 * p['accuracy']:.2f}%",
                     f"{p['bytes'] / 1024:,.0f} KB", f"{p['latency_ms']:.2f} ms",
                     f"{train:.0f} s" if isinstance(train, (int, float)) else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


class FrontierScreen(Screen):
    """Accuracy against size (or latency) of every point of a run's compress job."""

    DEFAULT_CSS = """
    FrontierScreen #frontier-title { height: auto; padding: 0 1; }
    FrontierScreen FrontierChart { height: 1fr; border: round $primary; }
    FrontierScreen #frontier-table { height: auto; max-height: 12; padding: 0 1; }
    """

    BINDINGS = [
        Binding("escape,q", "back", "Back", id="frontier-back", tooltip="Back to the runs list"),
        Binding("x", "switch_axis", "Size/latency", id="frontier-axis",
                tooltip="Accuracy against file size, or against CPU latency"),
    ]

    def __init__(self, run: Path):
        super().__init__()
        self.run, self.x = run, "bytes"
        self.report: dict | None = None
        self.seen: float | None = None  # frontier.json's mtime when last drawn

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("", id="frontier-title", markup=False)
            chart = FrontierChart(id="frontier-chart")
            chart.border_title = "compression frontier"
            yield chart
            yield Static("", id="frontier-table", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.reread()
        self.set_interval(REREAD_S, self.reread)

    def reread(self) -> None:
        records = read_progress(self.run)
        try:
            mtime = frontier_path(self.run).stat().st_mtime
        except OSError:
            mtime = None
        if mtime is not None and mtime != self.seen:
            self.report, self.seen = read_frontier(self.run), mtime
            self.draw()
        title = f"{clean(self.run.name)}: compression frontier"
        if records and (job_running(records) or self.report is None):
            title += "\n" + clean(progress_line(records[-1]))
        elif self.report is None:
            title += "\nno frontier yet: press C in the runs list to compute one"
        self.query_one("#frontier-title", Static).update(Text(title))

    def draw(self) -> None:
        points = self.report["points"] if self.report else []
        self.query_one(FrontierChart).show(points, self.x)
        if self.report:
            note = (f"latency {self.report.get('latency_measured', '')}; * on the frontier: no other point is at "
                    "least as good on accuracy, size and latency and better on one")
            self.query_one("#frontier-table", Static).update(Text(table(points) + "\n" + note))

    def action_switch_axis(self) -> None:
        self.x = "latency_ms" if self.x == "bytes" else "bytes"
        self.query_one(FrontierChart).border_title = (
            "compression frontier: accuracy vs " + ("latency" if self.x == "latency_ms" else "size"))
        self.draw()

    def action_back(self) -> None:
        self.app.pop_screen()
