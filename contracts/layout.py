"""The run directory's layout: every file name in one place, for the engine and the cockpit.

    runs/<run-id>/config.toml events.jsonl status.json control.sock engine.log checkpoints/ tb/ ...

A `RunLayout` is only paths; the engine's `RunDir` adds the lock and status writes. Nothing
here touches the disk except `find_run`, `runs_root`'s environment look-up and `socket_path`'s
runtime folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.atomic import write_json_atomic
from contracts.control import MAX_SOCKET_PATH
from contracts.errors import BadInput

CONFIG = "config.toml"
EVENTS = "events.jsonl"
STATUS = "status.json"
SOCKET = "control.sock"
LOG = "engine.log"
CHECKPOINTS = "checkpoints"
TB = "tb"
QUANTIZED = "quantized"
STEPS = "steps.f64"
STEPS_HEADER = "steps.json"
OVERRIDES = "overrides.jsonl"
LOCK = ".lock"
S3_STAGING = ".s3-staging"
#: Pointer files inside checkpoints/.
LATEST, BEST = "latest", "best"
#: The default Optuna storage, a SQLite file in the runs root.
SWEEPS_DB = "sweeps.db"


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run directory."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def events(self) -> Path:
        return self.path / EVENTS

    @property
    def status(self) -> Path:
        return self.path / STATUS

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def latest(self) -> Path:
        return self.checkpoints / LATEST

    @property
    def tb(self) -> Path:
        return self.path / TB

    @property
    def quantized(self) -> Path:
        return self.path / QUANTIZED

    @property
    def steps(self) -> Path:
        return self.path / STEPS

    @property
    def steps_header(self) -> Path:
        return self.path / STEPS_HEADER

    @property
    def overrides(self) -> Path:
        return self.path / OVERRIDES

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    @property
    def s3_staging(self) -> Path:
        return self.path / S3_STAGING

    def is_run(self) -> bool:
        """A run directory is one with a config.toml."""
        return self.config.is_file()

    def write_status(self, **fields: Any) -> None:
        """Replace status.json atomically (the engine's writer; the cockpit reads it)."""
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "updated_at": time.time(), **fields}
        launcher = os.environ.get("COCKPIT_LAUNCHER_PID", "")
        if launcher.isdigit():  # --nproc: the process that started torchrun (see engine.run.launch)
            doc["launcher_pid"] = int(launcher)
        # Rewritten every few seconds on the training thread: atomic, but not fsynced.
        write_json_atomic(self.status, doc, durable=False)

    def socket_path(self) -> Path:
        """control.sock in the run, or under the runtime dir when that path is too long."""
        path = self.path.resolve() / SOCKET
        if len(str(path)) <= MAX_SOCKET_PATH:
            return path
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/cockpit-{os.getuid()}")
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        digest = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:16]
        return base / f"cockpit-{digest}.sock"


def new_run_id(name: str) -> str:
    """A sortable, readable, unique id: 20261123-221500-resnet18-3f9a. `name` is the readable part
    (a config's logging.run_name, else its model's name; a "module:factory" keeps the factory)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.split(":")[-1]).strip("-")[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{secrets.token_hex(2)}"


def runs_root(cli_value: str | None = None, config_value: str | None = None) -> Path:
    """--runs-dir, else the config's logging.runs_dir, else $COCKPIT_RUNS, else ./runs."""
    return Path(cli_value or config_value or os.environ.get("COCKPIT_RUNS") or "runs")


def find_run(arg: str, root: Path) -> Path:
    """A run given as a path or as an id under the runs root."""
    for candidate in (Path(arg), root / arg):
        if RunLayout(candidate).is_run():
            return candidate
    raise BadInput(f"run {arg!r}: no run directory with a {CONFIG} here or under {str(root)!r}")


def socket_path_for(run_dir: Path) -> Path:
    """The control socket's path for a run directory (see `RunLayout.socket_path`)."""
    return RunLayout(run_dir).socket_path()
