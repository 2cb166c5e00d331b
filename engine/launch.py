"""`--nproc N` / `--gpus N`: run the engine as N processes on this machine, torchrun underneath.

The launching process starts ``python -m torch.distributed.run --standalone`` (torchrun, on a
free local port) in a process group of its own, so a Ctrl+C in the terminal reaches the ranks
once, through torchrun, rather than twice. SIGINT and SIGTERM sent to this process are passed
on to torchrun as SIGTERM, which hands them to every rank: the ranks agree to checkpoint at
the same step and stop. torchrun reports any non-zero exit as a failure (code 1); rank 0
therefore leaves its own exit code in a file, and this process exits with that code, so
`--nproc` keeps the engine's exit codes (0 finished, 1 failed, 2 bad input, 3 stopped).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from engine.protocol import EXIT_FAILED

EXIT_FILE_ENV = "COCKPIT_EXIT_FILE"
LAUNCHER_ENV = "COCKPIT_LAUNCHER_PID"


def torchrun_command(nproc: int, rank_argv: list[str]) -> list[str]:
    """The torchrun command line that runs `cockpit-engine <rank_argv>` as `nproc` ranks."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", "engine.cli", *rank_argv]


def run(nproc: int, rank_argv: list[str]) -> int:
    """Start the ranks under torchrun, pass signals on, and return rank 0's exit code."""
    fd, exit_file = tempfile.mkstemp(prefix="cockpit-exit-")
    os.close(fd)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{EXIT_FILE_ENV: exit_file, LAUNCHER_ENV: str(os.getpid())})
    if "OMP_NUM_THREADS" not in env:  # torchrun would set 1; share the cores instead
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    child = subprocess.Popen(torchrun_command(nproc, rank_argv), env=env, start_new_session=True)
    signals_seen = 0

    def forward(signum: int, _frame: object) -> None:
        nonlocal signals_seen
        signals_seen += 1
        # the first is a request to checkpoint and stop; a second one means "now"
        child.send_signal(signal.SIGTERM if signals_seen == 1 else signal.SIGKILL)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
        while code is None:
            code = child.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    try:
        text = Path(exit_file).read_text().strip()
        return int(text) if text else (code or EXIT_FAILED)
    except (OSError, ValueError):
        return code or EXIT_FAILED
    finally:
        Path(exit_file).unlink(missing_ok=True)


def record_exit(code: int) -> None:
    """In rank 0 under our launcher: leave the exit code for `run` to return."""
    path = os.environ.get(EXIT_FILE_ENV)
    if path and os.environ.get("RANK", "0") == "0":
        try:
            Path(path).write_text(str(code))
        except OSError:
            pass
