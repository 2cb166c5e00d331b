"""Detached engines: training that outlives the terminal, the SSH session and the cockpit.

`cockpit-engine run CONFIG --detach` re-runs itself as the leader of a new process session
(no controlling terminal, so no SIGHUP when SSH drops), with stdin closed and stdout/stderr
going to the run's engine.log. The parent waits only until the child is training (it has
written status.json) or has failed, so bad input still gets exit code 2 and its message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from contracts.layout import RunLayout
from contracts.events import EXIT_FAILED


def spawn(argv: list[str], run_dir: Path, timeout_s: float = 600.0) -> int:
    """Start the detached child and wait until it trains (0) or exits (its code)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    launch_log = run_dir.parent / f".launch-{run_dir.name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(launch_log, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *argv, "--detached-child"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            code = child.poll()
            if code is not None:
                sys.stderr.write(_read(launch_log) or _read(RunLayout(run_dir).log))
                return code
            if _trains(run_dir, child.pid):
                print(f"started run directory: {run_dir} (engine pid {child.pid}, log {run_dir / 'engine.log'})")
                return 0
            time.sleep(0.1)
        sys.stderr.write(f"cockpit-engine: the detached engine (pid {child.pid}) did not start within {timeout_s:.0f} s\n")
        return EXIT_FAILED
    finally:
        launch_log.unlink(missing_ok=True)


def _trains(run_dir: Path, pid: int) -> bool:
    import json

    try:
        status = json.loads(RunLayout(run_dir).status.read_text())
    except (OSError, ValueError):
        return False
    return pid in (status.get("pid"), status.get("launcher_pid"))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def become_detached(log_path: Path) -> None:
    """In the child, once the run directory exists: send all output to engine.log."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
