"""The goodput ledger (#22 part 1): a run paused, SIGKILLed past a checkpoint and resumed. Its
classes add up to each engine's life as measured from outside (within 1%), the steps the
resume redid are `lost`, the pause is `paused`, and `cockpit-engine goodput` prints it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import engine_env, events_of, popen_engine, status_of, wait_for
from contracts.control import send_command
from engine.telemetry.ledger import CLASSES

pytestmark = pytest.mark.timeout(300)

MODELS = '''
import time

from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        if self.training:
            time.sleep(0.04)  # a step long enough to time (the work of a bigger model)
        return self.net(x)


def make(num_classes, in_channels):
    return Net(num_classes, in_channels)
'''

CONFIG = """
[model]
name = "models:make"
[data]
name = "digits"
[train]
epochs = 10
max_steps = 320
batch_size = 16
deterministic = false
[checkpoint]
every_steps = 40
on_epoch_end = false
[logging]
every_steps = 5
status_every_s = 0.1
"""


def ledgers(run: Path) -> list[dict]:
    return [e for e in events_of(run) if e["type"] == "ledger"]


def final_state_seen(run: Path) -> float | None:
    """When (our clock) the run's final state event is in its events file, else None."""
    if not (run / "events.jsonl").exists():
        return None
    if any(e["type"] == "state" and e["state"] == "finished" for e in events_of(run)):
        return time.time()
    return None


def test_the_ledger_adds_up_across_a_pause_a_kill_and_a_resume(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "run.toml").write_text(CONFIG)
    env = engine_env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    runs, run = tmp_path / "runs", tmp_path / "runs" / "g"

    # session 1: a pause of about a second, then SIGKILL past a checkpoint
    proc = popen_engine(["run", str(tmp_path / "run.toml"), "--run-id", "g", "--runs-dir", str(runs)], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: status_of(run).get("step", 0) >= 20, timeout=120, what="training")
        sock = status_of(run)["socket"]
        assert send_command(sock, "pause")["ok"]
        time.sleep(1.0)
        assert send_command(sock, "continue")["ok"]
        wait_for(lambda: any(e["classes"]["paused"]["seconds"] >= 1.0 for e in ledgers(run)), timeout=60,
                 what="a ledger with the pause")
        # a ledger past the newest checkpoint: the steps between them will be redone
        def newest_checkpoint() -> int:
            return max((int(p.name[5:13]) for p in (run / "checkpoints").glob("step-*.pt")), default=0)

        for _ in range(20):  # paused (nothing moves) with a ledger past the newest checkpoint, then killed
            wait_for(lambda: newest_checkpoint() >= 40 and ledgers(run)[-1]["step"] > newest_checkpoint(),
                     timeout=120, what="a ledger past a checkpoint")
            assert send_command(sock, "pause")["ok"]
            if ledgers(run)[-1]["step"] > newest_checkpoint():
                break
            assert send_command(sock, "continue")["ok"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    first = ledgers(run)[-1]
    killed_at = first["step"]
    assert killed_at > 40 and first["sessions"] == 1 and first["classes"]["paused"]["seconds"] >= 1.0

    # session 2: resumed from step 40 (the steps after it are redone), to the end
    started = time.time()
    proc = popen_engine(["resume", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ended = wait_for(lambda: final_state_seen(run), timeout=240, what="the resumed run to finish")
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    final = ledgers(run)[-1]
    assert final["final"] and final["sessions"] == 2 and final["step"] == 320
    classes = final["classes"]
    assert set(classes) == set(CLASSES) and all(c["seconds"] >= 0 for c in classes.values())
    assert sum(c["seconds"] for c in classes.values()) == pytest.approx(final["total_s"], rel=1e-9)
    # the second engine's life, from outside: from asking for it to seeing its final state
    lived = final["total_s"] - first["total_s"]
    assert lived == pytest.approx(ended - started, rel=0.01), (lived, ended - started)
    # the redone steps (from the checkpoint resumed to the killed session's last ledger) are lost:
    # their share of that session's step time
    (resumed,) = [e for e in events_of(run) if e["type"] == "resume"]
    assert 40 <= resumed["step"] < killed_at
    step_s = sum(first["classes"][c]["seconds"] for c in ("productive", "data", "communication", "bubble"))
    expected = step_s * (killed_at - resumed["step"]) / first["steps"]
    assert classes["lost"]["seconds"] == pytest.approx(expected, rel=0.05)
    assert final["steps"] == 320  # steps that count: the redone ones once
    assert classes["paused"]["seconds"] >= 1.0 and classes["startup"]["seconds"] > 0
    assert classes["checkpoint"]["seconds"] > 0 and classes["evaluation"]["seconds"] > 0
    assert 0 < final["goodput"] < 1 and final["goodput"] == pytest.approx(
        classes["productive"]["seconds"] / final["total_s"])

    done = subprocess.run([sys.executable, "-m", "engine.cli", "goodput", str(run), "--json"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["total_s"] == final["total_s"] and printed["classes"]["lost"] == classes["lost"]
    table = subprocess.run([sys.executable, "-m", "engine.cli", "goodput", str(run)], capture_output=True, text=True,
                           env=env, timeout=60).stdout
    assert table.startswith("g: ") and "goodput" in table and "largest loss: " in table

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    shares = acc.Scalars("goodput/goodput")
    assert shares and shares[-1].value == pytest.approx(final["goodput"], rel=1e-5)
