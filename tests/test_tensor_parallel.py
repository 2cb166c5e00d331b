"""Tensor parallel (#19 parts 3 to 6, 8): the gpt's linears split over Gloo ranks, alone and with FSDP.

Agreement with one process is judged by outcome, not bit for bit: a row-wise split sums its
halves' partial products in another order (one all-reduce), and FSDP's data-parallel ranks
reduce-scatter their gradients, so float32 rounding differs from the single process's and grows
a little with every AdamW step. Measured on 94 steps (two epochs): weights within 9e-6,
validation loss within 1.2e-4 of its value; the tests run one epoch and allow 1e-4 and 2e-3.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
import torch

from conftest import engine_env, events_of, popen_engine, run_engine, run_engines, status_of, wait_for
from contracts.events import EXIT_BAD_INPUT, EXIT_STOPPED
from test_gpt import GPT_RUN
from test_resume import final_state, step_losses

pytestmark = pytest.mark.timeout(600)

TP_RUN = GPT_RUN.replace("epochs = 2", "epochs = 1")  # 47 steps: enough to see the rounding drift
TP2 = ("--nproc", "2", "--set", "distributed.tensor_parallel=2")
TP2_D2 = ("--nproc", "4", "--set", "distributed.tensor_parallel=2", "--set", "distributed.strategy='fsdp'",
          "--set", "train.batch_size=16")  # 2 data-parallel groups of 16: the global batch of 32


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tp")
    (base / "gpt.toml").write_text(TP_RUN)
    common = ["run", str(base / "gpt.toml"), "--runs-dir", str(base / "runs")]
    done = run_engines({"tp2_d2": {"args": [*common, "--run-id", "tp2_d2", *TP2_D2]},
                        "tp2": {"args": [*common, "--run-id", "tp2", *TP2]},
                        "one": {"args": [*common, "--run-id", "one"]}}, timeout=500)
    for name, proc in done.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    return {name: base / "runs" / name for name in done}


def shards(run: Path) -> list[dict]:
    (folder,) = sorted((run / "checkpoints").glob("step-*.shards"))[-1:]
    return [torch.load(f, weights_only=True) for f in sorted(folder.glob("rank-*.pt"))]


def whole(parts: list[torch.Tensor], full_shape: torch.Size) -> torch.Tensor:
    """A parameter from its tensor-parallel shards: replicated, or split along one dimension."""
    if parts[0].shape == full_shape:
        return parts[0]
    dim = next(d for d, (a, b) in enumerate(zip(parts[0].shape, full_shape)) if a != b)
    return torch.cat(parts, dim)


def val_losses(run: Path) -> list[float]:
    return [e["metrics"]["loss"] for e in events_of(run) if e["type"] == "eval"]


def test_two_way_tensor_parallel_trains_to_the_single_process_weights(runs):
    one = final_state(runs["one"])["model"]
    ranks = shards(runs["tp2"])
    assert [r["tensor_parallel"] for r in ranks] == [2, 2]
    q = ranks[0]["model"]["blocks.0.attn.q.weight"]
    assert q.shape[0] == one["blocks.0.attn.q.weight"].shape[0] // 2  # each rank holds half the heads
    for name, full in one.items():
        ours = whole([r["model"][name] for r in ranks], full.shape)
        assert torch.allclose(ours, full, rtol=0, atol=1e-4), f"{name}: {float((ours - full).abs().max())}"
    assert val_losses(runs["tp2"]) == pytest.approx(val_losses(runs["one"]), rel=1e-3)


def test_tensor_parallel_composed_with_fsdp_on_four_ranks_agrees_with_one_process(runs):
    ranks = shards(runs["tp2_d2"])
    assert len(ranks) == 4 and {r["tensor_parallel"] for r in ranks} == {2}
    assert val_losses(runs["tp2_d2"]) == pytest.approx(val_losses(runs["one"]), rel=2e-3)
    steps = [e for e in events_of(runs["tp2_d2"]) if e["type"] == "step"]
    assert steps[-1]["world_size"] == 4 and steps[-1]["step"] == final_state(runs["one"])["step"]


def stop_mid_run(tmp_path: Path, config: str, layout: tuple[str, ...]) -> Path:
    """Start a run with this layout, SIGTERM it a random step into its epoch; the stopped run."""
    (tmp_path / "gpt.toml").write_text(config)
    folder = tmp_path / "runs"
    proc = popen_engine(["run", str(tmp_path / "gpt.toml"), "--runs-dir", str(folder), "--run-id", "cut", *layout],
                        stdout=open(tmp_path / "out.log", "wb"), stderr=open(tmp_path / "err.log", "wb"))
    run = folder / "cut"
    wait_for(lambda: status_of(run).get("step", 0) >= random.randint(12, 35), timeout=300, what="a step mid-run")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=300) == EXIT_STOPPED, (tmp_path / "err.log").read_text()[-3000:]
    return run


def resume_matches(run: Path, reference: Path) -> None:
    """Resume `run` with its own layout; every rank's weights and every step's loss as `reference`'s."""
    done = run_engine("resume", run.name, "--runs-dir", str(run.parent), timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    for ours, ref in zip(shards(run), shards(reference), strict=True):
        assert ours["step"] == ref["step"]
        for name, tensor in ref["model"].items():
            assert torch.equal(ours["model"][name], tensor), f"rank {ours['rank']}: {name} differs"
    assert step_losses(run) == step_losses(reference)


def refused(tmp_path: Path, config: str, sets: list[str], words: list[str]) -> None:
    """`run` with these --set values exits 2, names `words`, and writes nothing."""
    (tmp_path / "gpt.toml").write_text(config)
    args = [a for s in sets for a in ("--set", s)]
    done = run_engine("run", str(tmp_path / "gpt.toml"), "--runs-dir", str(tmp_path / "runs"), *args, timeout=200)
    assert done.returncode == EXIT_BAD_INPUT, done.stdout + done.stderr
    assert all(w in done.stderr for w in words), done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr  # no rank started
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_tensor_parallel_run_stopped_mid_epoch_resumes_bit_exactly(tmp_path, runs):
    run = stop_mid_run(tmp_path, TP_RUN, TP2)
    # (a resume with another layout is refused: tests/test_pipeline.py, the same check)
    resume_matches(run, runs["tp2"])


@pytest.mark.parametrize("sets, words", [
    (["distributed.nproc=3", "distributed.tensor_parallel=2"], ["tensor_parallel = 2", "nproc = 3"]),
    (["distributed.nproc=3", "distributed.tensor_parallel=3"], ["tensor_parallel = 3", "heads = 4"]),
    (["distributed.nproc=4", "distributed.tensor_parallel=2"], ["strategy = 'ddp'", "fsdp"]),
    (["distributed.nproc=2", "distributed.tensor_parallel=2", "model.name='small_cnn'", "data.name='digits'"],
     ["tensor_parallel = 2", "small_cnn"]),
    (["distributed.tensor_parallel=2"], ["tensor_parallel = 2", "nproc"]),
])
def test_a_layout_that_cannot_be_built_exits_2_naming_the_field_before_any_rank_starts(tmp_path, sets, words):
    refused(tmp_path, GPT_RUN, sets, words)


OWN_PLAN = '''
from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel


class Wide(nn.Module):
    """A classifier whose hidden layers split over the ranks: its own tensor-parallel plan."""

    def __init__(self, num_classes, in_channels, hidden=32):
        super().__init__()
        self.flat = nn.Flatten()
        self.up = nn.Linear(in_channels * 64, hidden)
        self.down = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.down(self.up(self.flat(x)).relu()).relu())

    def tp_plan(self, tp):
        return {"up": ColwiseParallel(), "down": RowwiseParallel()}


def wide(num_classes, in_channels):
    return Wide(num_classes, in_channels)
'''


def test_a_users_model_brings_its_own_plan(tmp_path):
    (tmp_path / "ownplan.py").write_text(OWN_PLAN)
    (tmp_path / "own.toml").write_text('[model]\nname = "ownplan:wide"\n[data]\nname = "digits"\n'
                                       "[optim]\nname = \"adamw\"\nlr = 0.01\n[train]\nepochs = 1\nbatch_size = 32\n"
                                       "[logging]\nevery_steps = 5\n")
    env = {**engine_env(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{engine_env()['PYTHONPATH']}"}
    common = ["run", str(tmp_path / "own.toml"), "--runs-dir", str(tmp_path / "runs")]
    done = run_engines({"tp2": {"args": [*common, "--run-id", "tp2", *TP2], "env": env},
                        "one": {"args": [*common, "--run-id", "one"], "env": env}}, timeout=300)
    for name, proc in done.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    one = final_state(tmp_path / "runs" / "one")["model"]
    ranks = shards(tmp_path / "runs" / "tp2")
    assert ranks[0]["model"]["up.weight"].shape[0] == 16 and ranks[0]["model"]["down.weight"].shape[1] == 16
    assert torch.equal(ranks[0]["model"]["head.weight"], ranks[1]["model"]["head.weight"])  # replicated
    for name, full in one.items():
        ours = whole([r["model"][name] for r in ranks], full.shape)
        assert torch.allclose(ours, full, rtol=0, atol=1e-4), f"{name}: {float((ours - full).abs().max())}"
