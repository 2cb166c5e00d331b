"""TensorBoard scalars, read back with TensorBoard's own reader: right tags, right steps,
and no duplicate points after a crash and resume."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import (engine_env, popen_engine, events_of, only_run, run_engine, start_engine, status_of,
                      wait_for)
from engine.config.schema import ScheduleConfig
from contracts.control import send_command
from contracts.events import replay
from engine.train.schedule import lr_at

# digits: 1,438 training images, so 23 steps an epoch at batch 64.
RUN = """
[model]
factory_args = { width = 8 }
[data]
name = "digits"
[optim]
lr = 0.01
[schedule]
name = "cosine"
warmup_steps = 5
[train]
epochs = 5
max_steps = %(max_steps)d
batch_size = 64
deterministic = false  # saves ~2.5 s of start-up (torch imports its compiler for it)
[checkpoint]
every_steps = 10
[logging]
every_steps = 1
max_step_events_per_s = 100000
status_every_s = 0.05
"""
STEPS_PER_EPOCH = 23
EVERY = 10  # [checkpoint] every_steps
STEP_TAGS = ("train/loss", "train/lr", "train/accuracy", "perf/samples_per_s")
VAL_TAGS = ("val/loss", "val/accuracy")


def scalars(run: Path) -> dict[str, list]:
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def steps(points) -> list[int]:
    return [p.step for p in points]


@pytest.fixture(scope="module", autouse=True)
def plain_run(tmp_path_factory):
    """An uninterrupted run, started when this module starts so that it trains side by side
    with the kill-and-resume test (each engine uses one core)."""
    folder = tmp_path_factory.mktemp("plain")
    (folder / "run.toml").write_text(RUN % {"max_steps": 30})
    proc = popen_engine(["run", str(folder / "run.toml"), "--runs-dir", str(folder / "runs")],
                            env=engine_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    yield proc, folder / "runs"
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def newest_checkpoint(run: Path) -> int:
    return max((int(p.name[5:13]) for p in (run / "checkpoints").glob("step-*.pt")), default=0)


def pause_between_checkpoints(run: Path, not_before: int) -> int:
    """Pause the engine at a step past its newest checkpoint; return that step."""
    wait_for(lambda: status_of(run).get("step", 0) >= not_before, what=f"step {not_before}")
    socket = status_of(run)["socket"]
    for _ in range(10):
        reply = send_command(socket, "pause")
        assert reply["ok"], reply
        if reply["step"] % EVERY != 0 and reply["step"] % STEPS_PER_EPOCH != 0:
            # Checkpoints are written in the background: the one before the pause (every EVERY
            # steps, and a new best at an epoch's end: step 23) may land a moment after the reply.
            # Wait for it, so the test knows where a resume starts.
            on = max(reply["step"] // EVERY * EVERY, reply["step"] // STEPS_PER_EPOCH * STEPS_PER_EPOCH)
            wait_for(lambda: newest_checkpoint(run) >= on, what=f"the checkpoint of step {on}")
            return reply["step"]
        # Paused right on a checkpoint: nothing would be recomputed. Go a little further.
        send_command(socket, "continue")
        wait_for(lambda: status_of(run).get("step", 0) > reply["step"], what="progress")
    raise AssertionError("could not pause between two checkpoints")


def test_no_duplicate_points_after_a_kill_and_resume(tmp_path: Path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(RUN % {"max_steps": 40})
    runs = tmp_path / "runs"
    proc = start_engine("run", str(cfg), "--runs-dir", str(runs))
    try:
        run = wait_for(lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), what="run dir")
        killed_at = pause_between_checkpoints(run, not_before=12)
        checkpoint = newest_checkpoint(run)
        # Everything up to the pause reached TensorBoard's files before the kill.
        wait_for(lambda: steps(scalars(run).get("train/loss", []))[-1:] == [killed_at],
                 what="TensorBoard to have the last step")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    before = scalars(run)
    assert steps(before["train/loss"]) == list(range(1, killed_at + 1))
    assert checkpoint < killed_at, "some steps must be recomputed after the resume"

    done = run_engine("resume", str(run))
    assert done.returncode == 0, done.stderr
    resumes = [e for e in events_of(run) if e["type"] == "resume"]
    assert [e["step"] for e in resumes] == [checkpoint], f"resumed from step {checkpoint}, not {killed_at}"

    after = scalars(run)
    for tag in STEP_TAGS:
        assert steps(after[tag]) == list(range(1, 41)), f"{tag}: each step exactly once after the resume"
    for tag in VAL_TAGS:
        assert steps(after[tag]) == [STEPS_PER_EPOCH, 40]
    # TensorBoard agrees with the cockpit's replayed history, point for point.
    replayed = {e["step"]: e["loss"] for e in replay(events_of(run)) if e["type"] == "step"}
    assert sorted(replayed) == list(range(1, 41))
    assert [p.value for p in after["train/loss"]] == pytest.approx([replayed[s] for s in range(1, 41)], rel=1e-6)


def test_a_run_writes_every_scalar_at_the_right_step(plain_run):
    proc, runs = plain_run
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    run = only_run(runs)
    tb = scalars(run)

    assert set(STEP_TAGS + VAL_TAGS) <= set(tb)
    for tag in STEP_TAGS:
        assert steps(tb[tag]) == list(range(1, 31)), f"{tag}: one point per logged step"
    for tag in VAL_TAGS:
        assert steps(tb[tag]) == [STEPS_PER_EPOCH, 30], f"{tag}: at the epoch's end and at the run's end"

    # The curves TensorBoard shows are the ones the cockpit shows...
    events = events_of(run)
    step_events = {e["step"]: e for e in events if e["type"] == "step"}
    for point in tb["train/loss"]:
        assert point.value == pytest.approx(step_events[point.step]["loss"], rel=1e-6)
    for point in tb["train/accuracy"]:  # from the step's own logits, at the loss's sync
        assert point.value == pytest.approx(step_events[point.step]["accuracy"], rel=1e-6)
        assert 0.0 <= point.value <= 1.0
    evals = {e["step"]: e["metrics"] for e in events if e["type"] == "eval"}
    for point in tb["val/accuracy"]:
        assert point.value == pytest.approx(evals[point.step]["accuracy"], rel=1e-6)
        assert 0.0 <= point.value <= 1.0
    for point in tb["val/loss"]:
        assert point.value == pytest.approx(evals[point.step]["loss"], rel=1e-6)
    # ...and the learning rate at step s is the schedule's rate for the s-th optimizer step.
    sched = ScheduleConfig(name="cosine", warmup_steps=5)
    for point in tb["train/lr"]:
        assert point.value == pytest.approx(lr_at(point.step - 1, 30, 0.01, sched), rel=1e-5)
    assert all(p.value > 0 for p in tb["perf/samples_per_s"])
