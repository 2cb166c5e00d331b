"""Each training of the compress job as a real engine run, started the way a user would:
`python -m engine.cli run CONFIG --runs-dir D --run-id ID --json --set ...`, so that it has its
own events, checkpoints and goodput ledger. Its step events (stdout, `--json`) feed the progress
lines; its narration (stderr) is kept to explain a failure."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import engine
from contracts.events import EXIT_FINISHED, decode_event
from engine.compress.plan import Training
from engine.compress.progress import Progress


class ChildFailed(Exception):
    """A child run ended other than finished: its exit code and last words."""


def _env() -> dict[str, str]:
    """The engine this process runs, importable by the child (a source checkout included)."""
    env = dict(os.environ)
    root = str(Path(engine.__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def command(t: Training, runs_dir: Path) -> list[str]:
    return [sys.executable, "-m", "engine.cli", "run", str(t.config), "--runs-dir", str(runs_dir),
            "--run-id", t.run_id, "--json", *[f"--set={s}" for s in t.sets]]


def train(t: Training, runs_dir: Path, progress: Progress) -> Path:
    """Run one training to its end; its run directory. ChildFailed unless it finished."""
    total = None
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err:
        child = subprocess.Popen(command(t, runs_dir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=err, text=True, env=_env())
        try:
            assert child.stdout is not None
            for line in child.stdout:
                event = decode_event(line)
                if not event:
                    continue
                if event.get("type") == "state" and event.get("state") == "running" and total is None:
                    total = _total_steps(runs_dir / t.run_id)
                elif event.get("type") == "step":
                    total = total or _total_steps(runs_dir / t.run_id)
                    progress.step(int(event.get("step", 0)), total, run=str(runs_dir / t.run_id))
            code = child.wait()
        except BaseException:
            child.terminate()
            child.wait()
            raise
        if code != EXIT_FINISHED:
            err.seek(0)
            tail = [ln for ln in err.read().splitlines() if ln.strip()][-8:]
            raise ChildFailed(f"{t.label} (run {runs_dir / t.run_id}) exited {code}:\n" + "\n".join(tail))
    return runs_dir / t.run_id


def _total_steps(run: Path) -> int | None:
    import json

    try:
        value = json.loads((run / "status.json").read_text()).get("total_steps")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None
