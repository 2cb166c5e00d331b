"""`--nproc N` / `--gpus N`: run the engine as N processes on this machine, torchrun underneath.

The launching process starts ``python -m torch.distributed.run --standalone`` (torchrun, on a
free local port) in a process group of its own, so a Ctrl+C in the terminal reaches the ranks
once, through torchrun, rather than twice. SIGINT and SIGTERM sent to this process are passed
on to torchrun as SIGTERM, which hands them to every rank: the ranks agree to checkpoint at
the same step and stop. A second signal kills torchrun and every rank at once. torchrun reports any non-zero exit as a failure (code 1); rank 0
therefore leaves its own exit code in a file, and this process exits with that code, so
`--nproc` keeps the engine's exit codes (0 finished, 1 failed, 2 bad input, 3 stopped).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from contracts.events import EXIT_FAILED

#: torchrun's log lines ("E1124 02:00:32.486000 27435 .../elastic/multiprocessing/api.py:1002] ...")
_AGENT_LOG = re.compile(r"^[EWI]\d{4} \d\d:\d\d:\d\d\.\d+ \d+ .*torch/distributed/")

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
    child = subprocess.Popen(torchrun_command(nproc, rank_argv), env=env, start_new_session=True,
                             stderr=subprocess.PIPE)
    quiet = QuietTorchrun(child.stderr)
    quiet.start()
    signals_seen = 0

    def forward(signum: int, _frame: object) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:  # checkpoint at the next step boundary and stop
            child.send_signal(signal.SIGTERM)
            return
        for pid in [*descendants(child.pid), child.pid]:  # a second one means now
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    try:
        text = Path(exit_file).read_text().strip()
        result = int(text) if text else (code or EXIT_FAILED)
    except (OSError, ValueError):
        result = code or EXIT_FAILED
    finally:
        Path(exit_file).unlink(missing_ok=True)
    quiet.finish(show_report=result not in (0, 2, 3))
    return result


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first (Linux /proc; torchrun puts each rank in a
    session of its own, so a process group would not reach them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for kid in children.get(todo.pop(), []):
            found.append(kid)
            todo.append(kid)
    return found


class QuietTorchrun(threading.Thread):
    """Passes the ranks' stderr through as it comes, but holds back torchrun's own report of
    a non-zero exit (its traceback and failure table), which only repeats what the ranks said;
    it is shown when the run really failed (exit 1), not after a stop (3) or bad input (2)."""

    def __init__(self, stream: Any):
        super().__init__(daemon=True)
        self.stream, self.held = stream, []

    def run(self) -> None:
        holding = False
        for raw in iter(self.stream.readline, b""):
            line = raw.decode(errors="replace")
            if line.startswith("Traceback (most recent call last):") or _AGENT_LOG.match(line):
                holding = True  # torchrun's own lines: ranks' lines carry a [rankN]: prefix
            if holding:
                self.held.append(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
            if holding and _AGENT_LOG.match(line) is None and not line.startswith(("Traceback", " ", "torch.", "=", "-", "[", "engine.cli", "Failures", "Root Cause", "<")):
                holding = False  # something else after all: let it through from here

    def finish(self, show_report: bool) -> None:
        self.join(timeout=10)
        if show_report:
            sys.stderr.write("".join(self.held))


def record_exit(code: int) -> None:
    """In rank 0 under our launcher: leave the exit code for `run` to return."""
    path = os.environ.get(EXIT_FILE_ENV)
    if path and os.environ.get("RANK", "0") == "0":
        try:
            Path(path).write_text(str(code))
        except OSError:
            pass
