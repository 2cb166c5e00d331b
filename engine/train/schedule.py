"""Learning-rate schedules: each a pure function of the optimizer step.

Because the rate depends only on (step, total steps, peak lr), resuming needs no scheduler
state beyond the step and the peak, and every schedule is unit-testable on its own.
"""

from __future__ import annotations

import math

from engine.config.schema import ScheduleConfig


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: (step+1)/warmup during the first warmup_steps steps, then 1."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def cosine(step: int, total: int, warmup_steps: int, min_ratio: float) -> float:
    """Cosine decay from 1 to min_ratio over the steps after warm-up."""
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps)
    span = max(1, total - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def step_decay(step: int, warmup_steps: int, step_size: int, gamma: float) -> float:
    """Multiply by gamma every step_size steps (after warm-up)."""
    return warmup_factor(step, warmup_steps) * gamma ** (step // step_size)


def one_cycle(step: int, total: int, pct_start: float, div: float, final_div: float) -> float:
    """Cosine rise from 1/div to 1 over pct_start of the steps, then cosine fall to 1/(div*final_div)."""
    start, end = 1.0 / div, 1.0 / (div * final_div)
    peak_step = max(1, int(pct_start * total))
    if step < peak_step:
        return _cos_interp(start, 1.0, step / peak_step)
    return _cos_interp(1.0, end, min(1.0, (step - peak_step) / max(1, total - peak_step)))


def _cos_interp(a: float, b: float, t: float) -> float:
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * t))


def lr_at(step: int, total_steps: int, peak_lr: float, cfg: ScheduleConfig) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`."""
    if cfg.name == "constant":
        factor = warmup_factor(step, cfg.warmup_steps)
    elif cfg.name == "cosine":
        factor = cosine(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    elif cfg.name == "step":
        factor = step_decay(step, cfg.warmup_steps, cfg.step_size, cfg.gamma)
    else:
        factor = one_cycle(step, total_steps, cfg.pct_start, cfg.div_factor, cfg.final_div_factor)
    return peak_lr * factor


def peak_for(lr: float, step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """The peak that makes `lr` the rate at `step`, keeping the schedule's shape (`set`)."""
    factor = lr_at(step, total_steps, 1.0, cfg)
    return lr / factor if factor > 1e-12 else lr


def highest_ahead(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """The largest factor of the peak the schedule reaches from `step` to the end of the run.

    Every schedule rises (warm-up, or onecycle's first part) and then only falls, so the
    highest point ahead is where the rise ends, or the run does, or the current step. For
    the step schedule during warm-up this is an upper bound (its decays only lower it).
    """
    last = max(step, total_steps - 1)
    now = lr_at(step, total_steps, 1.0, cfg)
    if cfg.name == "onecycle":
        peak = min(max(step, max(1, int(cfg.pct_start * total_steps))), last)
        return max(now, lr_at(peak, total_steps, 1.0, cfg))
    if step >= cfg.warmup_steps:
        return now
    rise = warmup_factor(min(cfg.warmup_steps - 1, last), cfg.warmup_steps)
    if cfg.name == "step":
        rise *= cfg.gamma ** (step // cfg.step_size)
    return max(now, rise)


def warmup_warning(cfg: ScheduleConfig, total_steps: int) -> str | None:
    """Words for a warm-up that outlasts the run (the peak rate would never be reached)."""
    if cfg.name == "onecycle" or cfg.warmup_steps <= total_steps:  # the last step reaches the peak
        return None
    return (f"schedule.warmup_steps = {cfg.warmup_steps} is longer than the run's {total_steps} steps: "
            f"the learning rate never reaches optim.lr (it ends at {cfg.warmup_steps and total_steps / cfg.warmup_steps:.3g}x "
            "of it); lower schedule.warmup_steps")


def highest_if_set(lr: float, step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """The highest rate the schedule would reach from `step` on if `lr` were set there."""
    return peak_for(lr, step, total_steps, cfg) * highest_ahead(step, total_steps, cfg)
