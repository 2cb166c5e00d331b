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
max_steps = 480
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
        killed = time.time()
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
    assert final["final"] and final["sessions"] == 2 and final["step"] == 480
    classes = final["classes"]
    assert set(classes) == set(CLASSES) and all(c["seconds"] >= 0 for c in classes.values())
    assert sum(c["seconds"] for c in classes.values()) == pytest.approx(final["total_s"], rel=1e-9)
    # the killed engine's tail: from its last ledger to its last event (it stood paused), counted lost
    last_words = max(e["t"] for e in events_of(run) if e["t"] <= killed + 0.001)
    tail = last_words - first["t"]
    assert tail >= 0
    # the second engine's life, from outside: from asking for it to seeing its final state (the
    # outside clock also holds the launch, a few tens of ms: the session lasts ~20 s so that 1% covers it)
    lived = final["total_s"] - first["total_s"] - tail
    assert lived == pytest.approx(ended - started, rel=0.01), (lived, ended - started)
    # the redone steps (from the checkpoint resumed to the killed session's last ledger) are lost:
    # their share of that session's step time
    (resumed,) = [e for e in events_of(run) if e["type"] == "resume"]
    assert 40 <= resumed["step"] < killed_at
    step_s = sum(first["classes"][c]["seconds"] for c in ("productive", "data", "communication", "bubble"))
    expected = step_s * (killed_at - resumed["step"]) / first["steps"] + tail
    assert classes["lost"]["seconds"] == pytest.approx(expected, rel=0.05)
    assert final["steps"] == 480  # steps that count: the redone ones once
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


# ---- checkpoint.every_steps = "auto" (#22 part 3) ----------------------------------------------

def test_the_young_daly_interval_from_known_stall_and_interruption_rate():
    from engine.checkpoint.interval import AutoInterval, mtbi_for, young_daly

    assert young_daly(2.0, 3600.0) == pytest.approx(120.0)  # sqrt(2 x 2 s x 1 h)
    mtbi, source = mtbi_for(6.0, spot=True)
    assert mtbi == 600.0 and source == "spot.interruptions_per_hour = 6"
    assert mtbi_for(None, spot=True)[0] == 7200.0 and mtbi_for(None, spot=False)[0] == 86400.0
    auto = AutoInterval(3600.0, "test")
    first = auto.update(0.5)  # no save measured yet: a stall of 1 s assumed
    assert first["every_steps"] == round(young_daly(1.0, 3600.0) / 0.5) == 170 and not first["stall_measured"]
    auto.stalled(2.0)
    second = auto.update(0.5)
    assert second["every_steps"] == 240 and second["interval_s"] == pytest.approx(120.0)
    assert second["expected_lost_s"] == pytest.approx(60.0)  # half an interval's work, on average
    assert auto.update(0.51) is None  # within 10%: no new event
    auto.stalled(8.0)  # a slower save moves the average (0.7 x 2 + 0.3 x 8 = 3.8 s)
    assert auto.update(0.5)["stall_s"] == pytest.approx(3.8)


def test_killed_at_random_moments_a_run_with_auto_checkpoints_loses_at_most_an_interval(tmp_path):
    """Interruptions every second (spot.interruptions_per_hour = 3600) make the interval a few
    steps; three SIGKILLs at random moments each redo at most the interval in force."""
    import random

    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "run.toml").write_text(CONFIG.replace("every_steps = 40", 'every_steps = "auto"\nasync_save = false')
                                       .replace("max_steps = 480", "max_steps = 200")
                                       + "[spot]\ninterruptions_per_hour = 3600\n")
    env = engine_env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    run = tmp_path / "runs" / "auto"
    rng = random.Random(20261203)
    args = ["run", str(tmp_path / "run.toml"), "--run-id", "auto", "--runs-dir", str(tmp_path / "runs")]
    for kill in range(3):
        proc = popen_engine(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            at = status_of(run).get("step", 0) if run.exists() else 0
            wait_for(lambda: status_of(run).get("step", 0) >= at + 10 and status_of(run).get("state") == "running",
                     timeout=120, what="training")
            time.sleep(rng.uniform(0.0, 1.5))
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        args = ["resume", str(run)]
    proc = popen_engine(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.wait(timeout=240) == 0
    events = events_of(run)
    intervals = [e for e in events if e["type"] == "checkpoint_interval"]
    assert intervals and all(e["mtbi_s"] == 1.0 and e["source"] == "spot.interruptions_per_hour = 3600"
                             for e in intervals)
    assert intervals[-1]["stall_measured"]
    # each session: the last step it reached (status and step events are coalesced: take its
    # highest step event) against the checkpoint the next session resumed from
    sessions, current = [], []
    for e in events:
        if e["type"] == "state" and e["state"] == "starting" or e["type"] == "resume":
            if current:
                sessions.append(current)
            current = []
        current.append(e)
    sessions.append(current)
    resumes = [e["step"] for e in events if e["type"] == "resume"]
    assert len(resumes) == 3
    for session, resumed in zip(sessions, resumes):
        reached = max(e["step"] for e in session if e["type"] == "step")
        every = [e["every_steps"] for e in session if e["type"] == "checkpoint_interval"]
        assert every, "each session announces its interval"
        assert reached - resumed <= max(every) + 1, (reached, resumed, every)
    ledger = [e for e in events if e["type"] == "ledger"][-1]
    assert ledger["sessions"] == 4 and ledger["checkpoint_interval"]["every_steps"] >= 1


def test_goodput_of_a_sweeps_trials_together(tmp_path):
    """`goodput --sweep STUDY` reads every trial run (STUDY-tNNN) and adds them up."""
    from contracts.events import encode_event, make_event

    def trial(n: int, productive: float, startup: float) -> None:
        run = tmp_path / f"study-t{n:03d}"
        run.mkdir()
        classes = {c: {"seconds": 0.0, "dollars": 0.0} for c in CLASSES}
        classes["productive"]["seconds"], classes["startup"]["seconds"] = productive, startup
        total = productive + startup
        (run / "events.jsonl").write_text(encode_event(make_event(
            "ledger", step=10, steps=10, sessions=1, total_s=total, goodput=productive / total, dollars=None,
            classes=classes, worst={"class": "startup", "seconds": startup, "remedy": "keep it warm"}, final=True)))

    trial(0, 30.0, 10.0)
    trial(1, 50.0, 10.0)
    (tmp_path / "other-t000").mkdir()  # another study's trial is left out
    done = subprocess.run([sys.executable, "-m", "engine.cli", "goodput", "--sweep", "study", "--runs-dir",
                           str(tmp_path), "--json"], capture_output=True, text=True, env=engine_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [r["run"] for r in out["runs"]] == ["study-t000", "study-t001"]
    assert out["total"]["total_s"] == 100.0 and out["total"]["goodput"] == pytest.approx(0.8)
    assert out["total"]["classes"]["startup"]["seconds"] == 20.0 and out["total"]["worst"]["class"] == "startup"
    missing = subprocess.run([sys.executable, "-m", "engine.cli", "goodput", "--sweep", "nosuch", "--runs-dir",
                              str(tmp_path)], capture_output=True, text=True, env=engine_env(), timeout=60)
    assert missing.returncode == 2 and "no trial runs named nosuch-tNNN" in missing.stderr
