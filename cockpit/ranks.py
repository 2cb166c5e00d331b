"""Every rank in view: the newest `ranks` event, a short busy-time history per rank, and the run's alerts.

Only the newest ranks event is drawn, so folding one costs a deque append per rank and nothing
else; a replay's earlier ranks events matter only for the last SPARK_LEN busy times of each rank
(`RanksFold.fold_many` skips the rest). Summaries (min, median, max, the worst ranks) are
computed when a view draws, at most a few times a second, never per event.
"""

from __future__ import annotations

import heapq
import itertools
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cockpit.step_fold import number

#: Busy times remembered per rank (the sparkline's width).
SPARK_LEN = 24
#: Ranks folded from one event at most (a malformed event must not take the cockpit's memory).
MAX_RANKS = 65536
#: Up to this many ranks a view lists every row; over it, a summary and the worst ranks.
LIST_ALL = 16
#: How many of the slowest ranks a summary names, worst first.
WORST = 5
#: Alerts kept per run (the newest).
MAX_ALERTS = 500
_FOLDS = itertools.count()

#: The columns a summary gives min, median and max of: (label, record field).
METRICS = (("busy", "busy_s"), ("data", "data_s"), ("compute", "compute_s"), ("comm", "comm_s"),
           ("optim", "optim_s"), ("mem peak", "mem_peak_bytes"), ("gpu util", "gpu_util"))


@dataclass
class RanksFold:
    """The newest ranks event of a run (`records`, `slowest`, `step`) and each rank's recent busy times."""

    records: list[dict[str, Any]] = field(default_factory=list)
    slowest: int | None = None
    step: float | None = None
    busy: dict[int, deque] = field(default_factory=dict)
    #: Counts the ranks events folded: a view redraws only when it moved.
    version: int = 0
    #: Tells this fold from another run's (a view that followed one run may be shown another).
    uid: int = field(default_factory=lambda: next(_FOLDS), compare=False, repr=False)

    @property
    def mark(self) -> tuple[int, int]:
        """(uid, version): changes whenever there is something new to draw."""
        return self.uid, self.version

    def fold(self, e: dict[str, Any]) -> None:
        """One ranks event: it becomes the newest, and each rank's busy time joins its history."""
        self.fold_many([e])

    def fold_many(self, events: list[dict[str, Any]]) -> None:
        """Ranks events in order; the ones before the last SPARK_LEN change nothing that is drawn."""
        events = [e for e in events if isinstance(e.get("ranks"), list)]
        if not events:
            return
        for e in events[-SPARK_LEN:]:
            for rec in e["ranks"][:MAX_RANKS]:
                rank = rec.get("rank") if isinstance(rec, dict) else None
                if isinstance(rank, int) and not isinstance(rank, bool):
                    busy = number(rec.get("busy_s"))
                    self.busy.setdefault(rank, deque(maxlen=SPARK_LEN)).append(busy if busy is not None else 0.0)
        last = events[-1]
        self.records = [r for r in last["ranks"][:MAX_RANKS] if isinstance(r, dict)]
        slowest = last.get("slowest")
        self.slowest = slowest if isinstance(slowest, int) and not isinstance(slowest, bool) else None
        self.step = number(last.get("step"))
        self.version += len(events)

    def has_gpu(self) -> bool:
        """True when the ranks carry their GPUs' NVML readings (a run on GPUs)."""
        return any(number(r.get("gpu_util")) is not None for r in self.records)


@dataclass
class Spread:
    """One metric over every rank: its min, median and max (None where no rank had it)."""

    label: str
    key: str
    low: float | None
    median: float | None
    high: float | None


def spreads(records: list[dict[str, Any]]) -> list[Spread]:
    """Min, median and max of each METRICS column over the ranks."""
    out = []
    for label, key in METRICS:
        values = sorted(v for v in (number(r.get(key)) for r in records) if v is not None)
        if values:
            out.append(Spread(label, key, values[0], statistics.median(values), values[-1]))
        else:
            out.append(Spread(label, key, None, None, None))
    return out


def worst(records: list[dict[str, Any]], n: int = WORST) -> list[dict[str, Any]]:
    """The n ranks with the longest busy time, worst first."""
    return heapq.nlargest(n, records, key=lambda r: number(r.get("busy_s")) or 0.0)


def ms(seconds: Any) -> str:
    """Seconds as milliseconds for a narrow column ('?' when unknown)."""
    value = number(seconds)
    if value is None:
        return "?"
    return f"{value * 1000:.1f}" if value < 0.1 else f"{value * 1000:.0f}"


def size(num_bytes: Any) -> str:
    """Bytes in a short human unit ('-' when unknown)."""
    value = number(num_bytes)
    if value is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def percent(value: Any) -> str:
    v = number(value)
    return "-" if v is None else f"{v:.0f}%"


def spread_cell(s: Spread) -> tuple[str, str, str]:
    """A Spread's min, median and max as a view writes them."""
    fmt = size if s.key == "mem_peak_bytes" else percent if s.key == "gpu_util" else ms
    return fmt(s.low), fmt(s.median), fmt(s.high)
