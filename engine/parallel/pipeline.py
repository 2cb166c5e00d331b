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

SCHEDULES = ("gpipe", "1f1b")


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


def stage_module(model: nn.Module, stage: int, stages: int, split: list[str]) -> nn.Module:
    """This stage's part of `model` (a copy; module names as in the whole model)."""
    prefix, parts = _parts(model)
    b = bounds(model, stages, split)
    keep = {name for name, _ in parts[b[stage]:b[stage + 1]]}
    if not prefix:
        return nn.Sequential(OrderedDict((n, copy.deepcopy(m)) for n, m in parts if n in keep))
    part = copy.deepcopy(model)
    for name in [n for n, _ in parts if n not in keep]:
        del part.blocks[name]
    if stage > 0:
        part.embed = part.pos = None
    if stage < stages - 1:
        part.norm = part.head = None
    return part


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


def ideal_bubble(stages: int, microbatches: int) -> float:
    """The idle share of a GPipe or 1F1B step with equal stages: (P - 1) / (M + P - 1)."""
    return (stages - 1) / (microbatches + stages - 1)


def check_torch() -> None:
    from torch.distributed.pipelining import schedules

    if not hasattr(schedules.PipelineScheduleSingle, "eval"):
        raise BadInput(f"distributed.pipeline_stages: needs a torch whose pipeline schedules evaluate forward only "
                       f"(PipelineScheduleSingle.eval); this is torch {torch.__version__}")


class Pipeline:
    """One rank's stage and schedule; `step` trains on a batch, `__call__` evaluates one."""

    def __init__(self, module: nn.Module, stage: int, stages: int, device: torch.device, group: Any,
                 microbatches: int, schedule: str, loss_fn: Any):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        self.first, self.last = stage == 0, stage == stages - 1
        self.index, self.stages, self.microbatches = stage, stages, microbatches
        self.clock = StageClock(module)
        self.batch: int | None = None  # the training batch size: every batch through the stages has it
        self.stage = PipelineStage(module, stage, stages, device, group=group)
        kind = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
        self.schedule = kind(self.stage, n_microbatches=microbatches, loss_fn=loss_fn)
        self.scoring = kind(self.stage, n_microbatches=microbatches)  # evaluation: no loss, no target

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
