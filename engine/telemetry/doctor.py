"""The bottleneck doctor: where each step's time goes, over a rolling window, and what to change.

Standard library only: it works on the step timings the loop already measures.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Any

#: Share of a step above which a part is "the" bottleneck.
THRESHOLD = 0.3

REMEDIES = {
    "input": ("data.num_workers", "raise data.num_workers (and set data.pin_memory = true on a GPU); "
              "cache decoded samples or simplify augmentation"),
    "communication": ("train.grad_accum_steps", "raise train.grad_accum_steps or the batch size so "
                      "gradients are synchronized less often"),
    "compute": ("train.precision", "use train.precision = 'bf16' (or 'fp16'), train.channels_last = true "
                "for conv nets, and train.compile = true"),
    "bubble": ("distributed.microbatches", "raise distributed.microbatches (a P-stage pipeline idles about "
               "(P - 1) / (microbatches + P - 1) of each step) and use distributed.pipeline_schedule = '1f1b'"),
}


@dataclass
class Diagnosis:
    """One verdict."""

    bound: str          # input, communication, bubble (a pipeline's idle stages) or compute
    share: float        # share of the step spent in that part
    field: str          # the config field to change
    remedy: str
    value: Any = None   # what to set it to (None: no value to name), see suggest()
    current: Any = None  # its value now

    def message(self) -> str:
        if self.value is not None:
            return (f"{self.bound}-bound: {self.share:.0%} of each step; set {self.field} = "
                    f"{_toml(self.value)} (now {_toml(self.current)}; f in the cockpit applies it)")
        return f"{self.bound}-bound: {self.share:.0%} of each step; {self.remedy}"


#: At most this many loader workers are suggested (beyond it, more processes rarely help a loader).
MAX_WORKERS = 8
#: Share of the device's memory a suggested batch may fill (the rest is headroom).
MEMORY_HEADROOM = 0.85


def _toml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


def suggest(bound: str, num_workers: int, pin_memory: bool, batch_size: int, on_gpu: bool,
            mem_peak_bytes: int | None = None, mem_total_bytes: int | None = None,
            cpus: int | None = None) -> tuple[str, Any, Any] | None:
    """(field, current value, new value) the doctor names for a verdict, or None.

    input: data.num_workers = the CPU count minus one (the trainer's own), at most MAX_WORKERS;
    once that many, data.pin_memory = true on a GPU. communication: the largest batch that fits,
    from the measured peak memory (a GPU's allocator peak; the batch scales it linearly), rounded
    down to a multiple of 8."""
    if bound == "input":
        workers = max(1, min(MAX_WORKERS, (cpus if cpus is not None else os.cpu_count() or 1) - 1))
        if num_workers < workers:
            return "data.num_workers", num_workers, workers
        if on_gpu and not pin_memory:
            return "data.pin_memory", False, True
        return None
    if bound == "communication" and on_gpu and mem_peak_bytes and mem_total_bytes:
        fits = int(batch_size * mem_total_bytes * MEMORY_HEADROOM / mem_peak_bytes)
        fits = fits // 8 * 8 if fits >= 16 else fits
        if fits > batch_size:
            return "train.batch_size", batch_size, fits
    return None


class Doctor:
    """Keeps the last `window` steps' timings and gives a verdict when it changes."""

    def __init__(self, window: int = 50):
        self.parts: deque[tuple[float, float, float, float]] = deque(maxlen=window)
        self.last: str | None = None

    def add(self, data_s: float, compute_s: float, comm_s: float, bubble_s: float = 0.0) -> None:
        """One step's (or one logging interval's average) timings."""
        self.parts.append((data_s, compute_s, comm_s, bubble_s))

    def diagnose(self) -> Diagnosis | None:
        """The current verdict over the window (None before any timing)."""
        data, compute, comm, bubble = (sum(p[i] for p in self.parts) for i in range(4))
        total = data + compute + comm + bubble
        if total <= 0:
            return None
        if data / total >= THRESHOLD:
            bound, share = "input", data / total
        elif comm / total >= THRESHOLD:
            bound, share = "communication", comm / total
        elif bubble / total >= THRESHOLD:
            bound, share = "bubble", bubble / total
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


