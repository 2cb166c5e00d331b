"""Tasks: what a batch means to the model, as a loss and its named parts.

The loop never computes a loss itself: it calls ``task(model, batch)`` and backpropagates
``StepOutput.loss``. The parts (``{"ce": ...}``; a distillation task adds ``"kd"``) are
detached tensors that the step meter sums without a host-device sync and that telemetry
writes as ``loss/<part>``. A new objective is a new task, not a branch in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class StepOutput:
    """One micro-batch's result: the loss to backpropagate, its named parts, the logits."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


class Classification:
    """Cross-entropy on class labels (with optional label smoothing); one part, ``ce``."""

    name = "classification"

    def __init__(self, label_smoothing: float = 0.0):
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def __call__(self, model: Callable[[torch.Tensor], torch.Tensor], batch: tuple[Any, Any]) -> StepOutput:
        x, y = batch
        logits = model(x)
        loss = self.loss_fn(logits, y)
        return StepOutput(loss, {"ce": loss.detach()}, logits)

    @staticmethod
    def metric_sums(logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Validation sums over a batch (device tensors): summed loss and correct answers."""
        return {"loss": nn.functional.cross_entropy(logits.float(), y, reduction="sum"),
                "accuracy": (logits.argmax(1) == y).sum()}


def build_task(cfg: Any) -> Classification:
    """The task a config asks for (classification is the only one so far)."""
    return Classification(cfg.train.label_smoothing)
