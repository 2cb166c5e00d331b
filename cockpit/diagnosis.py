"""Where each step's time goes, and what to change when the GPU sits idle (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The article's rule: utilization under this for LOW_UTIL_SECONDS while training is a problem.
LOW_UTIL_PERCENT = 30.0
LOW_UTIL_SECONDS = 30.0


@dataclass
class Split:
    """Shares of one step's time (0..1)."""

    data: float
    compute: float
    optim: float
    comm: float
    bubble: float = 0.0  # a pipeline's stages waiting for each other


def split(step_event: dict[str, Any]) -> Split | None:
    """The step-time split from a step event, or None if it carries no timings."""
    keys = ("time_data_s", "time_h2d_s", "time_compute_s", "time_optim_s", "time_comm_s", "time_bubble_s")
    data, h2d, *rest = (float(v) if isinstance(v := step_event.get(k), (int, float)) else 0.0 for k in keys)
    values = [data + h2d, *rest]  # the copy to the device is part of feeding the model
    total = sum(values)
    if total <= 0:
        return None
    return Split(*(v / total for v in values))


def diagnose(s: Split | None) -> str:
    """A one-line diagnosis of a step-time split."""
    if s is None:
        return "no step timings yet"
    if s.data >= 0.3:
        return f"input-bound: {s.data:.0%} of each step waits for data"
    if s.comm >= 0.3:
        return f"communication-bound: {s.comm:.0%} communicating"
    if s.bubble >= 0.3:
        return f"bubble-bound: {s.bubble:.0%} of each step a pipeline stage waits; raise distributed.microbatches"
    return f"compute-bound: {s.compute + s.optim:.0%} computing"


def low_util_advice(s: Split | None, step_seconds: float | None) -> str:
    """The likely cause of a starved GPU, and the config field to change."""
    if s is not None and s.data >= 0.3:
        return (f"GPU under {LOW_UTIL_PERCENT:.0f}% for {LOW_UTIL_SECONDS:.0f} s: {s.data:.0%} of each "
                "step waits for data. Raise data.num_workers and set data.pin_memory = true.")
    if step_seconds is not None and step_seconds < 0.02:
        return (f"GPU under {LOW_UTIL_PERCENT:.0f}% for {LOW_UTIL_SECONDS:.0f} s with very short steps "
                f"({step_seconds * 1000:.1f} ms): raise train.batch_size.")
    return (f"GPU under {LOW_UTIL_PERCENT:.0f}% for {LOW_UTIL_SECONDS:.0f} s: check data.num_workers "
            "and train.batch_size.")


class LowUtilWatch:
    """Raises a warning once utilization has stayed low for LOW_UTIL_SECONDS while training."""

    def __init__(self) -> None:
        self.low_since: float | None = None
        self.warned = False

    def update(self, now: float, util: float | None, training: bool) -> bool:
        """Feed one sample; True exactly when the warning should be shown."""
        if not training or util is None or util >= LOW_UTIL_PERCENT:
            self.low_since, self.warned = None, False
            return False
        if self.low_since is None:
            self.low_since = now
        if not self.warned and now - self.low_since >= LOW_UTIL_SECONDS:
            self.warned = True
            return True
        return False
