"""A diverging run fails before it can save NaN: exit 1, the step and the last good checkpoint
named, every checkpoint on disk finite, and resume starts from the last good one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import engine_env, events_of, only_run, run_engine
from engine.checkpoint.store import load
from contracts.events import EXIT_FAILED, EXIT_FINISHED

# A linear classifier whose output turns NaN from one chosen forward pass on (0: never), so
# the loss, the gradients and, after that step, the weights are NaN.
FACTORY = '''
import torch
from torch import nn

class Poisoned(nn.Module):
    def __init__(self, num_classes, in_channels, nan_from):
        super().__init__()
        self.fc = nn.Linear(in_channels * 8 * 8, num_classes)
        self.calls, self.nan_from = 0, nan_from

    def forward(self, x):
        self.calls += 1
        out = self.fc(x.flatten(1))
        if self.nan_from and self.calls >= self.nan_from and self.training:
            out = out * float("nan")
        return out

def make(num_classes, in_channels, nan_from=0):
    return Poisoned(num_classes, in_channels, nan_from)
'''

CONFIG = """
[model]
name = "poisoned:make"
factory_args = {{ nan_from = {nan_from} }}
[data]
name = "digits"
[optim]
name = "sgd"
lr = 0.05
[train]
precision = "{precision}"
max_steps = 30
batch_size = 32
[checkpoint]
every_steps = {every}
keep_last = 2
async_save = {async_save}
[logging]
every_steps = {log_every}
max_step_events_per_s = 100000
tensorboard = false
"""


def checkpoints_of(run: Path) -> dict[int, dict]:
    return {int(p.name[5:13]): load(p) for p in sorted((run / "checkpoints").glob("step-*.pt"))}


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def start(tmp_path: Path, nan_from: int, every: int, log_every: int, precision: str = "fp32",
          async_save: bool = True, *extra: str):
    (tmp_path / "poisoned.py").write_text(FACTORY)
    (tmp_path / "run.toml").write_text(CONFIG.format(nan_from=nan_from, every=every, log_every=log_every,
                                                     precision=precision, async_save=str(async_save).lower()))
    env = engine_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    done = run_engine("run", str(tmp_path / "run.toml"), "--runs-dir", str(tmp_path / "runs"), *extra, env=env)
    return done, env


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_nan_caught_before_a_save_fails_the_run_and_keeps_the_good_checkpoints(tmp_path: Path, precision: str):
    # NaN from step 7's forward; logging only every 10 steps, so the save at step 8 is where
    # it shows first: the loss since the last log, and the weights, are checked before it.
    done, env = start(tmp_path, nan_from=7, every=2, log_every=10, precision=precision)
    assert done.returncode == EXIT_FAILED, done.stderr
    run = only_run(tmp_path / "runs")
    saved = checkpoints_of(run)
    assert sorted(saved) == [4, 6], "keep_last = 2 must leave the last two finite checkpoints"
    assert all(all_finite(s) for s in saved.values())
    events = events_of(run)
    final = [e for e in events if e["type"] == "state"][-1]
    assert final["state"] == "failed"
    assert "diverged" in final["reason"] and "at step 8" in final["reason"], final
    assert "step-00000006.pt" in final["reason"], final
    assert [e for e in events if e["type"] == "error"], "the failure is an error event too"
    assert not [e for e in events if e["type"] == "checkpoint" and e["step"] >= 7]

    # resume picks the last good checkpoint and, with the poison gone, finishes
    resumed = run_engine("resume", str(run), "--set", "model.factory_args.nan_from=0", env=env)
    assert resumed.returncode == EXIT_FINISHED, resumed.stderr
    resume = [e for e in events_of(run) if e["type"] == "resume"]
    assert [r["step"] for r in resume] == [6] and resume[0]["checkpoint"] == "step-00000006.pt"
    assert all(all_finite(s) for s in checkpoints_of(run).values())


def test_a_nan_loss_at_a_logging_step_stops_there(tmp_path: Path):
    done, _ = start(tmp_path, nan_from=12, every=10, log_every=1, async_save=False)
    assert done.returncode == EXIT_FAILED, done.stderr
    run = only_run(tmp_path / "runs")
    final = [e for e in events_of(run) if e["type"] == "state"][-1]
    assert "the loss is nan at step 12" in final["reason"], final
    assert "step-00000010.pt" in final["reason"], final
    assert sorted(checkpoints_of(run)) == [10]
    steps = [e["step"] for e in events_of(run) if e["type"] == "step"]
    assert max(steps) == 11, "the NaN step is not reported as a normal step"


@pytest.mark.slow
def test_under_ddp_every_rank_stops_at_the_same_step(tmp_path: Path):
    # only rank 1's forward goes NaN: the ranks agree on the check, so neither waits for the other
    (tmp_path / "poisoned.py").write_text(FACTORY.replace(
        "if self.nan_from and", "import os\n        if os.environ.get('RANK') == '1' and self.nan_from and"))
    (tmp_path / "run.toml").write_text(CONFIG.format(nan_from=7, every=2, log_every=10, precision="fp32",
                                                     async_save="true"))
    env = engine_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    done = run_engine("run", str(tmp_path / "run.toml"), "--runs-dir", str(tmp_path / "runs"), "--nproc", "2",
                      "--set", "distributed.timeout_s=60", env=env)
    assert done.returncode == EXIT_FAILED, done.stderr
    run = only_run(tmp_path / "runs")
    final = [e for e in events_of(run) if e["type"] == "state"][-1]
    assert final["state"] == "failed" and "diverged" in final["reason"] and "at step 8" in final["reason"], final
    assert "another rank" not in final["reason"], "rank 0 must fail on the NaN, not on a dead peer"
    assert sorted(checkpoints_of(run)) == [4, 6] and all(all_finite(s) for s in checkpoints_of(run).values())
    assert "rank 1 failed" in done.stderr and "diverged" in done.stderr


class TwoRanks:
    """A Dist stand-in for the agreement: this rank's flags, max'ed with another rank's."""

    active = True

    def __init__(self, other: list[float]):
        self.other, self.calls = other, 0

    def agree_max(self, values: list[float]) -> list[float]:
        self.calls += 1
        return [max(a, b) for a, b in zip(values, self.other)]


def guard_for(model: torch.nn.Module, dist, precision: str = "fp32"):
    from engine.train.guard import DivergenceGuard

    return DivergenceGuard(model, dist, precision, lambda: Path("step-00000006.pt"))


def test_the_guard_fails_every_rank_when_only_another_rank_saw_a_nan():
    from engine.train.guard import Diverged

    model = torch.nn.Linear(3, 2)
    dist = TwoRanks(other=[1.0, 0.0])  # the other rank's pending loss is NaN; ours is fine
    with pytest.raises(Diverged, match="the loss is not finite at step 8.*step-00000006.pt"):
        guard_for(model, dist).before_save(0.7, step=8)
    assert dist.calls == 1
    guard_for(model, TwoRanks(other=[0.0, 0.0])).before_save(0.7, step=8)  # nobody saw one


def test_the_guard_checks_the_weights_even_when_the_loss_is_finite():
    from engine.train.guard import Diverged

    model = torch.nn.BatchNorm1d(3)
    model.running_var[1] = float("inf")  # a poisoned buffer, with a finite loss
    for precision in ("fp32", "fp16"):  # fp16's scaler guards the gradients, not the buffers
        with pytest.raises(Diverged, match="the weights are not finite"):
            guard_for(model, TwoRanks(other=[0.0, 0.0]), precision).before_save(0.7, step=3)
    guard_for(torch.nn.BatchNorm1d(3), TwoRanks(other=[0.0, 0.0])).before_save(0.7, step=3)
