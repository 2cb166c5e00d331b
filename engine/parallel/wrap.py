"""Wrapping the model for several processes: DDP (replicated) or FSDP2 (sharded).

The model is wrapped after the converters changed it and before it is compiled and given to
the optimizer. DDP's gradient all-reduce goes through a timed hook, so the loop can tell how
much of the backward pass waited on communication that did not overlap compute.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.parallel.dist import Dist


class CommClock:
    """When DDP launched its last gradient bucket (perf_counter seconds; 0: not this step)."""

    def __init__(self) -> None:
        self.launched = 0.0


@dataclass
class Wrapped:
    """The model as the loop uses it: `model` (its parameters, its state) and `forward`."""

    model: nn.Module
    forward: nn.Module
    comm: CommClock
    dist: Dist
    pipeline: Any = None  # this rank's stage and schedule (engine.parallel.pipeline.Pipeline)

    def grad_sync(self, sync: bool) -> Any:
        """Skip the cross-rank gradient reduction on accumulation micro-batches."""
        if not self.dist.active:
            return nullcontext()
        if self.dist.sharded:
            if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP (tensor parallel alone has no sync)
                self.model.set_requires_gradient_sync(sync)
            return nullcontext()
        return nullcontext() if sync else self.forward.no_sync()


def wrap(model: nn.Module, dist: Dist, device: torch.device, sync_batchnorm: bool = False,
         pipeline: Any = None) -> Wrapped:
    """DDP, FSDP2, tensor or pipeline parallel under torchrun; the bare model in a single process.
    `pipeline`: ([distributed] section, train.batch_size, loss function), for pipeline_stages > 1."""
    comm = CommClock()
    if not dist.active:
        return Wrapped(model, model, comm, dist)
    if dist.pp > 1:
        from engine.parallel.pipeline import rank_module

        d, batch, loss_fn = pipeline
        model, views = rank_module(model, dist.pp_rank, dist.pp, d.stages_per_rank, d.pipeline_split)
        model = model.to(device)  # in place: the views share its layers
    if dist.tp > 1:
        from engine.parallel.tensor import parallelize

        parallelize(model, dist.mesh["tp"], dist.tp)
    if dist.sharded and dist.dp_world > 1:
        from torch.distributed.fsdp import fully_shard

        mesh = {"mesh": dist.mesh["dp"]} if dist.mesh is not None else {}
        for unit in _units(model):  # each parameterized block is a unit; then the root
            fully_shard(unit, **mesh)
        fully_shard(model, **mesh)
    if dist.pp > 1:
        from engine.parallel.pipeline import Pipeline

        p = d.pipeline_stages
        micro = d.microbatches or (2 * p if batch % (2 * p) == 0 else p)
        stages = Pipeline(views, dist.pp_rank, p, device, dist.mesh["pp"].get_group(), micro,
                          d.pipeline_schedule, loss_fn)
        return Wrapped(model, stages, comm, dist, stages)
    if dist.sharded:
        return Wrapped(model, model, comm, dist)
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=ids)

    def timed_allreduce(state, bucket):  # noqa: ANN001 - DDP checks the annotations
        # The last bucket is launched when the backward computation is done; whatever
        # backward() waits after that is communication that did not overlap compute.
        comm.launched = time.perf_counter()
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, timed_allreduce)
    return Wrapped(model, ddp, comm, dist)


def _units(model: nn.Module):
    """FSDP's units: the model's parameterized children, and the members of a container of blocks
    (a transformer's ModuleDict of layers has no forward of its own)."""
    for child in model.children():
        members = child.children() if isinstance(child, (nn.ModuleDict, nn.ModuleList)) else [child]
        for unit in members:
            if any(p.requires_grad for p in unit.parameters()):
                yield unit


def grad_scaler(enabled: bool, dist: Dist, device: torch.device) -> Any:
    """fp16's loss scaler; FSDP's shards need one that agrees on inf/NaN across ranks."""
    if enabled and dist.sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type)
    return torch.amp.GradScaler(device.type, enabled=enabled)


def check_replicas(model: nn.Module, dist: Dist) -> tuple[str, str] | None:
    """Under DDP, whether every rank holds the same weights at the end, as (level, message):
    a cheap guard against a rank that silently trained on something else."""
    if not dist.replicated:
        return None
    flat = torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])
    digest = [float(flat.double().sum()), float(flat.double().abs().sum()), float(flat.double().square().sum())]
    high, low = dist.agree_max(digest), dist.agree_max([-v for v in digest])
    if all(h == -lo for h, lo in zip(high, low)):
        return "info", f"DDP replicas agree: {flat.numel():,} parameters identical on {dist.world} ranks"
    return "warning", (f"DDP replicas differ across the {dist.world} ranks at the end of training: "
                       "check for rank-dependent code in the model")
