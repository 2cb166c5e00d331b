"""The runs list: every run under the runs directory, newest first, re-read while it is shown.

Where Slurm is configured (`contracts.slurm.configured`), squeue is read every SQUEUE_S seconds in a
thread worker (never on the UI thread, never before the first draw): this user's jobs that the
cockpit submitted join their runs' rows, and the columns job, slurm (PENDING with its reason,
RUNNING, REQUEUED, COMPLETING), nodes and time left appear once there is a Slurm run to show.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual.widgets import DataTable

from contracts import slurm
from cockpit.runs import RunInfo, list_runs
from cockpit.sanitize import clean
from cockpit.widgets.checkpoints_pane import fmt_age

COLUMNS = ("run", "state", "step", "loss", "acc", "age", "host")
SLURM_COLUMNS = ("job", "slurm", "nodes", "left")
#: Seconds between two re-reads of the runs directory while the list is shown.
REREAD_S = 2.0
#: Seconds between two squeue calls while the list is shown (one at a time; after a failure, SQUEUE_BACKOFF_S).
SQUEUE_S = 3.0
SQUEUE_BACKOFF_S = 30.0


def fmt_left(seconds: int | None) -> str:
    """A Slurm time left: `1:02:03`, `2-03:04:05` for days, `unlimited` for None."""
    if seconds is None:
        return "unlimited"
    days, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    clock = f"{h}:{m:02d}:{sec:02d}"
    return f"{days}-{clock}" if days else clock


def slurm_cells(info: RunInfo) -> tuple[str, str, str, str]:
    """job, slurm, nodes, left: blank for a local run; a job that has left the queue keeps its id."""
    job, job_id = info.job, info.job_id
    if job is None:
        return (str(job_id) if job_id is not None else "", "not queued" if job_id is not None else "", "", "")
    return (str(job.job_id), job.label, "" if job.nodes is None else str(job.nodes), fmt_left(job.time_left_s))


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
        #: Each row's run as last drawn (row key -> RunInfo).
        self.infos: dict[str, RunInfo] = {}
        #: squeue's newest answer (None: none yet, or Slurm is not configured here).
        self.jobs: list[slurm.Job] | None = None
        self.slurm_error: str | None = None
        self.squeue_in_flight = False
        self.squeue_next = 0.0
        self.slurm_on = False  # on_mount decides

    def on_mount(self) -> None:
        self.add_columns(*COLUMNS)
        self.set_interval(REREAD_S, self.refresh_runs)
        self.refresh_runs(force=True)
        self.slurm_on = slurm.configured()  # a PATH look-up and a stat or two
        if self.slurm_on:
            self.set_interval(1.0, self.poll_jobs)
            self.call_after_refresh(self.poll_jobs, True)

    def poll_jobs(self, force: bool = False) -> None:
        """Ask squeue for this user's jobs in a thread worker (one at a time, every SQUEUE_S seconds
        while the list is shown); the answer redraws the list."""
        if not self.slurm_on or self.squeue_in_flight or not self.app.is_running:
            return
        if not force and (not self.screen.is_current or time.monotonic() < self.squeue_next):
            return
        self.squeue_in_flight = True
        self.run_worker(self._read_jobs, thread=True, group="squeue", name="squeue", exit_on_error=False)

    def _read_jobs(self) -> None:
        import pwd

        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            user = None
        try:
            jobs, error = slurm.jobs(user=user), None
        except Exception as e:  # noqa: BLE001  (SlurmError, or anything else: the list goes on without jobs)
            jobs, error = None, str(e)
        try:
            self.app.call_from_thread(self._jobs_read, jobs, error)
        except RuntimeError:  # the app has closed
            pass

    def _jobs_read(self, jobs: list[slurm.Job] | None, error: str | None) -> None:
        self.squeue_in_flight = False
        self.squeue_next = time.monotonic() + (SQUEUE_S if error is None else SQUEUE_BACKOFF_S)
        if error is not None:
            if error != self.slurm_error:
                self.app.notify(f"Slurm jobs not shown: {clean(error)[:300]}", severity="warning",
                                markup=False, timeout=10)
            self.slurm_error = error
            return
        self.slurm_error, self.jobs = None, jobs
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
        infos = list_runs(self.root, self.jobs)
        slurm_shown = len(self.columns) > len(COLUMNS)
        if not slurm_shown and any(info.job_id is not None for info in infos):
            self.add_columns(*SLURM_COLUMNS)  # from now on (the first Slurm run to show)
            slurm_shown = True
        self.infos = {}
        for info in infos:
            # Text cells: a DataTable parses plain strings as markup, and these come from disk.
            cells = row_cells(info, now)
            if slurm_shown:
                cells = (*cells, *slurm_cells(info))
            self.infos[str(info.path)] = info
            if str(info.path) in self.marked:
                cells = (f"\u25cf {cells[0]}", *cells[1:])  # marked for comparison
            self.add_row(*(Text(clean(c)[:80]) for c in cells), key=str(info.path))
        self.marked = [m for m in self.marked if m in self.rows]  # a run removed is unmarked
        if selected is not None and selected in self.rows:
            self.move_cursor(row=self.get_row_index(selected), animate=False)  # stay on the run
