"""End to end in a real terminal: `cockpit demo` in tmux, keys sent, the screen read back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cockpit.runs import pid_alive, read_status
from conftest import ROOT, wait_for

pytestmark = [pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
              pytest.mark.timeout(300)]


class Tmux:
    """One tmux server of our own (its own socket), one window."""

    def __init__(self, tmp: Path):
        self.sock = str(tmp / "tmux.sock")

    def __call__(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-S", self.sock, *args], capture_output=True, text=True, timeout=30)
        return out.stdout

    def start(self, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        self("new-session", "-d", "-x", "100", "-y", "30", f"env {exports} {command}; sleep 600")

    def screen(self) -> str:
        return self("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self("send-keys", *keys)

    def wait(self, predicate, what: str, timeout: float = 120) -> None:
        """Wait for the screen to satisfy predicate; the failure shows the screen."""
        try:
            wait_for(lambda: predicate(self.screen()), timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen was:\n{self.screen()}") from None

    def kill(self) -> None:
        self("kill-server")


def test_demo_in_a_real_terminal(tmp_path: Path):
    runs = tmp_path / "runs"
    env = {"PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "config"), "TERM": "xterm-256color",
           "OMP_NUM_THREADS": "1"}
    cockpit = f"{sys.executable} -m cockpit --runs-dir {runs}"
    tmux = Tmux(tmp_path)
    engine_pid = None
    try:
        tmux.start(f"{cockpit} demo --set train.epochs=400", env)
        tmux.wait(lambda s: "RUNNING" in s and "step" in s, what="the loss pane to show a step")
        (run,) = list(runs.iterdir())
        engine_pid = read_status(run)["pid"]

        tmux.keys("c")
        tmux.wait(lambda s: "checkpoint saved at step" in s, what="the checkpoint notification")
        assert list((run / "checkpoints").glob("step-*.pt"))

        tmux.keys("q")
        tmux.wait(lambda s: "RUNNING" not in s, what="the cockpit to quit")
        assert pid_alive(engine_pid), "quitting the cockpit must leave the engine running"
        step = read_status(run)["step"]
        wait_for(lambda: read_status(run)["step"] > step, what="the step count to grow")

        tmux.kill()  # the terminal goes away entirely
        time.sleep(1)
        assert pid_alive(engine_pid), "closing the terminal must leave the engine running"

        tmux.start(f"{cockpit} attach {run.name}", env)
        tmux.wait(lambda s: "RUNNING" in s, what="re-attach")
        tmux.wait(lambda s: "validation" in s and "checkpoint saved" in s,
                  what="the whole history (validation curve, log) to be shown again")

        tmux.keys("s")
        tmux.wait(lambda s: "(y/n)" in s, what="the confirmation")
        tmux.keys("y")
        wait_for(lambda: read_status(run).get("state") == "stopped", what="the engine to stop")
        assert read_status(run).get("exit_code") == 3
        wait_for(lambda: not pid_alive(engine_pid), what="the engine process to exit")
        tmux.wait(lambda s: "STOPPED" in s, what="the banner to say so")
    finally:
        tmux.kill()
        if engine_pid and pid_alive(engine_pid):
            os.kill(engine_pid, 9)
