"""The runs list as a screen of its own: every run under the runs directory; Enter opens one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Static

from cockpit.messages import RunChosen
from cockpit.screens.sized import SizedScreen
from cockpit.widgets.runs_list import RunsList


class RunsScreen(SizedScreen):
    """Every run, newest first, re-read every few seconds while shown; Enter follows the
    highlighted run in the run screen, `l` or Escape goes back to the run followed."""

    BINDINGS = [
        Binding("l,escape", "back", "Back", id="runs-back", tooltip="Back to the run being followed"),
        Binding("n", "new_run", "New run", id="runs-new-run", tooltip="Start a new run from a config file"),
    ]

    def __init__(self, runs_root: Path, clock: Callable[[], float] = time.time):
        super().__init__()
        self.runs_root, self.clock = runs_root, clock

    def compose(self) -> ComposeResult:
        yield self.too_small()
        with Vertical(id="main"):
            yield Static("Runs, newest first. Enter follows the highlighted run.", id="runs-title", markup=False)
            yield RunsList(self.runs_root, self.clock, id="runs")
        yield Footer()

    def on_screen_resume(self) -> None:
        self.query_one(RunsList).refresh_runs(force=True)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.post_message(RunChosen(Path(str(event.row_key.value))))

    def action_back(self) -> None:
        """Back to the run screen."""
        self.app.switch_mode("run")

    def action_new_run(self) -> None:
        """The run screen's new-run prompt (the new run is followed there)."""
        self.app.switch_mode("run")
        self.app.run_screen.action_new_run()
