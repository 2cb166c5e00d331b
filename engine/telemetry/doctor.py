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
        """What the step-time pane shows and what the cockpit's f says: a value to set (f sets it),
        or the remedy, which `nothing_to_change` makes say plainly that f has nothing to apply."""
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
            cpus: int | None = None, precision: str | None = None, bf16: bool = False,
            conv: bool = False, channels_last: bool = False, compile: bool = False,
            microbatches: int | None = None) -> tuple[str, Any, Any] | None:
    """(field, current value, new value) the doctor names for a verdict, or None (then
    `nothing_to_change` says why, in words).

    input: data.num_workers = the CPU count minus one (the trainer's own), at most MAX_WORKERS;
    once that many, data.pin_memory = true on a GPU. communication: the largest batch that fits,
    from the measured peak memory (a GPU's allocator peak; the batch scales it linearly), rounded
    down to a multiple of 8. compute (given `precision`): on a GPU, fp32 -> bf16 (fp16 where the
    GPU has no bf16), then channels_last for a conv net, then compile; on a CPU, fp32 -> bf16 only
    where the CPU computes bf16 natively (`bf16`), else nothing. bubble (given `microbatches`):
    twice the micro-batches, else the next count that divides the batch."""
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
    if bound == "compute" and precision is not None:
        if precision == "fp32" and (on_gpu or bf16):
            return "train.precision", precision, "bf16" if bf16 else "fp16"
        if on_gpu and conv and not channels_last:
            return "train.channels_last", False, True
        if on_gpu and not compile:
            return "train.compile", False, True
    if bound == "bubble" and microbatches:
        more = [m for m in range(microbatches + 1, batch_size + 1) if batch_size % m == 0]
        if more:
            return "distributed.microbatches", microbatches, 2 * microbatches if 2 * microbatches in more else more[0]
    return None


def nothing_to_change(bound: str, num_workers: int, pin_memory: bool, batch_size: int, on_gpu: bool,
                      precision: str | None = None, microbatches: int | None = None, **_: Any) -> str:
    """The plain words for a verdict `suggest` names no value for: why nothing in the config will
    help on this device (or, for communication, why the choice is the user's)."""
    if bound == "compute":
        if not on_gpu and precision == "fp32":
            return ("nothing in the config will speed this up on this CPU: it has no native bf16 "
                    "(train.precision = 'bf16' would be emulated, and slower); a GPU would")
        if not on_gpu:
            return f"nothing more in the config will speed this up on this CPU (train.precision is already {precision!r})"
        return ("nothing more in the config will speed this up on this GPU (reduced precision, channels_last "
                "and compile are on): a faster GPU or a smaller model would")
    if bound == "input":
        pinned = " and data.pin_memory = true" if on_gpu and pin_memory else ""
        return (f"nothing more in the config will help on this machine: data.num_workers is already {num_workers}"
                f"{pinned}; cache decoded samples or simplify augmentation in the data itself")
    if bound == "communication":
        return ("no value to name: a larger train.batch_size or train.grad_accum_steps synchronizes less often, "
                "but changes the effective batch (and the learning rate it needs); choose it yourself")
    if bound == "bubble":
        return (f"nothing more in the config will help: distributed.microbatches = {microbatches} already splits "
                f"the batch of {batch_size} as finely as it divides; fewer pipeline stages would")
    return "nothing in the config will help"


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


