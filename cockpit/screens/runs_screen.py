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

from contracts import slurm
from contracts.control import send_command
from contracts.events import FINAL_STATES
from contracts.layout import RunLayout
from cockpit import launcher
from cockpit.messages import RunChosen
from cockpit.sanitize import clean
from cockpit.screens.modals import (ConfirmCancelJob, ConfirmStop, QuantizeScreen, ReportScreen, SpotLaunch,
                                    SpotLaunchScreen)
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
    quantizes the highlighted finished run (`cockpit-engine quantize`) and shows its report, `C`
    starts its compression frontier (`cockpit-engine compress --detach`) and `F` shows it, `a`
    launches a config on an EC2 spot instance (`cockpit-engine cloud launch`), `s` stops the
    highlighted run, or, on a Slurm job's row, cancels the job (`scancel`), after a confirmation."""

    BINDINGS = [
        Binding("l,escape", "back", "Back", id="runs-back", tooltip="Back to the run being followed"),
        Binding("n", "new_run", "New run", id="runs-new-run", tooltip="Start a new run from a config file"),
        Binding("z", "quantize", "Quantize", id="runs-quantize",
                tooltip="Quantize the highlighted finished run to int8 and show what it buys"),
        Binding("C", "compress", "Compress", id="runs-compress", show=False,
                tooltip="The compression frontier of the highlighted finished run: a half-width student alone and "
                        "distilled, int8 and QAT (cockpit-engine compress --detach), then its chart"),
        Binding("F", "frontier", "Frontier", id="runs-frontier", show=False,
                tooltip="The highlighted run's compression frontier (RUN/compress/frontier.json) and the job's progress"),
        Binding("a", "spot_launch", "Spot launch", id="runs-spot-launch",
                tooltip="Train a config on an EC2 spot instance, mirrored to S3 (cockpit-engine cloud launch)"),
        Binding("s", "stop", "Stop/cancel", id="runs-stop",
                tooltip="Stop the highlighted run (checkpoint, then exit); on a Slurm job's row, cancel the job "
                        "(scancel); asks first"),
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
        self.query_one(RunsList).poll_jobs(force=True)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        run = Path(str(event.row_key.value))
        info = self.query_one(RunsList).infos.get(str(run))
        if info is not None and not RunLayout(run).events.is_file() and info.job_id is not None:
            self.notify(f"Slurm job {info.job_id} has not started its engine yet: nothing to follow",
                        severity="warning", markup=False)
            return
        self.post_message(RunChosen(run))

    def action_stop(self) -> None:
        """`s`: on a Slurm job's row (queued or running) cancel the job; on a local run's, stop the run
        (checkpoint, then exit); each after a confirmation."""
        run = self.highlighted()
        info = self.query_one(RunsList).infos.get(str(run)) if run is not None else None
        if info is None:
            self.notify("no run highlighted", severity="warning")
            return
        if info.job is not None:
            job = info.job

            def cancel(yes: bool | None) -> None:
                if yes:
                    self.cancel_job(job.job_id)

            self.app.push_screen(ConfirmCancelJob(job.job_id, info.name, job.label), cancel)
            return
        socket_path = info.socket
        if info.state in ("queued", "exited", "unknown") or info.state in FINAL_STATES or not socket_path:
            self.notify(f"{info.name} is {info.state}: nothing to stop", severity="warning", markup=False)
            return

        def stop(yes: bool | None) -> None:
            if yes:
                self.stop_run(info.name, socket_path)

        self.app.push_screen(ConfirmStop(info.name), stop)

    def cancel_job(self, job_id: int) -> None:
        def work() -> None:
            try:
                slurm.cancel(job_id)
                error = None
            except slurm.SlurmError as e:
                error = str(e)
            self.app.call_from_thread(self._cancelled, job_id, error)

        self.run_worker(work, thread=True, group="scancel", name=f"scancel {job_id}")

    def _cancelled(self, job_id: int, error: str | None) -> None:
        if error:
            self.notify(f"cancel failed: {clean(error)}", severity="error", markup=False, timeout=20)
        else:
            self.notify(f"cancelled Slurm job {job_id}", markup=False)
        self.query_one(RunsList).poll_jobs(force=True)

    def stop_run(self, name: str, socket_path: str) -> None:
        def work() -> None:
            try:
                reply = send_command(socket_path, "stop")
            except Exception as e:  # noqa: BLE001  (no listener, a refused or broken connection)
                reply = {"ok": False, "error": str(e)}
            self.app.call_from_thread(self._stopped, name, reply)

        self.notify(f"stopping {name}: it checkpoints first...", markup=False)
        self.run_worker(work, thread=True, group="stop", name=f"stop {name}")

    def _stopped(self, name: str, reply: dict) -> None:
        if reply.get("ok"):
            self.notify(f"{name} stopped at step {reply.get('step')}", markup=False)
        else:
            self.notify(f"stop {name}: {clean(str(reply.get('error', 'failed')))}", severity="error", markup=False)
        self.query_one(RunsList).refresh_runs(force=True)

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

    def action_compress(self) -> None:
        """`C`: start `cockpit-engine compress RUN --detach` on the highlighted finished run in a worker;
        once it is under way, the frontier screen follows its progress."""
        run = self.highlighted()
        if run is None:
            self.notify("no run highlighted", severity="warning")
            return
        state = read_status(run).get("state")
        if state != "finished":
            self.notify(f"{run.name} is {state or 'not started'}: only a finished run can be the teacher",
                        severity="warning", markup=False)
            return
        from cockpit.frontier import job_running, read_progress

        if job_running(read_progress(run)):
            self.action_frontier()
            return

        def work() -> None:
            result = launcher.compress_run(run)
            self.app.call_from_thread(self._compressing, run, result)

        self.notify(f"checking {run.name} for compress...", markup=False, timeout=5)
        self.run_worker(work, thread=True, group="compress", name=f"compress {run.name}")

    def _compressing(self, run: Path, result: launcher.Launch) -> None:
        if result.code == 0:
            self.notify(clean(result.message), markup=False, timeout=10)
            self.open_frontier(run)
        else:
            self.notify(f"compress refused (exit {result.code}):\n{clean(result.message)}",
                        severity="error", markup=False, timeout=20)

    def action_frontier(self) -> None:
        """`F`: the highlighted run's frontier and its compress job's progress."""
        from cockpit.frontier import has_compress

        run = self.highlighted()
        if run is None or not has_compress(run):
            self.notify(f"{run.name if run else 'no run'}: no compress job yet (C starts one on a finished run)",
                        severity="warning", markup=False)
            return
        self.open_frontier(run)

    def open_frontier(self, run: Path) -> None:
        from cockpit.screens.frontier_screen import FrontierScreen

        self.app.push_screen(FrontierScreen(run))

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
