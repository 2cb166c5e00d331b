"""Start engines without importing torch: `cockpit-engine ... --detach` in a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Launch:
    """The outcome of starting a detached engine."""

    code: int
    run: Path | None
    message: str


def _engine(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", *args]


def _run(cmd: list[str]) -> Launch:
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    match = re.search(r"started run directory: (.+?) \(engine pid", done.stdout)
    run = Path(match.group(1)) if match else None
    message = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return Launch(done.returncode, run, "\n".join(message[-6:]))


def start_demo(runs_root: Path, overrides: list[str]) -> Launch:
    """The built-in demo, detached."""
    sets = [f"--set={s}" for s in overrides]
    return _run(_engine("demo", "--detach", "--runs-dir", str(runs_root), *sets))


def start_run(config: Path, runs_root: Path, overrides: list[str] = ()) -> Launch:
    """A new run from a config file, detached."""
    sets = [f"--set={s}" for s in overrides]
    return _run(_engine("run", str(config), "--detach", "--runs-dir", str(runs_root), *sets))


def resume_run(run: Path) -> Launch:
    """Resume a stopped, failed or preempted run from its newest valid checkpoint, detached."""
    return _run(_engine("resume", str(run), "--detach"))
