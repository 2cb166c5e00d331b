"""The runs list as a screen of its own: every run under the runs directory; Enter opens one."""

from __future__ import annotations

import json
import os
import time
import tomllib
from pathlib import Path
from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Static

from contracts.layout import RunLayout
from cockpit import launcher
from cockpit.messages import RunChosen
from cockpit.sanitize import clean
from cockpit.screens.modals import QuantizeScreen, ReportScreen, SpotLaunch, SpotLaunchScreen
from cockpit.screens.sized import SizedScreen
from cockpit.widgets.runs_list import RunsList


QUANTIZABLE = ("finished", "stopped")


def read_status(run: Path) -> dict:
    try:
        value = json.loads(RunLayout(run).status.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def suggested_mode(run: Path) -> str:
    """qat-convert for a QAT run, dynamic for an MLP, else static (read from config.toml)."""
    try:
        cfg = tomllib.loads(RunLayout(run).config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return "static"
    section = lambda name: cfg.get(name) if isinstance(cfg.get(name), dict) else {}  # noqa: E731
    if section("quantize").get("qat") is True:
        return "qat-convert"
    return "dynamic" if section("model").get("name") == "mlp" else "static"


class RunsScreen(SizedScreen):
    """Every run, newest first, re-read every few seconds while shown; Enter follows the
    highlighted run in the run screen, `l` or Escape goes back to the run followed, `z`
    quantizes the highlighted finished run (`cockpit-engine quantize`) and shows its report, `a`
    launches a config on an EC2 spot instance (`cockpit-engine cloud launch`)."""

    BINDINGS = [
        Binding("l,escape", "back", "Back", id="runs-back", tooltip="Back to the run being followed"),
        Binding("n", "new_run", "New run", id="runs-new-run", tooltip="Start a new run from a config file"),
        Binding("z", "quantize", "Quantize", id="runs-quantize",
                tooltip="Quantize the highlighted finished run to int8 and show what it buys"),
        Binding("a", "spot_launch", "Spot launch", id="runs-spot-launch",
                tooltip="Train a config on an EC2 spot instance, mirrored to S3 (cockpit-engine cloud launch)"),
        Binding("space", "mark", "Mark", id="runs-mark", tooltip="Mark the highlighted run for comparison (again: unmark)"),
        Binding("o", "compare", "Compare", id="runs-compare",
                tooltip="Overlay the marked runs' loss and accuracy curves, each run in its own colour"),
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

    def highlighted(self) -> Path | None:
        table = self.query_one(RunsList)
        if not table.row_count or not table.is_valid_row_index(table.cursor_row):
            return None
        return Path(str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value))

    def action_mark(self) -> None:
        """Mark the highlighted run for comparison, or unmark it."""
        run = self.highlighted()
        if run is None:
            return
        table = self.query_one(RunsList)
        key = str(run)
        table.marked.remove(key) if key in table.marked else table.marked.append(key)
        table.refresh_runs(force=True)

    def action_compare(self) -> None:
        """The marked runs' curves overlaid (two at least; the highlighted one counts when one is marked)."""
        table = self.query_one(RunsList)
        runs = [Path(m) for m in table.marked]
        here = self.highlighted()
        if len(runs) == 1 and here is not None and here not in runs:
            runs.append(here)
        if len(runs) < 2:
            self.notify("mark two runs or more with space, then press o", severity="warning")
            return
        from cockpit.screens.compare_screen import CompareScreen

        self.app.push_screen(CompareScreen(runs))

    def action_quantize(self) -> None:
        """Quantize the highlighted run (finished or stopped): pick a mode, then wait for the report."""
        run = self.highlighted()
        if run is None:
            self.notify("no run highlighted", severity="warning")
            return
        state = read_status(run).get("state")
        if state not in QUANTIZABLE:
            self.notify(f"{run.name} is {state or 'not started'}: only a finished or stopped run can be quantized",
                        severity="warning", markup=False)
            return

        def chosen(mode: str | None) -> None:
            if mode is not None:
                self.quantize(run, mode)

        self.app.push_screen(QuantizeScreen(run.name, suggested_mode(run)), chosen)

    def quantize(self, run: Path, mode: str) -> None:
        def work() -> None:
            result = launcher.quantize_run(run, mode)
            self.app.call_from_thread(self._quantized, run, mode, result)

        self.notify(f"quantizing {run.name} ({mode}): about a minute, it compiles both models...",
                    markup=False, timeout=10)
        self.run_worker(work, thread=True, group="quantize", name=f"quantize {run.name}")

    def _quantized(self, run: Path, mode: str, result: launcher.Launch) -> None:
        if result.code == 0:
            self.app.push_screen(ReportScreen(f"{run.name}: {mode} int8 beside the float model", clean(result.message)))
        else:
            self.notify(f"quantize {mode} refused (exit {result.code}):\n{clean(result.message)}",
                        severity="error", markup=False, timeout=20)

    def action_spot_launch(self) -> None:
        """Ask for a config, an instance type and an S3 location, then launch in a worker."""
        def chosen(answer: SpotLaunch | None) -> None:
            if answer is None:
                return

            def work() -> None:
                result = launcher.cloud_launch(answer.config, answer.instance_type, answer.s3_uri,
                                               answer.region, answer.ami)
                self.app.call_from_thread(self._launched_spot, result)

            self.notify(f"launching a {answer.instance_type} spot instance...", markup=False, timeout=10)
            self.run_worker(work, thread=True, group="cloud", name="cloud launch")

        self.app.push_screen(SpotLaunchScreen(os.environ.get("COCKPIT_S3", "")), chosen)

    def _launched_spot(self, result: launcher.Launch) -> None:
        if result.code == 0:
            self.app.push_screen(ReportScreen("spot instance launched", clean(result.message)))
        else:
            self.notify(f"the spot launch was refused (exit {result.code}):\n{clean(result.message)}",
                        severity="error", markup=False, timeout=20)

    def action_new_run(self) -> None:
        """The run screen's new-run prompt (the new run is followed there)."""
        self.app.switch_mode("run")
        self.app.run_screen.action_new_run()
