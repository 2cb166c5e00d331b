"""A fast replay from steps.f64, the step events' numbers the engine keeps beside events.jsonl
(its format: engine/telemetry/series_file.py; DESIGN.md, "A run is a directory").

events.jsonl stays the contract. The records are trusted only when they match it: in order,
inside the file, and the first and last land on step lines with the same step. Every byte
between records (evaluations, checkpoints, states, resumes, a step line an engine died before
recording) is decoded and folded in order, as the follower would; the follower then goes on from
the last record's end, so there is no gap and no duplicate. Anything else: the normal replay.
"""

from __future__ import annotations

import json
import math
import os
import sys
from array import array
from typing import TYPE_CHECKING, Any

from contracts.layout import RunLayout
from cockpit.follower import _decode
from cockpit.history import MAX_PARTS, STEP_SERIES, RunHistory, Series

if TYPE_CHECKING:
    from cockpit.link import RunLink

#: The engine's columns, in its order (engine.telemetry.series_file.COLUMNS).
COLUMNS = ("step", "loss", "lr", "samples_per_s", "accuracy")
#: Below this many records the normal replay is as fast.
MIN_RECORDS = 2048


def _header(run) -> list[str] | None:
    try:
        header = json.loads(RunLayout(run).steps_header.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("version") != 1 or header.get("columns") != list(COLUMNS):
        return None
    parts = header.get("parts")
    if header.get("stopped") or not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        return None
    return parts


def replay(link: RunLink) -> set[str] | None:
    """Fold the run's history from steps.f64 and the lines between its records; None (nothing
    done) when the file is missing, short, or does not match events.jsonl."""
    parts = _header(link.run)
    if parts is None or any(key not in COLUMNS for _, key in STEP_SERIES):
        return None
    width = 2 + len(COLUMNS) + len(parts)
    try:
        with open(RunLayout(link.run).events, "rb") as events:
            stat = os.fstat(events.fileno())
            raw = RunLayout(link.run).steps.read_bytes()
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
                event = _decode(events.read(int(ends[i] - starts[i])).rstrip(b"\n"))
                if event is None or event.get("type") != "step" or event.get("step") != cols[2][i]:
                    return None
            gaps = [i for i, (s, e) in enumerate(zip(starts[1:], ends), 1) if s != e]
            if any(starts[i] < ends[i - 1] for i in gaps) or any(s >= e for s, e in zip(starts[:1], ends[:1])):
                return None
            history = RunHistory(run=link.run)  # folded off the lock: the screen draws meanwhile
            kinds = _fold(history, events, cols, parts, starts, ends, gaps + [n])
    except OSError:
        return None
    with link.lock:
        link.history = history
        follower = link.follower
        follower.offset, follower.partial, follower.inode = int(ends[-1]), b"", stat.st_ino
    return kinds


def _fold(h: RunHistory, events, cols: list, parts: list[str], starts: list[float], ends: list[float],
          bounds: list[int]) -> set[str]:
    kinds, a = {"step"}, 0
    names = [(name, 2 + len(COLUMNS) + k) for k, name in enumerate(parts)]
    for b in bounds:
        lo, hi = (0 if a == 0 else int(ends[a - 1])), int(starts[a])
        if hi > lo:  # the lines between records: decoded and folded in order
            events.seek(lo)
            lines = events.read(hi - lo).split(b"\n")
            kinds |= h.apply_many([e for e in map(_decode, filter(None, lines)) if e is not None])
        if b - 1 > a:
            _bulk(h, cols, names, a, b - 1)
        events.seek(int(starts[b - 1]))  # the segment's last step goes through apply() itself
        last = _decode(events.read(int(ends[b - 1] - starts[b - 1])).rstrip(b"\n"))
        if last is not None:
            h.apply(last)
        a = b
    return kinds


def _present(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The points whose value is a number (NaN: the event had none)."""
    if not ys or not math.isnan(sum(ys)):
        return xs, ys
    kept = [(x, y) for x, y in zip(xs, ys) if y == y]
    return [p[0] for p in kept], [p[1] for p in kept]


def _bulk(h, cols: list, names: list[tuple[str, int]], a: int, b: int) -> None:
    """RunHistory._on_step for records a..b-1, one extend a series (as _fold_steps does)."""
    h.events_seen += b - a
    steps = cols[2][a:b].tolist()
    column = {key: cols[2 + COLUMNS.index(key)][a:b].tolist() for key in COLUMNS[1:]}
    lx, ly = _present(steps, column["loss"])
    ema, sy = h.ema, []
    for y in ly:
        ema = y if ema is None else 0.9 * ema + 0.1 * y
        sy.append(ema)
    h.ema = ema
    h.loss.extend(lx, ly)
    h.smooth.extend(lx, sy)
    for attr, key in STEP_SERIES:
        getattr(h, attr).extend(*_present(steps, column[key]))
    for name, index in names:
        if len(name) > 64 or (name not in h.parts and len(h.parts) >= MAX_PARTS):
            continue
        xs, ys = _present(steps, cols[index][a:b].tolist())
        if xs:
            h.parts.setdefault(name, Series()).extend(xs, ys)
