"""Exact resume: a run stopped mid-epoch and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
import torch

from conftest import TINY, events_of, only_run, run_engine, start_engine, status_of, wait_for
from engine.checkpoint.store import load
from contracts.events import replay


def final_state(run: Path) -> dict:
    latest = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    return load(latest)


def step_losses(run: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in replay(events_of(run)) if e["type"] == "step"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    base = tmp_path_factory.mktemp("ref")
    (base / "tiny.toml").write_text(TINY)
    done = run_engine("run", str(base / "tiny.toml"), "--runs-dir", str(base / "runs"))
    assert done.returncode == 0, done.stderr
    return only_run(base / "runs")


def assert_same_run(run: Path, reference: Path) -> None:
    ours, ref = final_state(run), final_state(reference)
    assert ours["step"] == ref["step"] == 135
    for key, tensor in ref["model"].items():
        assert torch.equal(ours["model"][key], tensor), f"weights differ at {key}"
    assert step_losses(run) == step_losses(reference)


def interrupt(tmp_path: Path, sig: int, at_step: int) -> Path:
    (tmp_path / "tiny.toml").write_text(TINY)
    proc = start_engine("run", str(tmp_path / "tiny.toml"), "--runs-dir", str(tmp_path / "runs"))
    runs = tmp_path / "runs"
    run = wait_for(lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), what="run dir")
    wait_for(lambda: status_of(run).get("step", 0) >= at_step, what=f"step {at_step}")
    os.kill(proc.pid, sig)
    proc.communicate(timeout=120)
    return run, proc.returncode


def test_sigterm_mid_epoch_then_resume_is_bit_identical(tmp_path, reference):
    run, code = interrupt(tmp_path, signal.SIGTERM, at_step=random.randint(50, 80))
    assert code == 3
    stopped = status_of(run)
    assert stopped["state"] == "stopped"
    assert stopped["step"] % 45 != 0, "the stop should land mid-epoch"
    done = run_engine("resume", str(run))
    assert done.returncode == 0, done.stderr
    assert_same_run(run, reference)


def test_sigkill_then_resume_from_periodic_checkpoint_is_bit_identical(tmp_path, reference):
    run, code = interrupt(tmp_path, signal.SIGKILL, at_step=random.randint(20, 100))
    assert code == -signal.SIGKILL
    done = run_engine("resume", str(run))
    assert done.returncode == 0, done.stderr
    assert_same_run(run, reference)
    resumes = [e for e in events_of(run) if e["type"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] % 5 == 0


def test_validating_inside_epochs_leaves_the_training_bit_identical(reference, tmp_path: Path):
    """train.eval_every_steps: partial evaluations at every 20th step inside an epoch, the epoch ends
    as before, and the weights and losses equal the run that validated at epoch ends only."""
    (tmp_path / "tiny.toml").write_text(TINY.replace("[train]\n", "[train]\neval_every_steps = 20\n"))
    done = run_engine("run", str(tmp_path / "tiny.toml"), "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    run = only_run(tmp_path / "runs")
    assert_same_run(run, reference)
    evals = [(e["step"], e["epoch"], bool(e.get("partial"))) for e in events_of(run) if e["type"] == "eval"]
    assert evals == [(20, 0, True), (40, 0, True), (45, 0, False), (60, 1, True), (80, 1, True), (90, 1, False),
                     (100, 2, True), (120, 2, True), (135, 2, False)]
    ref_evals = {e["step"]: e["metrics"] for e in events_of(reference) if e["type"] == "eval"}
    ours = {e["step"]: e["metrics"] for e in events_of(run) if e["type"] == "eval"}
    assert all(ours[s] == m for s, m in ref_evals.items()), "the epoch ends' evaluations are the same numbers"
    assert "step 20 (inside epoch 1) validation:" in (run / "engine.log").read_text()
