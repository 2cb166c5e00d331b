"""Checkpoints are loaded as weights only: a crafted file cannot run code, and a broken
newest file makes resume fall back to the previous good one."""

from __future__ import annotations

import builtins
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from conftest import events_of, only_run, run_engine, run_engines, status_of
from engine.checkpoint import store as checkpoint

BASE = """
[model]
factory_args = { width = 8 }
[data]
name = "synthetic"
synthetic_samples = 512
synthetic_shape = [1, 8, 8]
[train]
max_steps = 10
batch_size = 32
deterministic = false  # saves ~2.5 s of start-up (torch imports its compiler for it)
[checkpoint]
every_steps = 5
keep_last = 3
[logging]
every_steps = 5
"""


class RunsShell:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class RunsPython:
    """Unpickling this runs Python code (through builtins.exec) that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def craft(path: Path, payload: object) -> None:
    """A file that looks like a checkpoint in every way, with a payload where the weights go."""
    torch.save({"format": checkpoint.FORMAT, "step": 99, "model": {"weight": payload},
                "optimizer": {}, "scaler": {}, "scheduler": {"name": "cosine", "peak_lr": 0.1},
                "trainer": {"step": 99, "epoch": 4}, "rng": {}, "config": {}}, path)


@pytest.mark.parametrize("payload, culprit", [(RunsShell, "posix.system"), (RunsPython, "exec")],
                         ids=["os.system", "builtins.exec"])
def test_loading_a_crafted_checkpoint_raises_without_running_its_code(tmp_path: Path, payload, culprit):
    marker = tmp_path / "MARKER"
    path = tmp_path / "step-00000099.pt"
    craft(path, payload(marker))
    with pytest.raises(Exception, match=culprit):
        checkpoint.load(path)
    assert not marker.exists(), "loading a checkpoint ran code from it"
    # The bait is live: an unsafe load of the same file does run the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("payload, culprit", [(RunsShell, "GLOBAL posix.system"), (RunsPython, "GLOBAL exec")],
                         ids=["os.system", "builtins.exec"])
def test_the_store_skips_a_crafted_newest_file_and_says_why(tmp_path: Path, payload, culprit):
    marker = tmp_path / "MARKER"
    store = checkpoint.CheckpointStore(tmp_path / "checkpoints")
    good = {"format": checkpoint.FORMAT, "step": 5, "model": {"w": torch.arange(3.0)}, "optimizer": {},
            "trainer": {"step": 5}, "rng": {}, "config": {}}
    torch.save(good, store.folder / "step-00000005.pt")
    craft(store.folder / "step-00000099.pt", payload(marker))
    warnings: list[str] = []
    state, path = store.load_latest(warnings.append)
    assert path.name == "step-00000005.pt" and torch.equal(state["model"]["w"], torch.arange(3.0))
    (warning,) = warnings
    assert "step-00000099.pt is unusable" in warning
    assert culprit in warning, f"the warning should say what was refused: {warning}"
    assert len(warning) < 400, "one readable line, not torch's whole essay"
    assert not marker.exists()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A real finished run with checkpoints at steps 5 and 10."""
    folder = tmp_path_factory.mktemp("base")
    (folder / "run.toml").write_text(BASE)
    done = run_engine("run", str(folder / "run.toml"), "--runs-dir", str(folder / "runs"))
    assert done.returncode == 0, done.stderr
    run = only_run(folder / "runs")
    names = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
    assert names == ["step-00000005.pt", "step-00000010.pt"]
    return run


@pytest.fixture(scope="module")
def resumed(base_run: Path, tmp_path_factory) -> dict[str, dict]:
    """Copies of the base run, each with a bad newest checkpoint, resumed side by side."""
    folder = tmp_path_factory.mktemp("resumed")
    out = {}
    crafted = Path(shutil.copytree(base_run, folder / "crafted" / base_run.name))
    craft(crafted / "checkpoints" / "step-00000099.pt", RunsShell(folder / "crafted" / "MARKER"))
    out["crafted"] = {"run": crafted}
    truncated = Path(shutil.copytree(base_run, folder / "truncated" / base_run.name))
    newest = truncated / "checkpoints" / "step-00000010.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    out["truncated"] = {"run": truncated}
    jobs = {name: {"args": ["resume", str(job["run"]), "--set", "train.max_steps=14"],
                   "cwd": job["run"].parent} for name, job in out.items()}
    for name, done in run_engines(jobs).items():
        out[name]["done"] = done
    return out


def assert_resumed_to_step_14(run: Path, done) -> None:
    assert done.returncode == 0, done.stderr
    assert status_of(run)["state"] == "finished" and status_of(run)["step"] == 14
    final = checkpoint.load(run / "checkpoints" / "step-00000014.pt")
    assert final["step"] == 14
    steps = [e["step"] for e in events_of(run) if e["type"] == "step"]
    assert steps[-1] == 14


def assert_resumed_from(run: Path, step: int, skipped: str) -> None:
    (resume,) = [e for e in events_of(run) if e["type"] == "resume"]
    assert resume["checkpoint"] == f"step-{step:08d}.pt" and resume["step"] == step
    warnings = [e["message"] for e in events_of(run) if e["type"] == "log" and e["level"] == "warning"]
    assert any(skipped in w for w in warnings), "the cockpit is told which file was skipped"


def test_resume_refuses_a_crafted_newest_checkpoint_and_falls_back(resumed):
    run, done = resumed["crafted"]["run"], resumed["crafted"]["done"]
    assert_resumed_to_step_14(run, done)
    assert "warning: checkpoint step-00000099.pt is unusable" in done.stderr
    assert "GLOBAL posix.system" in done.stderr, "the warning says what was refused"
    assert_resumed_from(run, 10, "step-00000099.pt")
    assert not (run.parent / "MARKER").exists(), "resume ran code from a crafted checkpoint"
    assert not list(run.parent.parent.rglob("MARKER"))


def test_resume_skips_a_truncated_newest_checkpoint(resumed):
    run, done = resumed["truncated"]["run"], resumed["truncated"]["done"]
    assert_resumed_to_step_14(run, done)
    assert "warning: checkpoint step-00000010.pt is unusable" in done.stderr
    assert "trying the previous one" in done.stderr
    assert_resumed_from(run, 5, "step-00000010.pt")
