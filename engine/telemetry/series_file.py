"""steps.f64: the step events' numbers beside events.jsonl, so a reader can replay a long history
without decoding every line (the cockpit's attach; bench/RESULTS.md).

The format and its columns are declared once, in contracts.steps (the cockpit reads the same
declaration); NaN where an event has no finite value. events.jsonl stays the contract: a reader trusts this file only while
it matches the events (the byte ranges land on step lines with the same numbers) and otherwise
decodes events.jsonl. A step event whose loss parts differ from the header's stops the file for
good (`"stopped": true`): readers then decode the lines.
"""

from __future__ import annotations

from contracts.layout import RunLayout
from contracts.steps import COLUMNS, MAX_PARTS, VERSION, record_width

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

NAN = float("nan")


def _f(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            return NAN
        return value if math.isfinite(value) else NAN
    return NAN


class SeriesFile:
    """Appends a record per step line; `offset` is events.jsonl's size, kept by EventsFile."""

    def __init__(self, run: Path):
        layout = RunLayout(run)
        self.header_path, self.path = layout.steps_header, layout.steps
        self.parts: list[str] | None = None
        self.stopped = False
        self.file = None
        try:
            header = json.loads(self.header_path.read_text())
            if header.get("columns") != list(COLUMNS) or header.get("version") != VERSION:
                self.stopped = True
            self.parts = header.get("parts")
            self.stopped = self.stopped or bool(header.get("stopped"))
        except FileNotFoundError:
            if layout.events.exists() and layout.events.stat().st_size:
                self.stopped = True  # an older engine wrote the events before: no record of those
        except (OSError, ValueError, AttributeError):
            self.stopped = True

    def record(self, event: dict[str, Any], start: int, end: int) -> None:
        if self.stopped:
            return
        losses = event.get("losses")
        losses = losses if isinstance(losses, dict) else None  # none: NaN in each part's column
        names = list(losses) if losses is not None else None
        if self.parts is None:
            if names is None or len(names) > MAX_PARTS:
                return self._stop()
            self.parts = names
            self.header_path.write_text(json.dumps({"version": VERSION, "columns": list(COLUMNS), "parts": names}))
        elif names is not None and names != self.parts:
            return self._stop()
        if self.file is None:
            self.file = open(self.path, "ab")
            size = self.file.tell()
            width = 8 * record_width(len(self.parts))
            if size % width:  # a torn record from a killed engine
                self.file.truncate(size - size % width)
        values = [start, end, *(_f(event.get(c)) for c in COLUMNS),
                  *((_f(losses[n]) for n in names) if losses is not None else [NAN] * len(self.parts))]
        self.file.write(struct.pack(f"<{len(values)}d", *values))
        self.file.flush()

    def _stop(self) -> None:
        self.stopped = True
        header = {"version": VERSION, "columns": list(COLUMNS), "parts": self.parts or [], "stopped": True}
        self.header_path.write_text(json.dumps(header))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def events_size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
