"""A run's state: the position in training, its checkpoint dictionary, and how the run ended.

`snapshot` builds the versioned dictionary a checkpoint holds (model, optimizer, scaler,
schedule, position, every RNG, the data position, the resolved config); `restore` puts one
back. Under FSDP each rank's dictionary holds only its own shards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from engine.checkpoint.rng import capture_rng, restore_rng
from engine.checkpoint.store import FORMAT
from engine.parallel.dist import Dist


@dataclass
class Position:
    """Where the run is: everything besides tensors that a checkpoint must restore."""

    step: int = 0          # optimizer steps taken
    epoch: int = 0         # current epoch (0-based)
    batch: int = 0         # micro-batches of this epoch already consumed
    peak_lr: float = 0.0   # the schedule's peak (changed by the `set` command)
    best: float | None = None
    train_seconds: float = 0.0
    samples: int = 0
    skipped: int = 0       # fp16 steps skipped for inf/NaN gradients (the schedule holds still)


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, pos: Position,
             cfg: Any, dist: Dist, rngs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything needed to continue exactly from this step boundary (`rngs`: every rank's
    RNG state, gathered by the Checkpointer under torchrun)."""
    extra: dict[str, Any] = {"rng_ranks": rngs} if rngs is not None and len(rngs) > 1 else {}
    if dist.sharded:
        from engine.parallel.sharded import local_state

        extra.update(local_state(model, optimizer), rank=dist.rank, strategy="fsdp")
    else:
        extra.update(model=model.state_dict(), optimizer=optimizer.state_dict())
    return {**extra, "format": FORMAT, "step": pos.step, "scaler": scaler.state_dict(),
            "scheduler": {"name": cfg.schedule.name, "peak_lr": pos.peak_lr},
            "trainer": asdict(pos),
            "data": {"epoch": pos.epoch, "offset": pos.batch * cfg.train.batch_size, "seed": cfg.train.seed},
            "rng": capture_rng(), "world_size": dist.world, "tensor_parallel": dist.tp, "pipeline_stages": dist.pp,
            "stages_per_rank": cfg.distributed.stages_per_rank if dist.pp > 1 else 1, "config": cfg.model_dump(),
            "torch_version": str(torch.__version__)}


def restore(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
            dist: Dist) -> Position:
    """Load a checkpoint's state into the live objects; the position it was taken at."""
    if dist.sharded:
        from engine.parallel.sharded import load_local_state

        load_local_state(model, optimizer, state)
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    pos = Position(**state["trainer"])
    pos.peak_lr = state["scheduler"]["peak_lr"]
    rngs = state.get("rng_ranks")
    restore_rng(rngs[dist.rank] if dist.active and rngs else state["rng"])
    return pos


@dataclass
class RunResult:
    """How a run ended: its exit code and final state, the last and best metrics, the steps."""

    exit_code: int
    state: str
    steps: int
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    best: float | None = None
