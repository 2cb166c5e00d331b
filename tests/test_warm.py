"""The suite's warm engines (tests/warm.py) are the engine a cold `python -m engine.cli` is.

Most tests start their engines from the warm fork server; these tests hold it to the cold
process: the same run to the last bit, the same exit codes and signals, the engine's own pid,
its own session when asked, its own environment and working directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

import warm
from conftest import TINY, engine_cmd, engine_env, only_run, popen_engine, status_of, wait_for
from contracts.events import EXIT_BAD_INPUT, EXIT_STOPPED
from test_resume import final_state, step_losses

pytestmark = pytest.mark.skipif(warm.cold(), reason="COCKPIT_TESTS_COLD=1: every engine runs cold")


def test_a_warm_run_is_bit_identical_to_a_cold_one(tmp_path: Path):
    (tmp_path / "tiny.toml").write_text(TINY)
    runs = {}
    for how in ("cold", "warm"):
        args = ["run", str(tmp_path / "tiny.toml"), "--runs-dir", str(tmp_path / how), "--set", "train.epochs=1"]
        if how == "cold":
            done = subprocess.run(engine_cmd(*args), env=engine_env(), capture_output=True, text=True, timeout=240)
        else:
            done = warm.run(args, env=engine_env(), timeout=240)
        assert done.returncode == 0, done.stderr
        assert "finished run directory" in done.stdout and "Warning" not in done.stderr, done.stderr
        runs[how] = only_run(tmp_path / how)
    cold, hot = final_state(runs["cold"]), final_state(runs["warm"])
    assert cold["step"] == hot["step"] == 45
    for key, tensor in cold["model"].items():
        assert torch.equal(hot["model"][key], tensor), f"weights differ at {key}"
    assert step_losses(runs["warm"]) == step_losses(runs["cold"])


def test_exit_codes_signals_pid_session_cwd_and_environment_are_the_engines_own(tmp_path: Path):
    (tmp_path / "tiny.toml").write_text(TINY)
    bad = warm.run(["run", "missing.toml"], cwd=tmp_path, env=engine_env(), timeout=60)
    assert bad.returncode == EXIT_BAD_INPUT and "config file 'missing.toml': not found" in bad.stderr

    env = {**engine_env(), "COCKPIT_RUNS": "from-env"}  # the runs folder, relative to the cwd given
    proc = popen_engine(["run", "tiny.toml", "--set", "train.epochs=50"], cwd=tmp_path, env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    runs = tmp_path / "from-env"
    run = wait_for(lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), what="the run directory")
    wait_for(lambda: status_of(run).get("step", 0) >= 3, what="step 3")
    assert status_of(run)["pid"] == proc.pid  # the test holds the engine itself, not a proxy
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)  # start_new_session, as Popen's
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, err
    assert status_of(run)["state"] == "stopped"

    killed = popen_engine(["resume", run.name, "--runs-dir", "from-env"], cwd=tmp_path,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: status_of(run).get("pid") == killed.pid and status_of(run).get("state") == "running",
             what="the resumed engine")
    killed.kill()
    assert killed.wait(timeout=60) == -signal.SIGKILL
    slow = popen_engine(["run", "tiny.toml", "--runs-dir", "runs2"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    with pytest.raises(subprocess.TimeoutExpired):
        slow.wait(timeout=0.01)
    slow.terminate()
    assert slow.wait(timeout=60) in (EXIT_STOPPED, -signal.SIGTERM)  # a SIGTERM before its handler exists
