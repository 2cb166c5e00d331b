"""Divergence guard: a non-finite loss or weights end the run before they reach a checkpoint.

fp32 and bf16 train on through a NaN; fp16's scaler skips such steps (and counts them). The
loss is checked where the loop already reads it (the logging step), and the loss and weights
again before every save, so a diverged run fails with the step and the last good checkpoint
named, and `keep_last` never prunes the last finite checkpoints for NaN ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn


class Diverged(Exception):
    """Training produced a non-finite loss or weights: the run fails (exit 1), nothing is saved."""


def weights_finite(model: nn.Module) -> bool:
    """True when every parameter and buffer is finite (one host-device sync; used before saves)."""
    tensors = [getattr(t, "to_local", lambda t=t: t)() for t in (*model.parameters(), *model.buffers())]
    flags = [t.isfinite().all() for t in tensors if t.is_floating_point()]  # FSDP: this rank's shards
    return bool(torch.stack(flags).all().item()) if flags else True


def diverged_message(what: str, step: int, precision: str, latest: Path | None) -> str:
    """What went wrong, where, and what is left to resume from."""
    good = (f"the last good checkpoint is {latest.name}; resume from it with a lower optim.lr "
            "(or train.grad_clip_norm set)") if latest else "no checkpoint was written before it"
    return (f"training diverged: {what} at step {step} (train.precision = {precision!r}); "
            f"no checkpoint was written from it; {good}")


def finite(value: float | None) -> bool:
    """None (nothing to check) or a finite number."""
    return value is None or math.isfinite(value)
