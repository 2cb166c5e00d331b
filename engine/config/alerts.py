"""[alerts]: what is worth telling someone while a run trains, and who to tell."""

from __future__ import annotations

import shlex
from typing import Optional

from pydantic import Field, field_validator

from engine.config.base import Int, Section


class AlertsConfig(Section):
    """Alerts: one event kind (`alert`), shown by the cockpit, printed headless, and passed to `command`."""

    command: Optional[str] = Field(
        None, description="A command that gets each alert as one JSON object on standard input (run without a "
        "shell, split like a shell line; e.g. 'python3 notify.py'); its output goes to engine.log")
    loss_spike: bool = Field(True, description="Alert when the loss jumps far above its own recent history")
    loss_spike_z: float = Field(
        8.0, gt=0, description="A loss spike: the logged loss this many robust standard deviations (median "
        "absolute deviation x 1.4826) above the median of the last 50 logged losses")
    throughput_drop: bool = Field(True, description="Alert when samples/s falls well below the run's own baseline")
    throughput_drop_ratio: float = Field(
        0.5, gt=0, lt=1, description="A throughput drop: three logging steps in a row below this share of the "
        "median samples/s of the session's logging steps 5 to 20")
    straggler: bool = Field(True, description="Alert when one rank works much longer per step than the others")
    straggler_ratio: float = Field(
        1.5, gt=1, description="A straggler: a rank whose busy time per micro-batch (data, copy, compute, "
        "optimizer) passes this many times the median of the other ranks'")
    straggler_steps: Int = Field(
        3, ge=1, description="... for this many logging steps in a row")
    straggler_min_s: float = Field(
        0.005, ge=0, description="... and by at least this many seconds a micro-batch (a millisecond or two "
        "between fast ranks is noise, not a straggler)")

    hang: bool = Field(True, description="Alert when the ranks stand still and one of them is the reason "
                       "(several processes; after distributed.hang_warn_s)")
    stall: bool = Field(True, description="Alert when no step finishes for much longer than usual")
    stall_factor: float = Field(
        10.0, gt=1, description="A stall: no step for this many times the median step time (of the last 50)")
    stall_min_s: float = Field(30.0, gt=0, description="... and for at least this many seconds")
    disk_full: bool = Field(True, description="Alert when the disk under the checkpoints is nearly full")
    disk_free_checkpoints: float = Field(
        3.0, gt=0, description="Nearly full: room for fewer than this many more checkpoints of the newest one's size")
    gpu: bool = Field(True, description="Alert on GPU throttling (thermal, power brake, hardware slowdown) and on "
                      "new uncorrected ECC errors and critical XID errors, from each rank's NVML readings")

    @field_validator("command")
    @classmethod
    def _splits(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a command line ({exc})") from None
        if not words:
            raise ValueError("an empty command; leave alerts.command unset for none")
        return value
