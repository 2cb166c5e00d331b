"""A TensorBoard server on the runs directory, bound to localhost, stopped with the cockpit."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def free_port(start: int = 6006) -> int:
    """The first free localhost port from `start`."""
    for port in range(start, start + 100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise OSError("no free port for TensorBoard between 6006 and 6105")


class TensorBoardServer:
    """`tensorboard --logdir RUNS --host 127.0.0.1 --port P` as a child process."""

    def __init__(self, runs_root: Path):
        self.runs_root = runs_root
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> str:
        """Start (once) and return the address."""
        if self.proc is None or self.proc.poll() is not None:
            self.port = free_port()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.runs_root),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return f"http://127.0.0.1:{self.port}"

    def ssh_hint(self) -> str:
        return f"forward it: ssh -L {self.port}:127.0.0.1:{self.port} <this host>"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
