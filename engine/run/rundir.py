"""The run directory: its layout, its id, status.json, the single-writer lock."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.checkpoint.atomic import write_json_atomic
from engine.errors import BadInput
from engine.protocol import MAX_SOCKET_PATH


def runs_root(cli_value: str | None, config_value: str | None) -> Path:
    """--runs-dir, else the config's logging.runs_dir, else $COCKPIT_RUNS, else ./runs."""
    return Path(cli_value or config_value or os.environ.get("COCKPIT_RUNS") or "runs")


def new_run_id(cfg: Any) -> str:
    """A sortable, readable, unique id: 20261123-221500-resnet18-3f9a (the readable part is
    logging.run_name, else the model's name)."""
    name = cfg.logging.run_name or cfg.model.name.split(":")[-1]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{secrets.token_hex(2)}"


def find_run(arg: str, root: Path) -> Path:
    """A run given as a path or as an id under the runs root."""
    for candidate in (Path(arg), root / arg):
        if (candidate / "config.toml").is_file():
            return candidate
    raise BadInput(f"run {arg!r}: no run directory with a config.toml here or under {str(root)!r}")


def socket_path_for(run_dir: Path) -> Path:
    """control.sock in the run, or under the runtime dir when that path is too long."""
    path = run_dir.resolve() / "control.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/cockpit-{os.getuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    return base / f"cockpit-{digest}.sock"


@dataclass
class RunDir:
    """Paths inside one run directory."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.toml"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def status(self) -> Path:
        return self.path / "status.json"

    @property
    def log(self) -> Path:
        return self.path / "engine.log"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    def lock(self) -> int:
        """Hold the run's lock for this process's life; BadInput if another engine has it.

        A POSIX record lock, not flock: forked DataLoader workers must not inherit it, or a
        killed engine's orphaned workers would keep the run locked against `resume`.
        """
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            os.close(fd)
            raise BadInput(f"run {str(self.path)!r} is already being trained by another engine") from None
        return fd

    def write_status(self, **fields: Any) -> None:
        """Replace status.json atomically."""
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "updated_at": time.time(), **fields}
        launcher = os.environ.get("COCKPIT_LAUNCHER_PID", "")
        if launcher.isdigit():  # --nproc: the process that started torchrun (see engine.run.launch)
            doc["launcher_pid"] = int(launcher)
        # Rewritten every few seconds on the training thread: atomic, but not fsynced.
        write_json_atomic(self.status, doc, durable=False)
