"""A fast replay from steps.f64, the step events' numbers the engine keeps beside events.jsonl
(its format: contracts/steps.py; DESIGN.md, "A run is a directory").

events.jsonl stays the contract. The records are trusted only when they match it: in order,
inside the file, and the first and last land on step lines with the same step. Every byte
between records (evaluations, checkpoints, states, resumes, a step line an engine died before
recording) is decoded and folded in order, as the follower would; the follower then goes on from
the last record's end, so there is no gap and no duplicate. Anything else: the normal replay.

`replay(run)` returns what it folded (`Replayed`) and touches nothing else: RunLink takes it.
"""

from __future__ import annotations

import json
import os
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

from contracts.layout import RunLayout
from contracts.steps import COLUMNS, VERSION, record_width
from cockpit.follower import decode_line
from cockpit.history import RunHistory
from cockpit.step_fold import fold, from_records

#: Below this many records the normal replay is as fast.
MIN_RECORDS = 2048


@dataclass
class Replayed:
    """What replay() folded, for RunLink to take: the history, and where following goes on."""

    history: RunHistory
    #: The event types folded.
    kinds: set[str]
    #: events.jsonl's byte after the last record's line, and the file's inode then.
    offset: int
    inode: int


def _header(run: Path) -> list[str] | None:
    try:
        header = json.loads(RunLayout(run).steps_header.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("version") != VERSION or header.get("columns") != list(COLUMNS):
        return None
    parts = header.get("parts")
    if header.get("stopped") or not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        return None
    return parts


def replay(run: Path) -> Replayed | None:
    """Fold the run's history from steps.f64 and the lines between its records; None (nothing
    done) when the file is missing, short, or does not match events.jsonl."""
    parts = _header(run)
    if parts is None:
        return None
    width = record_width(len(parts))
    try:
        with open(RunLayout(run).events, "rb") as events:
            stat = os.fstat(events.fileno())
            raw = RunLayout(run).steps.read_bytes()
            n = len(raw) // (8 * width)
            if n < MIN_RECORDS:
                return None
            values = array("d")
            values.frombytes(memoryview(raw)[:n * 8 * width])
            del raw
            if sys.byteorder != "little":
                values.byteswap()
            cols = [values[i::width] for i in range(width)]
            del values
            starts, ends = cols[0].tolist(), cols[1].tolist()
            if ends[-1] > stat.st_size or starts[0] < 0:
                return None
            for i in (0, n - 1):
                events.seek(int(starts[i]))
                event = decode_line(events.read(int(ends[i] - starts[i])).rstrip(b"\n"))
                if event is None or event.get("type") != "step" or event.get("step") != cols[2][i]:
                    return None
            gaps = [i for i, (s, e) in enumerate(zip(starts[1:], ends), 1) if s != e]
            if any(starts[i] < ends[i - 1] for i in gaps) or any(s >= e for s, e in zip(starts[:1], ends[:1])):
                return None
            history = RunHistory(run=run)
            kinds = _fold(history, events, cols, parts, starts, ends, gaps + [n])
    except OSError:
        return None
    return Replayed(history, kinds, int(ends[-1]), stat.st_ino)


def _fold(h: RunHistory, events, cols: list, parts: list[str], starts: list[float], ends: list[float],
          bounds: list[int]) -> set[str]:
    kinds, a = {"step"}, 0
    for b in bounds:
        lo, hi = (0 if a == 0 else int(ends[a - 1])), int(starts[a])
        if hi > lo:  # the lines between records: decoded and folded in order
            events.seek(lo)
            lines = events.read(hi - lo).split(b"\n")
            kinds |= h.apply_many([e for e in map(decode_line, filter(None, lines)) if e is not None])
        if b - 1 > a:  # records a..b-2, by the rule that folds step events
            h.events_seen += b - 1 - a
            fold(h, from_records(cols, parts, a, b - 1))
        events.seek(int(starts[b - 1]))  # the segment's last step goes through apply() itself
        last = decode_line(events.read(int(ends[b - 1] - starts[b - 1])).rstrip(b"\n"))
        if last is not None:
            h.apply(last)
        a = b
    return kinds
