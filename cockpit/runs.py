"""The runs directory: which runs exist, their state, and whether their engine lives."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.layout import RunLayout
from contracts.events import FINAL_STATES
from contracts.slurm import Job

#: What `cockpit-engine slurm submit` records in a run directory: {"job_id": ..., "script": "slurm/job.sh", ...}.
SLURM_RECORD = Path("slurm") / "job.json"
#: Job states after which a job outside the runs directory is no longer listed.
ENDED_JOB_STATES = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                    "DEADLINE", "OUT_OF_MEMORY")


def runs_root(cli_value: str | None = None) -> Path:
    """--runs-dir, else $COCKPIT_RUNS, else ./runs (the engine's own rule)."""
    return Path(cli_value or os.environ.get("COCKPIT_RUNS") or "runs")


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid exists (on this host)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that large
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has exited and waits for its parent to reap it (state Z in /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b") ", 1)[1][:1] == b"Z"
    except (OSError, IndexError):
        return False


@dataclass
class RunInfo:
    """One run as the runs list shows it."""

    path: Path
    status: dict[str, Any]
    last_eval: dict[str, Any]
    #: slurm/job.json, for a run submitted to Slurm ({} otherwise).
    slurm: dict[str, Any] = field(default_factory=dict)
    #: Its job as squeue lists it now (None: not a Slurm run, or the job has left the queue).
    job: Job | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state(self) -> str:
        """The recorded state, or 'exited' when a live-looking engine has vanished."""
        if not self.status and (self.job is not None or self.slurm):
            return "queued"  # submitted to Slurm; no engine has written its status yet
        state = str(self.status.get("state", "unknown"))
        if state not in FINAL_STATES and self.local and not pid_alive(self.status.get("pid")):
            return "exited"
        return state

    @property
    def job_id(self) -> int | None:
        """The Slurm job id: squeue's, else slurm/job.json's."""
        if self.job is not None:
            return self.job.job_id
        value = self.slurm.get("job_id")
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    @property
    def local(self) -> bool:
        return self.status.get("host") in (None, socket.gethostname())

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - float(self.status.get("updated_at") or 0))

    @property
    def socket(self) -> str | None:
        return self.status.get("socket")


def read_status(run: Path) -> dict[str, Any]:
    """status.json, or {} while it is missing or mid-replace."""
    try:
        data = json.loads(RunLayout(run).status.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def last_eval(run: Path, tail_bytes: int = 65536) -> dict[str, Any]:
    """The newest eval event, read from the end of events.jsonl only."""
    from contracts.events import decode_event

    try:
        with open(RunLayout(run).events, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().split(b"\n")
    except OSError:
        return {}
    for line in reversed(lines):
        event = decode_event(line)
        if event and event.get("type") == "eval":
            return event
    return {}


def read_slurm_record(run: Path) -> dict[str, Any]:
    """slurm/job.json ({} when the run was not submitted to Slurm, or the file is unreadable)."""
    try:
        data = json.loads((run / SLURM_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def list_runs(root: Path, jobs: list[Job] | None = None) -> list[RunInfo]:
    """Every run under root, newest first, with its Slurm job where `jobs` (squeue's) has one.

    A run matches a job by the job's `cockpit-run:<dir>` comment, else by the job id in its
    slurm/job.json. A job whose run directory is not under root (or has nothing in it yet) is
    listed too while it is queued or running, after the runs, keyed by its run directory.
    """
    runs = []
    if root.is_dir():
        runs = [p for p in root.iterdir()
                if p.is_dir() and (RunLayout(p).config.is_file() or (p / SLURM_RECORD).is_file())]
    runs.sort(key=lambda p: p.name, reverse=True)
    infos = [RunInfo(p, read_status(p), last_eval(p), read_slurm_record(p)) for p in runs]
    if not jobs:
        return infos
    by_dir: dict[str, Job] = {}
    by_id = {job.job_id: job for job in jobs}
    for job in jobs:
        if job.run_dir is not None:
            by_dir[os.path.realpath(job.run_dir)] = job
    base = os.path.realpath(root)
    matched: set[int] = set()
    for info in infos:
        job = by_dir.get(os.path.join(base, info.path.name))
        if job is None and info.job_id is not None:
            job = by_id.get(info.job_id)
        if job is not None:
            info.job = job
            matched.add(job.job_id)
    for job in jobs:
        if job.job_id in matched or job.run_dir is None or job.state in ENDED_JOB_STATES:
            continue  # a job the cockpit did not submit is not a run; an ended one elsewhere is history
        path = job.run_dir
        infos.append(RunInfo(path, read_status(path), last_eval(path), read_slurm_record(path), job))
    return infos


def find_run(arg: str, root: Path) -> Path | None:
    """A run given as a path or an id under root."""
    for candidate in (Path(arg), root / arg):
        if RunLayout(candidate).config.is_file():
            return candidate
    return None
