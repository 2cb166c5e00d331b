"""SIGKILL during checkpoint writes: no half-written checkpoint, and resume stays exact."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import torch

from conftest import popen_engine, TINY, events_of, only_run, status_of, wait_for
from engine.checkpoint.store import CheckpointStore, load
from engine.run.rundir import RunDir
from test_resume import final_state, step_losses

KILLS = 20


def realistic_state() -> dict:
    """About 6 MB of tensors shaped like a small model with its optimizer state."""
    gen = torch.Generator().manual_seed(0)
    model = {f"layer{i}.weight": torch.randn(384, 256, generator=gen) for i in range(8)}
    return {
        "format": 1, "step": 0, "model": model,
        "optimizer": {"state": {i: {"momentum_buffer": t * 0.5} for i, t in enumerate(model.values())},
                      "param_groups": [{"lr": 0.1, "params": list(range(len(model)))}]},
        "trainer": {"step": 0}, "rng": {"torch": torch.get_rng_state()}, "config": {"x": 1},
        "marker": torch.zeros((), dtype=torch.int64),
    }


def saver(folder: Path, state: dict, first_step: int) -> None:
    """Child process: save checkpoints with increasing steps until killed."""
    try:
        store = CheckpointStore(folder, keep_last=3)
        for step in range(first_step, first_step + 100_000):
            state["step"] = step
            state["marker"] = torch.tensor(step)
            store.save(state, step)
    finally:
        os._exit(1)  # never fall back into pytest in the child


def refuse_warning(message: str) -> None:
    raise AssertionError(f"load_latest had to skip a file: {message}")


def test_sigkill_during_checkpoint_writes_never_leaves_a_broken_checkpoint(tmp_path):
    state = realistic_state()
    folder = tmp_path / "checkpoints"
    store = CheckpointStore(folder, keep_last=3)
    rng = random.Random()
    interrupted_writes = 0
    newest_seen = -1
    for kill in range(KILLS):
        first = (kill + 1) * 10_000
        pid = os.fork()
        if pid == 0:
            saver(folder, state, first)
        time.sleep(rng.uniform(0.02, 0.3))  # from a couple to a few dozen saves of ~6 MB
        os.kill(pid, signal.SIGKILL)
        _, wait_status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) == signal.SIGKILL, \
            "the saver must still be writing when killed"

        files = store.files()
        for step, path in files:
            loaded = load(path)  # raises on a truncated or corrupt file
            assert loaded["step"] == step and int(loaded["marker"]) == step
            for key, tensor in state["model"].items():
                assert torch.equal(loaded["model"][key], tensor), f"{path.name}: {key} corrupted"

        if files:
            newest_step, newest_path = files[-1]
            assert newest_step >= newest_seen
            newest_seen = newest_step
            latest = store.load_latest(warn=refuse_warning)
            assert latest is not None and latest[1] == newest_path and latest[0]["step"] == newest_step
            pointer = folder / "latest"
            if pointer.exists():  # written atomically: always whole JSON naming a present file
                assert (folder / json.loads(pointer.read_text())["file"]).is_file()

        leftovers = [p.name for p in folder.iterdir()
                     if not p.name.startswith("step-") and p.name != "latest"]
        assert all(name.startswith(".") and ".tmp-" in name for name in leftovers), leftovers
        interrupted_writes += bool(leftovers)
        store.clean_temporaries()
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]

    assert newest_seen > 0, "no checkpoint was ever completed"
    # about half the kills leave a temporary behind; a handful proves kills hit writes
    assert interrupted_writes >= 2, (
        f"only {interrupted_writes} of {KILLS} kills landed during a write: the test lost its point")


# ---- a real engine killed at random moments, with a checkpoint every step ------------------------

EVERY_STEP = ("--set", "train.epochs=2", "--set", "checkpoint.every_steps=1")
TOTAL = 90


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "a") as f:
        return popen_engine(args, stdout=f, stderr=subprocess.STDOUT)


def kill_at(proc: subprocess.Popen, run: Path, step: int, log: Path, rng: random.Random) -> int:
    """SIGKILL the engine a random moment after this process reports `step`; return its last step."""
    def reached():
        if proc.poll() is not None:
            raise AssertionError(f"engine exited ({proc.returncode}) early:\n{log.read_text()[-3000:]}")
        s = status_of(run)
        return s.get("pid") == proc.pid and s.get("step", 0) >= step
    wait_for(reached, timeout=180, what=f"step {step}")
    time.sleep(rng.uniform(0.0, 0.15))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    return status_of(run)["step"]


def test_sigkill_during_engine_checkpoints_then_resume_is_exact(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    log = tmp_path / "engine-output.txt"
    # the uninterrupted reference trains alongside
    reference = start(["run", str(tmp_path / "tiny.toml"), "--runs-dir", str(tmp_path / "ref"), *EVERY_STEP],
                      tmp_path / "reference-output.txt")
    proc = reference
    try:
        runs = tmp_path / "runs"
        proc = start(["run", str(tmp_path / "tiny.toml"), "--runs-dir", str(runs), *EVERY_STEP], log)
        run = wait_for(lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), what="run dir")
        rng = random.Random()
        target = 0
        for round_ in range(3):
            target = rng.randint(target + 8, 25 * (round_ + 1))
            killed_at = kill_at(proc, run, target, log, rng)
            assert killed_at < TOTAL
            # the dead engine's orphaned DataLoader workers must not keep the run locked
            os.close(RunDir(run).lock())
            for step, path in CheckpointStore(run / "checkpoints").files():
                assert load(path)["step"] == step, f"{path.name} is broken after SIGKILL"
            proc = start(["resume", str(run)], log)
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
        assert reference.wait(timeout=240) == 0, (tmp_path / "reference-output.txt").read_text()[-3000:]
    finally:
        for p in (proc, reference):
            if p.poll() is None:
                p.kill()
                p.wait()

    ref = only_run(tmp_path / "ref")
    ours, theirs = final_state(run), final_state(ref)
    assert ours["step"] == theirs["step"] == TOTAL
    for key, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][key], tensor), f"weights differ at {key}"
    for index, buffers in theirs["optimizer"]["state"].items():
        for name, tensor in buffers.items():
            assert torch.equal(ours["optimizer"]["state"][index][name], tensor), f"optimizer {index}.{name}"
    assert step_losses(run) == step_losses(ref)
    assert len([e for e in events_of(run) if e["type"] == "resume"]) == 3
    assert status_of(run)["state"] == "finished"
    assert not list((run / "checkpoints").glob(".*.tmp-*")), "resume must clear killed writers' temporaries"
