"""App-wide messages, named as facts. High-rate ones coalesce so a slow terminal drops stale samples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message


@dataclass
class HistoryUpdated(Message):
    """New events were folded into the run's history (coalesced: only the newest matters)."""

    run: str
    kinds: frozenset[str]
    replaying: bool = False

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HistoryUpdated) and message.run == self.run


@dataclass
class CheckpointSaved(Message):
    """The engine confirmed a checkpoint."""

    step: int
    path: str
    bytes: int | None
    seconds: float


@dataclass
class CommandAnswered(Message):
    """A control command got its reply (ok or not)."""

    cmd: str
    reply: dict[str, Any]


@dataclass
class EngineVanished(Message):
    """The engine process is gone without writing a final state."""

    run: str
    exit_code: int | None
