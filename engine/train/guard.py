"""Divergence guard: a non-finite loss or weights end the run before they reach a checkpoint.

fp32 and bf16 train on through a NaN; fp16's scaler skips such steps (and counts them). The
loss is checked where the loop already reads it (the logging step), and the loss and weights
again before every save, so a diverged run fails with the step and the last good checkpoint
named, and `keep_last` never prunes the last finite checkpoints for NaN ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from engine.parallel.dist import Dist


class Diverged(Exception):
    """Training produced a non-finite loss or weights: the run fails (exit 1), nothing is saved."""


def weights_finite(model: nn.Module) -> bool:
    """True when every parameter and buffer is finite (one host-device sync; used before saves)."""
    tensors = [getattr(t, "to_local", lambda t=t: t)() for t in (*model.parameters(), *model.buffers())]
    flags = [t.isfinite().all() for t in tensors if t.is_floating_point()]  # FSDP: this rank's shards
    return bool(torch.stack(flags).all().item()) if flags else True


def finite(value: float | None) -> bool:
    """None (nothing to check) or a finite number."""
    return value is None or math.isfinite(value)


class DivergenceGuard:
    """Checks the loss and the weights; raises Diverged naming the step and the last good checkpoint."""

    def __init__(self, model: nn.Module, dist: Dist, precision: str, last_good: Callable[[], Path | None]):
        self.model, self.dist, self.precision, self.last_good = model, dist, precision, last_good
        # fp16's scaler skips a step with inf/NaN gradients itself, so its loss may be inf once
        self.checks_loss = precision != "fp16"

    def loss(self, loss: float | None, step: int) -> None:
        """At a logging step (the loss is already reduced over the ranks: all stop here)."""
        if self.checks_loss and not finite(loss):
            raise Diverged(self.message(f"the loss is {loss}", step))

    def before_save(self, pending_loss: float | None, step: int) -> None:
        """Before a save: the loss not yet logged, and every weight, must be finite on every
        rank (agreed, so that all ranks fail together rather than wait for each other)."""
        bad = [float(self.checks_loss and not finite(pending_loss)), float(not weights_finite(self.model))]
        bad_loss, bad_weights = (v > 0 for v in self.dist.agree_max(bad))
        if bad_loss or bad_weights:
            raise Diverged(self.message("the loss is not finite" if bad_loss else "the weights are not finite", step))

    def message(self, what: str, step: int) -> str:
        """What went wrong, where, and what is left to resume from."""
        latest = self.last_good()
        good = (f"the last good checkpoint is {latest.name}; resume from it with a lower optim.lr "
                "(or train.grad_clip_norm set)") if latest else "no checkpoint was written before it"
        return (f"training diverged: {what} at step {step} (train.precision = {self.precision!r}); "
                f"no checkpoint was written from it; {good}")
