"""Follow a run's events.jsonl: replay what is there, then yield new lines as they land.

Only complete lines are decoded; a partial last line waits for its newline. Reading the
history and following it share one file offset, so there is no gap and no duplicate between
the two.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from contracts.events import decode_event

try:  # a C decoder: 5x json's speed on a long history (bench/RESULTS.md); json if missing
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _fast_loads = None

#: A line longer than this is malformed (the engine never writes one); it is skipped.
MAX_LINE = 1 << 20


class EventFollower:
    """Reads new complete events from a growing file, starting at offset 0."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.inode: int | None = None

    def read(self, max_bytes: int = 8 << 20) -> list[dict[str, Any]]:
        """Every complete, well-formed event written since the last call (up to max_bytes)."""
        try:
            with open(self.path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                if self.inode is not None and inode != self.inode:
                    self.offset, self.partial = 0, b""  # the file was replaced: start over
                self.inode = inode
                f.seek(self.offset)
                chunk = f.read(max_bytes)
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > MAX_LINE:
            self.partial = b""
        return [e for e in (decode_line(line) for line in lines if line) if e is not None]

    def go_on_from(self, offset: int, inode: int | None) -> None:
        """Read next from `offset` of the file with this inode (what a replay folded ends there)."""
        self.offset, self.partial, self.inode = offset, b"", inode

    @property
    def caught_up(self) -> bool:
        """True when the last read reached the end of the file."""
        try:
            return self.offset >= self.path.stat().st_size
        except FileNotFoundError:
            return True


def decode_line(line: bytes) -> dict[str, Any] | None:
    """contracts.events.decode_event, with orjson where it is installed.

    orjson refuses what json accepts (NaN literals, integers past 64 bits): such a line goes to
    decode_event, so both decoders accept exactly the same events."""
    if _fast_loads is None:
        return decode_event(line)
    try:
        obj = _fast_loads(line)
    except ValueError:
        return decode_event(line)
    if obj.__class__ is not dict or not isinstance(obj.get("type"), str):
        return None
    if not isinstance(obj.get("v"), int) or not isinstance(obj.get("t"), (int, float)):
        return None
    return obj
