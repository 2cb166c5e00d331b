"""train.stop_at_target: an evaluation hook that finishes the run at the evaluation that reaches
train.target (state finished, exit 0; every rank computes the same reduced metrics, and the
verdict is agreed across ranks like any hook's)."""

from __future__ import annotations

from typing import Any

from contracts.stops import Reason
from engine.train.evaluate import EvalVerdict


class StopAtTarget:
    """`hook(step, epoch, metrics)`: EvalVerdict(TARGET_REACHED) once the target's metric meets it."""

    def __init__(self, target: Any):
        self.target = target  # engine.config.training.TargetConfig
        self.key = target.metric.removeprefix("val_")

    def __call__(self, step: int, epoch: int, metrics: dict[str, float]) -> EvalVerdict | None:
        value = metrics.get(self.key)
        if value is None or not self.target.met(value):
            return None
        sign = ">=" if self.target.up else "<="
        return EvalVerdict(Reason.TARGET_REACHED, f"target reached: {self.target.metric} {value:.4g} {sign} "
                                                   f"{self.target.value:g} at step {step}")
