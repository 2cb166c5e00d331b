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


#: Dense bf16/fp16 tensor-core peak, TFLOP/s, by GPU name fragment (override: train.peak_tflops).
PEAK_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0,
    "A10": 125.0, "V100": 125.0, "T4": 65.0, "RTX 4090": 165.0, "RTX 3090": 71.0,
}


def peak_tflops(device_name: str) -> float | None:
    """The table's peak for a device name, or None when it is not listed."""
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


def flops_per_sample(model, sample_shape: tuple[int, ...]) -> float | None:
    """FLOPs of one forward and backward pass per sample, counted by torch on a meta-device copy.

    The copy lives on the meta device: no memory, no compute, and no RNG draws, so counting
    leaves the run exactly as it was. None when the model cannot be traced that way.
    """
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.random.fork_rng(devices=[]):
            meta = copy.deepcopy(model).to("meta")
            x = torch.empty((2, *sample_shape), device="meta")
            with FlopCounterMode(display=False) as counter:
                meta(x).float().sum().backward()
        return counter.get_total_flops() / 2
    except Exception:  # noqa: BLE001 - exotic models simply get no MFU
        return None
