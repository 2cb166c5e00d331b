"""`--detach`: the engine trains as its own session, outliving the command that started it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from conftest import TINY, only_run, run_engine, status_of, wait_for
from contracts.control import send_command


def test_detached_engine_survives_its_parent_and_a_hangup(tmp_path: Path):
    (tmp_path / "tiny.toml").write_text(TINY)
    runs = tmp_path / "runs"
    done = run_engine("run", str(tmp_path / "tiny.toml"), "--set", "train.epochs=50",
                      "--runs-dir", str(runs), "--detach")
    assert done.returncode == 0, done.stderr
    run = only_run(runs)
    assert str(run) in done.stdout
    pid = status_of(run)["pid"]
    try:
        assert os.getsid(pid) == pid, "the engine must lead its own session (no controlling terminal)"
        os.kill(pid, signal.SIGHUP)  # what a dropped SSH connection would send
        step = status_of(run)["step"]
        wait_for(lambda: status_of(run)["step"] > step + 5, what="training to go on after SIGHUP")
        assert "state running" in (run / "engine.log").read_text()
        assert not list(runs.glob(".launch-*")), "the launch log is cleaned up"
    finally:
        reply = send_command(status_of(run)["socket"], "stop")
    assert reply["ok"] and reply["state"] == "stopped"
    wait_for(lambda: status_of(run).get("state") == "stopped", what="stopped state")


def test_detach_with_bad_input_reports_it_and_leaves_nothing(tmp_path: Path):
    runs = tmp_path / "runs"
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nname = "mnist"\nroot = "/nonexistent/mnist"\n')
    done = run_engine("run", str(bad), "--runs-dir", str(runs), "--detach")
    assert done.returncode == 2
    assert "data.root" in done.stderr and "t10k-images-idx3-ubyte" in done.stderr
    assert not runs.exists() or not [p for p in runs.iterdir()]
