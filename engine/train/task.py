"""Tasks: what a batch means to the model, as a loss and its named parts.

The loop never computes a loss itself: it calls ``task(model, batch)`` and backpropagates
``StepOutput.loss``. The parts (``{"ce": ...}``; a distillation task adds ``"kd"``) are
detached tensors that the step meter sums without a host-device sync and that telemetry
writes as ``loss/<part>``. A new objective is a new task, not a branch in the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from contracts.errors import BadInput


@dataclass
class StepOutput:
    """One micro-batch's result: the loss to backpropagate, its named parts, the logits."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


class Classification:
    """Cross-entropy on class labels (with optional label smoothing); one part, ``ce``."""

    name = "classification"
    metric_names = ("loss", "accuracy")

    def __init__(self, label_smoothing: float = 0.0):
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def pipeline_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss a pipeline's last stage computes from its output (the schedule calls it)."""
        return self.loss_fn(logits, y)

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


class NextToken(Classification):
    """Cross-entropy of next-token logits (B, T, vocab) against targets (B, T), averaged over tokens.

    Validation reports the mean loss per token, token accuracy and perplexity (exp of the loss;
    windows all have the same length, so a per-window mean summed over windows is a per-token mean).
    """

    name = "next_token"

    def pipeline_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits.flatten(0, 1), y.flatten())

    def __call__(self, model: Callable[[torch.Tensor], torch.Tensor], batch: tuple[Any, Any]) -> StepOutput:
        x, y = batch
        logits = model(x)
        loss = self.loss_fn(logits.flatten(0, 1), y.flatten())
        return StepOutput(loss, {"ce": loss.detach()}, logits)

    @staticmethod
    def metric_sums(logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        per_token = nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        return {"loss": per_token.view_as(y).mean(1).sum(),
                "accuracy": (logits.argmax(-1) == y).float().mean(1).sum()}

    @staticmethod
    def derive(metrics: dict[str, float]) -> dict[str, float]:
        """Perplexity from the mean loss (exp of the mean, not the mean of exps)."""
        return {**metrics, "perplexity": math.exp(min(metrics["loss"], 700.0))}


class Distillation(Classification):
    """Learn from a frozen teacher: alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE.

    Both sides go through log_softmax in fp32 (also under autocast), and the KL term uses
    reduction="batchmean", the true KL divergence per sample ("mean" would divide it by the
    number of classes too). T^2 keeps the soft term's gradients on the scale of the hard
    term's as T grows (Hinton et al., 2015). Parts: ``kd`` and ``ce``.
    """

    name = "distillation"

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float, label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha

    def __call__(self, model: Callable[[torch.Tensor], torch.Tensor], batch: tuple[Any, Any]) -> StepOutput:
        x, y = batch
        logits = model(x)
        with torch.no_grad():  # frozen, in eval mode: no graph, no BatchNorm updates
            teacher_logits = self.teacher(x)
        kd = kd_loss(logits, teacher_logits, self.temperature)
        ce = self.loss_fn(logits, y)
        loss = self.alpha * kd + (1 - self.alpha) * ce
        return StepOutput(loss, {"kd": kd.detach(), "ce": ce.detach()}, logits)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch, in fp32."""
    t = temperature
    log_p_student = nn.functional.log_softmax(student.float() / t, dim=1)
    log_p_teacher = nn.functional.log_softmax(teacher.float() / t, dim=1)
    return nn.functional.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


def build_task(cfg: Any, teacher: nn.Module | None = None) -> Classification:
    """The task a config asks for: classification, or distillation from `teacher`."""
    if cfg.data.name == "text":
        if cfg.distill.enabled:
            raise BadInput("distill.enabled = true with data.name = 'text': distillation is for classifiers")
        return NextToken(cfg.train.label_smoothing)
    if cfg.distill.enabled:
        if teacher is None:
            raise ValueError("distill.enabled = true: the teacher must be built first (load_teacher)")
        d = cfg.distill
        return Distillation(teacher, d.temperature, d.alpha, cfg.train.label_smoothing)
    return Classification(cfg.train.label_smoothing)
