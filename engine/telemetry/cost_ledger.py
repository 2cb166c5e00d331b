"""What a run's earlier sessions cost, read back from its events file (what survives a SIGKILL).

Only the newest session is read, from the end of the file backwards: its last `cost` event
holds the totals of every session before it. A session killed without a last word is billed
to its last sign of life (its last event), at the price it last reported. After a resume from
step S, the steps the killed session had done past S are redone: they were paid for once and
are paid again, so what they cost (the dollars between the session's marks at S and at its
last step) is added to the dollars lost to interruptions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

from contracts.events import decode_event
from engine.telemetry.cost import ZERO, Carried

CHUNK = 1 << 16


def events_backwards(path: Path) -> Iterator[dict[str, Any]]:
    """The file's events from the last to the first, read in chunks (malformed lines skipped)."""
    try:
        f = open(path, "rb")
    except OSError:
        return
    with f:
        end = f.seek(0, os.SEEK_END)
        tail = b""
        while end > 0:
            start = max(0, end - CHUNK)
            f.seek(start)
            block = f.read(end - start) + tail
            end = start
            lines = block.split(b"\n")
            tail = lines.pop(0) if start > 0 else b""
            for line in reversed(lines):
                event = decode_event(line) if line.strip() else None
                if event is not None:
                    yield event
        if tail.strip():
            event = decode_event(tail)
            if event is not None:
                yield event


def _num(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return Decimal(str(value))


@dataclass
class Session:
    """The newest session that reported a cost: its last cost event, its last sign of life,
    its last step event and its (step, dollars) marks."""

    cost: dict[str, Any]
    t_end: float
    last_step: dict[str, Any] | None = None
    marks: dict[int, Decimal] = field(default_factory=dict)

    def _tail_hours(self, until: float) -> Decimal:
        return Decimal(str(round(max(0.0, until - self.cost["t"]), 6))) / 3600

    def total(self) -> Decimal:
        """Dollars spent by the end of this session (every session before it included)."""
        price = _num(self.cost.get("price_per_hour")) or ZERO
        return (_num(self.cost.get("accumulated")) or ZERO) + price * self._tail_hours(self.t_end)

    def savings(self) -> Decimal:
        saved = _num(self.cost.get("savings"))
        if saved is None:
            return ZERO
        od, price = _num(self.cost.get("on_demand_per_hour")), _num(self.cost.get("price_per_hour"))
        rate = (od - price) if od is not None and price is not None else ZERO
        return saved + rate * self._tail_hours(self.t_end)

    def dollars_at(self, step: int) -> Decimal | None:
        """Dollars spent when the session reached `step`: a mark, between marks, or past the
        last one at the last price (by the step events' clock)."""
        if step in self.marks:
            return self.marks[step]
        last = self.last_step
        cost_step = self.cost.get("step")
        if last is not None and step == last.get("step") and isinstance(cost_step, int) and step > cost_step:
            return self.total_at(last["t"])
        below = max((s for s in self.marks if s < step), default=None)
        above = min((s for s in self.marks if s > step), default=None)
        if below is not None and above is not None:
            lo, hi = self.marks[below], self.marks[above]
            return lo + (hi - lo) * (step - below) / (above - below)
        if below is not None:
            return self.marks[below]
        return self.marks[above] if above is not None else None

    def total_at(self, t: float) -> Decimal:
        price = _num(self.cost.get("price_per_hour")) or ZERO
        return (_num(self.cost.get("accumulated")) or ZERO) + price * self._tail_hours(t)


def _add_marks(marks: dict[int, Decimal], e: dict[str, Any]) -> None:
    for step_key, dollars_key in (("step", "step_accumulated"), ("checkpoint_step", "checkpoint_accumulated")):
        step, spent = e.get(step_key), _num(e.get(dollars_key))
        if isinstance(step, int) and not isinstance(step, bool) and spent is not None:
            marks.setdefault(step, spent)  # read backwards: the newest mark of a step wins


def last_session(path: Path, down_to_step: int | None = None) -> Session | None:
    """Read the newest session that reported a cost, backwards, and only as far as needed
    (down to a mark at or below `down_to_step` when given)."""
    t_end: float | None = None
    last_step: dict[str, Any] | None = None
    found: Session | None = None
    for e in events_backwards(path):
        kind, t = e.get("type"), e.get("t")
        if found is None:
            if kind == "resume":  # a later session that never reported a cost: not this one
                t_end, last_step = None, None
            elif kind == "cost" and _num(e.get("accumulated")) is not None:
                found = Session(e, max(t_end if t_end is not None else t, t), last_step)
                _add_marks(found.marks, e)
            elif kind != "log":  # a resumed session's first warnings come before its resume event
                t_end = t if t_end is None else t_end
                if kind == "step" and last_step is None and isinstance(e.get("step"), int):
                    last_step = e
            continue
        if kind == "resume":
            break
        if kind == "cost":
            if e.get("since") != found.cost.get("since"):
                break
            _add_marks(found.marks, e)
        elif kind == "step" and found.last_step is None and isinstance(e.get("step"), int):
            found.last_step = e
        if found.last_step is not None and (down_to_step is None or any(s <= down_to_step for s in found.marks)):
            break
    if found is not None:  # where the session began training: the mark below all others
        step, spent = found.cost.get("from_step"), _num(found.cost.get("from_accumulated"))
        if isinstance(step, int) and spent is not None:
            found.marks.setdefault(step, spent)
    return found


def carried(path: Path, resume_step: int) -> Carried:
    """What the run had spent before this session, and what it lost: the killed session's
    steps past the checkpoint it resumes from are redone, priced at what they cost then."""
    s = last_session(path, resume_step)
    if s is None:
        return Carried()
    lost = _num(s.cost.get("lost")) or ZERO
    lost_steps = s.cost.get("lost_steps") if isinstance(s.cost.get("lost_steps"), int) else 0
    last = s.last_step.get("step") if s.last_step else None
    if isinstance(last, int) and last > resume_step:
        at_last, at_resume = s.dollars_at(last), s.dollars_at(resume_step)
        if at_last is not None and at_resume is not None:
            lost += max(ZERO, at_last - at_resume)
            lost_steps += last - resume_step
    return Carried(s.total(), s.savings(), lost, lost_steps)
