"""Pipeline parallel: the model cut into stages, one per rank of the mesh's "pp" dimension.

torch's own machinery does the work (`torch.distributed.pipelining`): each rank builds the
whole model, keeps its stage's part (the layout torchtitan uses: a transformer's blocks are a
ModuleDict keyed by index, and the embeddings sit on the first stage, the final norm and head on
the last), and wraps it in a `PipelineStage`; a `ScheduleGPipe` or `Schedule1F1B` splits each
batch into `microbatches`, sends activations forward and gradients back between neighbours,
and scales the gradients by 1 / microbatches, so a step's gradient is the batch's mean as in
one process. Evaluation runs the same schedule forward only (`schedule.eval`).

Stages are cut at module names (`pipeline_split = ["blocks.2"]`: the second stage starts
there) or, by default, balanced by parameter count. A model can be split when it is the
built-in gpt (a ModuleDict of blocks) or an `nn.Sequential`.

The interleaved schedule (`pipeline_schedule = "interleaved1f1b"`, torch's
`ScheduleInterleaved1F1B`) gives each rank `stages_per_rank` = V stages, looped: with P ranks the
model is cut into P x V stages and rank r holds stages r, r + P, r + 2P, ... Each rank keeps one
module with all its stages' layers (module names as in the whole model: that is what is
optimized and checkpointed) and hands the schedule one view of it per stage, which shares its
layers. The bubble shrinks to (P - 1) / (V x M + P - 1), at the price of V times the point-to-point
messages.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from itertools import accumulate
from typing import Any

import torch
from torch import nn

from contracts.errors import BadInput

SCHEDULES = ("gpipe", "1f1b", "interleaved1f1b")


def _parts(model: nn.Module) -> tuple[str, list[tuple[str, nn.Module]]]:
    """The model's cuttable sequence: (prefix, [(name, module)]), or BadInput saying why not."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleDict):
        return "blocks.", list(blocks.items())
    if isinstance(model, nn.Sequential):
        return "", list(model.named_children())
    raise BadInput(f"distributed.pipeline_stages: {type(model).__name__} cannot be split into stages (a pipeline "
                   "needs the built-in gpt, whose blocks are a ModuleDict, or an nn.Sequential)")


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bounds(model: nn.Module, stages: int, split: list[str]) -> list[int]:
    """Indices into the cuttable sequence where each stage starts, and its end."""
    prefix, parts = _parts(model)
    names = [prefix + n for n in dict(parts)]
    if stages > len(parts):
        raise BadInput(f"distributed.pipeline_stages = {stages}: more stages than the model's {len(parts)} "
                       f"{'blocks' if prefix else 'layers'}")
    if split:
        if len(split) != stages - 1:
            raise BadInput(f"distributed.pipeline_split = {split!r}: {stages} stages need {stages - 1} split "
                           "points (the module each later stage starts at)")
        missing = [s for s in split if s not in names]
        if missing:
            raise BadInput(f"distributed.pipeline_split = {split!r}: {missing[0]!r} names no module to split at "
                           f"(the model's are {', '.join(names[:8])}{' ...' if len(names) > 8 else ''})")
        starts = [names.index(s) for s in split]
        if starts != sorted(set(starts)) or starts[0] == 0:
            raise BadInput(f"distributed.pipeline_split = {split!r}: split points must be in model order, "
                           "after the first module")
        return [0, *starts, len(parts)]
    weights = list(accumulate(_params(m) for _, m in parts))
    cuts = [0]
    for k in range(1, stages):  # stage k starts where the parameters so far pass k / stages of them
        start = next(j + 1 for j, w in enumerate(weights) if w >= weights[-1] * k / stages)
        cuts.append(min(max(start, cuts[-1] + 1), len(parts) - (stages - k)))
    return [*cuts, len(parts)]


def rank_stages(rank: int, ranks: int, per_rank: int) -> list[int]:
    """The stages a pipeline rank holds, looped: r, r + P, r + 2P, ..."""
    return [rank + k * ranks for k in range(per_rank)]


def stage_module(model: nn.Module, stage: int, stages: int, split: list[str]) -> nn.Module:
    """This stage's part of `model` (a copy; module names as in the whole model)."""
    prefix, parts = _parts(model)
    b = bounds(model, stages, split)
    return _pruned(model, {n for n, _ in parts[b[stage]:b[stage + 1]]}, stage == 0, stage == stages - 1)


def rank_module(model: nn.Module, rank: int, ranks: int, per_rank: int,
                split: list[str]) -> tuple[nn.Module, list[nn.Module]]:
    """This rank's part of `model` (a copy holding every one of its stages' layers, named as in
    the whole model) and the module each of its stages runs (the part itself for one stage a
    rank; else views that share its layers)."""
    total = ranks * per_rank
    mine = rank_stages(rank, ranks, per_rank)
    if per_rank == 1:
        part = stage_module(model, rank, total, split)
        return part, [part]
    prefix, parts = _parts(model)
    b = bounds(model, total, split)
    chunks = [[n for n, _ in parts[b[s]:b[s + 1]]] for s in mine]
    part = _pruned(model, {n for c in chunks for n in c}, 0 in mine, total - 1 in mine)
    return part, [_view(part, prefix, c, s == 0, s == total - 1) for s, c in zip(mine, chunks)]


def _pruned(model: nn.Module, keep: set[str], first: bool, last: bool) -> nn.Module:
    """A copy of `model` with only the cuttable parts in `keep` (and the embeddings if it holds the
    first stage, the final norm and head if it holds the last)."""
    prefix, parts = _parts(model)
    if not prefix:
        return nn.Sequential(OrderedDict((n, copy.deepcopy(m)) for n, m in parts if n in keep))
    part = copy.deepcopy(model)
    for name in [n for n, _ in parts if n not in keep]:
        del part.blocks[name]
    if not first:
        part.embed = part.pos = None
    if not last:
        part.norm = part.head = None
    return part


def _view(part: nn.Module, prefix: str, names: list[str], first: bool, last: bool) -> nn.Module:
    """A module that runs only `names` of `part`, sharing its layers (and their parameters)."""
    if not prefix:
        return nn.Sequential(OrderedDict((n, part._modules[n]) for n in names))
    view = copy.copy(part)
    for key, value in vars(part).items():  # its own parameter, module and hook tables
        if isinstance(value, dict):
            view.__dict__[key] = type(value)(value)
    view.blocks = nn.ModuleDict(OrderedDict((n, part.blocks[n]) for n in names))
    if not first:
        view.embed = view.pos = None
    if not last:
        view.norm = view.head = None
    return view


class StageClock:
    """This stage's busy time, from torch's module and autograd hooks: forward (pre/post hooks
    on the stage), backward (from the moment its output's gradient arrives to the moment every
    parameter of the stage has its gradient). The rest of a schedule's step is the bubble:
    waiting for a neighbour's activations or gradients."""

    def __init__(self, module: nn.Module):
        self.forward = self.backward = 0.0
        self._started = 0.0
        self._pending: list[float] = []  # backward start times, in microbatch order
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            torch.autograd.graph.register_multi_grad_hook(params, self._backward_done, mode="all")

    def _pre(self, _module, _args) -> None:
        self._started = time.perf_counter()

    def _post(self, _module, _args, out) -> None:
        self.forward += time.perf_counter() - self._started
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(self._backward_begins)

    def _backward_begins(self, _grad) -> None:
        self._pending.append(time.perf_counter())

    def _backward_done(self, _grads) -> None:
        if self._pending:
            self.backward += time.perf_counter() - self._pending.pop(0)

    def take(self) -> tuple[float, float]:
        """(forward, backward) seconds since the last take."""
        times = (self.forward, self.backward)
        self.forward = self.backward = 0.0
        self._pending.clear()
        return times


class Clocks:
    """The StageClocks of a rank's stages, read together."""

    def __init__(self, modules: list[nn.Module]):
        self.clocks = [StageClock(m) for m in modules]

    def take(self) -> tuple[float, float]:
        times = [c.take() for c in self.clocks]
        return sum(f for f, _ in times), sum(b for _, b in times)


def ideal_bubble(stages: int, microbatches: int, per_rank: int = 1) -> float:
    """The idle share of a step with equal stages: (P - 1) / (V x M + P - 1) for P ranks of V
    stages each (V = 1: GPipe and 1F1B)."""
    return (stages - 1) / (per_rank * microbatches + stages - 1)


def check_torch(schedule: str = "1f1b") -> None:
    from torch.distributed.pipelining import schedules

    interleaved = schedule == "interleaved1f1b"
    kind = "PipelineScheduleMulti" if interleaved else "PipelineScheduleSingle"
    if not hasattr(getattr(schedules, kind, None), "eval") or (
            interleaved and not hasattr(schedules, "ScheduleInterleaved1F1B")):
        raise BadInput(f"distributed.pipeline_schedule = {schedule!r}: needs a torch whose pipeline schedules "
                       f"evaluate forward only ({kind}.eval); this is torch {torch.__version__}")


class Pipeline:
    """One rank's stage and schedule; `step` trains on a batch, `__call__` evaluates one."""

    def __init__(self, modules: list[nn.Module], rank: int, ranks: int, device: torch.device, group: Any,
                 microbatches: int, schedule: str, loss_fn: Any):
        """`modules`: what each of this rank's stages runs (rank_module's second half)."""
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

        per_rank = len(modules)
        total, ids = ranks * per_rank, rank_stages(rank, ranks, per_rank)
        self.first, self.last = 0 in ids, total - 1 in ids
        self.index, self.stages, self.per_rank, self.microbatches = rank, ranks, per_rank, microbatches
        self.clock = Clocks(modules)
        self.batch: int | None = None  # the training batch size: every batch through the stages has it
        stages = [PipelineStage(m, s, total, device, group=group) for m, s in zip(modules, ids)]
        kind = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved1f1b": ScheduleInterleaved1F1B}[schedule]
        held = stages if schedule == "interleaved1f1b" else stages[0]  # a multi-stage schedule takes the list
        self.schedule = kind(held, n_microbatches=microbatches, loss_fn=loss_fn)
        self.scoring = kind(held, n_microbatches=microbatches)  # evaluation: no loss, no target

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Forward and backward over the batch's microbatches: the last stage's losses and logits."""
        losses: list[torch.Tensor] = []
        self.batch = self.batch or len(x)
        out = self._run(self.schedule.step, x, y, losses)
        return losses, out

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        """Forward only: the logits on the last stage, None elsewhere. A batch shorter than the
        training batch is padded with copies of its last sample (their logits are dropped): the
        stages' buffers have the training shape."""
        n, full = len(x), self.batch or len(x)
        if n < full:
            x = torch.cat([x, x[-1:].expand(full - n, *x.shape[1:])])
        out = self._run(self.scoring.eval, x, None, None)
        return None if out is None else out[:n]

    def _run(self, fn: Any, x: torch.Tensor, y: torch.Tensor | None, losses: list | None) -> Any:
        args = (x,) if self.first else ()
        if self.last and y is not None:
            return fn(*args, target=y, losses=losses)
        out = fn(*args)
        return out if self.last else None
