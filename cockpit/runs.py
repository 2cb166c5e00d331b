"""The runs directory: which runs exist, their state, and whether their engine lives."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.layout import RunLayout
from contracts.events import FINAL_STATES


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

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state(self) -> str:
        """The recorded state, or 'exited' when a live-looking engine has vanished."""
        state = str(self.status.get("state", "unknown"))
        if state not in FINAL_STATES and self.local and not pid_alive(self.status.get("pid")):
            return "exited"
        return state

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


def list_runs(root: Path) -> list[RunInfo]:
    """Every run under root, newest first."""
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and RunLayout(p).config.is_file()]
    runs.sort(key=lambda p: p.name, reverse=True)
    return [RunInfo(p, read_status(p), last_eval(p)) for p in runs]


def find_run(arg: str, root: Path) -> Path | None:
    """A run given as a path or an id under root."""
    for candidate in (Path(arg), root / arg):
        if RunLayout(candidate).config.is_file():
            return candidate
    return None
