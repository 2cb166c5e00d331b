"""The runs list: every run under the runs directory, newest first, re-read while it is shown."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual.widgets import DataTable

from cockpit.runs import RunInfo, list_runs
from cockpit.sanitize import clean
from cockpit.widgets.checkpoints_pane import fmt_age

COLUMNS = ("run", "state", "step", "loss", "acc", "age", "host")
#: Seconds between two re-reads of the runs directory while the list is shown.
REREAD_S = 2.0


def row_cells(info: RunInfo, now: float) -> tuple[str, ...]:
    """One run's cells, as text (status.json is any JSON at all: non-numbers show as nothing)."""
    metrics = info.last_eval.get("metrics")
    metrics = metrics if isinstance(metrics, dict) else {}
    loss = info.status.get("loss")
    acc = metrics.get("accuracy")
    updated = info.status.get("updated_at")
    updated = updated if isinstance(updated, (int, float)) and math.isfinite(updated) else 0
    return (
        info.name, info.state, str(info.status.get("step", "")),
        f"{loss:.4f}" if isinstance(loss, (int, float)) else "",
        f"{acc:.3f}" if isinstance(acc, (int, float)) else "",
        fmt_age(max(0.0, now - updated)),
        str(info.status.get("host", "")))


class RunsList(DataTable):
    """A table of runs; Enter on one posts DataTable.RowSelected with the run's path as the row key.
    Re-read every REREAD_S seconds while its screen is the one shown."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.root, self.clock = root, clock
        #: Runs marked for comparison (their paths, as row keys), in the order marked.
        self.marked: list[str] = []

    def on_mount(self) -> None:
        self.add_columns(*COLUMNS)
        self.set_interval(REREAD_S, self.refresh_runs)
        self.refresh_runs(force=True)

    def refresh_runs(self, force: bool = False) -> None:
        """Re-read the runs directory (only while the list is shown, unless forced), keeping the
        cursor on the run it was on."""
        if not self.app.is_running or not (force or self.screen.is_current):
            return
        selected = None
        if self.row_count and self.is_valid_row_index(self.cursor_row):
            selected = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        self.clear()
        now = self.clock()
        for info in list_runs(self.root):
            # Text cells: a DataTable parses plain strings as markup, and these come from disk.
            cells = row_cells(info, now)
            if str(info.path) in self.marked:
                cells = (f"\u25cf {cells[0]}", *cells[1:])  # marked for comparison
            self.add_row(*(Text(clean(c)[:80]) for c in cells), key=str(info.path))
        self.marked = [m for m in self.marked if m in self.rows]  # a run removed is unmarked
        if selected is not None and selected in self.rows:
            self.move_cursor(row=self.get_row_index(selected), animate=False)  # stay on the run
