"""App-wide messages, named as facts. High-rate ones coalesce so a slow terminal drops stale samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from cockpit.gpu import Device, HostSample


@dataclass
class HistoryUpdated(Message):
    """New events were folded into the run's history (coalesced: only the newest matters)."""

    run: str
    kinds: frozenset[str]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HistoryUpdated) and message.run == self.run


@dataclass
class CommandAnswered(Message):
    """A control command got its reply (ok or not)."""

    cmd: str
    reply: dict[str, Any]


@dataclass
class RunChosen(Message):
    """The person picked a run to follow (from the runs screen)."""

    run: Path


@dataclass
class EngineVanished(Message):
    """The engine process is gone without writing a final state."""

    run: str
    exit_code: int | None


@dataclass
class GpuSampled(Message):
    """NVML sampled every GPU (coalesced: a newer sample replaces one not yet shown)."""

    devices: list[Device]
    engine_pids: frozenset[int]  # the followed run's processes: its engine, or every rank

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GpuSampled)


@dataclass
class HostSampled(Message):
    """Without NVML: the engine process's CPU and memory were sampled (coalesced)."""

    sample: HostSample | None  # None: the engine process is not running here
    reason: str  # why there is no NVML

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HostSampled)


@dataclass
class GpuUnderused(Message):
    """The GPUs have stayed under the low-utilization mark while the run trains."""

    advice: str  # the likely cause and the config field to change
