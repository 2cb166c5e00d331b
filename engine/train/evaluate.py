"""Evaluation as a free function of (model, loader, task, device, precision), and its hooks.

`evaluate` needs no Trainer, so a later `quantize` command can score a model the same way
the loop does. After each evaluation the loop hands (step, epoch, metrics) to every
registered hook; a hook may ask the run to stop (a sweep's pruner will).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch

from contracts.stops import Plan, Reason

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, precision: str) -> Any:
    """torch.autocast for fp16/bf16, nothing for fp32."""
    dtype = AMP_DTYPES.get(precision)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor], loader: Iterable, task: Any,
             device: torch.device, precision: str, prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
             valid: int | None = None, reduce: Callable[[list[float]], list[float]] = lambda v: v,
             between: Callable[[], None] = lambda: None) -> dict[str, float]:
    """The task's metrics over a whole loader: loss and top-1 accuracy for classification.

    `prepare` readies inputs on the device (normalization, memory format); `valid` is how many
    samples count (a sharded loader pads its end); `reduce` sums host numbers over ranks;
    `between` runs after each batch (the loop's spot check: it may raise to abandon the evaluation).
    """
    sums: dict[str, torch.Tensor] = {}
    total = 0
    for x, y in loader:
        x, y = prepare(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
        if logits is None:  # a pipeline stage other than the last: the last one scores the batch
            between()
            continue
        keep = len(y) if valid is None else min(len(y), valid - total)  # padding is at the end
        for name, value in task.metric_sums(logits[:keep], y[:keep]).items():
            sums[name] = sums[name] + value if name in sums else value
        total += keep
        between()
    if not sums:  # (a pipeline stage that scored nothing adds zeros, and no samples)
        sums = {name: torch.zeros((), device=device) for name in task.metric_names}
    names = list(sums)  # the task's order: every rank builds the same dict
    # .item() here is a host-device sync, once per evaluation
    reduced = reduce([float(sums[n].item()) for n in names] + [float(total)])
    count = reduced[-1]
    metrics = {n: v / count for n, v in zip(names, reduced[:-1])}
    derive = getattr(task, "derive", None)  # metrics made from the means (a language model's perplexity)
    return derive(metrics) if derive else metrics


@dataclass
class EvalVerdict:
    """A hook's answer: carry on (None) or stop the run for a reason."""

    reason: Reason
    why: str


class EvalHook(Protocol):
    """Called after each evaluation with (step, epoch, metrics); may ask to stop."""

    def __call__(self, step: int, epoch: int, metrics: dict[str, float]) -> EvalVerdict | None: ...


def improves(metrics: dict[str, float], best: float | None, metric: str | None) -> bool:
    """Whether these metrics beat the best so far by `metric` (val_accuracy: higher is better,
    val_loss: lower); False when no metric is tracked."""
    if metric is None:
        return False
    value = metrics[metric.removeprefix("val_")]
    return best is None or (value > best if metric == "val_accuracy" else value < best)


def hooks_plan(hooks: list[EvalHook], step: int, epoch: int, metrics: dict[str, float]) -> Plan:
    """What the hooks ask after an evaluation, as a plan (to be agreed across ranks)."""
    plan = Plan()
    for hook in hooks:
        verdict = hook(step, epoch, metrics)
        if verdict is not None and verdict.reason.stops:
            plan = plan.fold(Plan(verdict.reason, why=verdict.why))
    return plan
