"""The bottleneck doctor: where each step's time goes, over a rolling window, and what to change.

Standard library only: it works on the step timings the loop already measures.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: Share of a step above which a part is "the" bottleneck.
THRESHOLD = 0.3

REMEDIES = {
    "input": ("data.num_workers", "raise data.num_workers (and set data.pin_memory = true on a GPU); "
              "cache decoded samples or simplify augmentation"),
    "communication": ("train.grad_accum_steps", "raise train.grad_accum_steps or the batch size so "
                      "gradients are synchronized less often"),
    "compute": ("train.precision", "use train.precision = 'bf16' (or 'fp16'), train.channels_last = true "
                "for conv nets, and train.compile = true"),
}


@dataclass
class Diagnosis:
    """One verdict."""

    bound: str          # input, communication or compute
    share: float        # share of the step spent in that part
    field: str          # the config field to change
    remedy: str

    def message(self) -> str:
        return f"{self.bound}-bound: {self.share:.0%} of each step; {self.remedy}"


class Doctor:
    """Keeps the last `window` steps' timings and gives a verdict when it changes."""

    def __init__(self, window: int = 50):
        self.parts: deque[tuple[float, float, float]] = deque(maxlen=window)
        self.last: str | None = None

    def add(self, data_s: float, compute_s: float, comm_s: float) -> None:
        """One step's (or one logging interval's average) timings."""
        self.parts.append((data_s, compute_s, comm_s))

    def diagnose(self) -> Diagnosis | None:
        """The current verdict over the window (None before any timing)."""
        data, compute, comm = (sum(p[i] for p in self.parts) for i in range(3))
        total = data + compute + comm
        if total <= 0:
            return None
        if data / total >= THRESHOLD:
            bound, share = "input", data / total
        elif comm / total >= THRESHOLD:
            bound, share = "communication", comm / total
        else:
            bound, share = "compute", compute / total
        field, remedy = REMEDIES[bound]
        return Diagnosis(bound, share, field, remedy)

    def changed(self) -> Diagnosis | None:
        """The verdict, only when it differs from the last one returned."""
        verdict = self.diagnose()
        if verdict is None or verdict.bound == self.last:
            return None
        self.last = verdict.bound
        return verdict


