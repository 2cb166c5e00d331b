"""Shared by the bench/gpu_*_check.py helpers of bench/gpu_check.sh: start the real engine
(`python -m engine.cli`) in a subprocess, as a user does, and read what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent


def engine_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def engine_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", *args]


def run_engine(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(engine_cmd(*args), env=engine_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def start_engine(*args: str, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """In the background, output to `log` (a pipe nobody reads could fill and block it)."""
    out = open(log, "w")
    return subprocess.Popen(engine_cmd(*args), env=engine_env(), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            text=True)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the engine exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def status_of(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def events_of(run: Path) -> list[dict]:
    from contracts.events import read_events

    with open(run / "events.jsonl", encoding="utf-8") as f:
        return list(read_events(f))


def the_run(runs: Path) -> Path | None:
    found = [p for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []
    return found[0] if len(found) == 1 else None


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e.get("type") == kind]


def steady_rate(events: list[dict], skip: float = 0.25) -> float | None:
    """Median samples/s of the step events after the first `skip` share (warm-up, compilation)."""
    import statistics

    steps = of_type(events, "step")
    steady = steps[int(len(steps) * skip):] or steps
    return statistics.median(e["samples_per_s"] for e in steady) if steady else None


def kill_tree(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
