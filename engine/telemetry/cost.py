"""What the run costs: a telemetry sink that integrates the price over the engine's life into `cost` events.

The meter bills wall-clock time, not training time: from the engine process's start to its
final state, paused or evaluating included. It integrates the price (a `PriceSource`, see
engine.telemetry.prices) at every event it sees and on a timer of its own (so a pause is
billed too), and emits `cost` events at a bounded rate: at most one per `every_s` from steps
and ticks, plus one at each checkpoint (marking what the run had cost at that step, which is
what prices the steps a resume redoes) and at each pause and final state. What earlier
sessions of the run spent comes in as `Carried` (engine.telemetry.cost_ledger reads it back
from the events file, which is what survives a SIGKILL).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

from contracts.events import FINAL_STATES
from engine.telemetry.prices import ConfigPrice, Price, PriceSource  # noqa: F401 - re-exported

#: At most one cost event per this many seconds from steps and ticks.
COST_EVERY_S = 2.0
#: States that always get a cost event right after them.
FORCED_STATES = ("paused", *FINAL_STATES)
#: Recent (step, dollars) marks kept to price a checkpoint's step.
MARKS_KEPT = 4096
ZERO = Decimal(0)


def dollars(value: Decimal) -> float:
    """Money as a JSON number (exact to far below a cent)."""
    return float(value)


def seconds(value: float) -> Decimal:
    return Decimal(str(round(max(0.0, value), 6)))


@dataclass
class Carried:
    """What earlier sessions of this run spent, saved on spot and lost to interruptions."""

    accumulated: Decimal = ZERO
    savings: Decimal = ZERO
    lost: Decimal = ZERO
    lost_steps: int = 0


@dataclass(frozen=True)
class RunShape:
    """What the meter must know of the run to price an epoch, 1,000 samples and the rest of it."""

    epochs: int
    max_steps: int | None = None
    grad_accum: int = 1
    batch_size: int = 1

    @classmethod
    def of(cls, cfg: Any) -> "RunShape":
        t = cfg.train
        return cls(t.epochs, t.max_steps, t.grad_accum_steps, t.batch_size)

    def steps_per_epoch(self, batches_per_epoch: int) -> int:
        return math.ceil(batches_per_epoch / self.grad_accum)

    def total_steps(self, batches_per_epoch: int) -> int:
        return self.max_steps or self.epochs * self.steps_per_epoch(batches_per_epoch)

    def samples_per_step(self, world: int) -> int:
        return self.batch_size * self.grad_accum * world


def process_start() -> float:
    """When this process started (Unix seconds): the engine's billing starts there. On Linux from
    /proc (its start in clock ticks since boot against the uptime, both to 10 ms: psutil's
    create_time adds the boot time, which /proc/stat gives in whole seconds)."""
    try:
        import os
        from pathlib import Path

        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - no psutil: from now
        return time.time()


@dataclass
class _Marks:
    """(step, dollars spent when it was reached) for the recent steps of this session."""

    kept: "OrderedDict[int, Decimal]" = field(default_factory=OrderedDict)

    def add(self, step: int, spent: Decimal) -> None:
        self.kept[step] = spent
        self.kept.move_to_end(step)
        while len(self.kept) > MARKS_KEPT:
            self.kept.popitem(last=False)

    def at(self, step: int, per_step: Decimal | None) -> Decimal | None:
        """The dollars at `step`: exact, else between the marks around it, else from the one below."""
        if step in self.kept:
            return self.kept[step]
        below = max((s for s in self.kept if s < step), default=None)
        above = min((s for s in self.kept if s > step), default=None)
        if below is not None and above is not None:
            lo, hi = self.kept[below], self.kept[above]
            return lo + (hi - lo) * (step - below) / (above - below)
        if below is not None:
            return self.kept[below] + (per_step or ZERO) * (step - below)
        return self.kept[above] if above is not None else None


class CostMeter:
    """A telemetry sink: the price integrated over the engine's wall-clock life, as `cost` events.

    `clock` is injectable (unit tests drive it by hand); `since` is when billing starts (the
    process's start by default); `lock` should be the Telemetry's own re-entrant lock, so the
    meter's timer thread and the sinks' dispatch never interleave their cost events.
    """

    def __init__(self, source: PriceSource, emit: Callable[..., Any], shape: RunShape,
                 carried: Carried | None = None, clock: Callable[[], float] = time.time,
                 since: float | None = None, every_s: float = COST_EVERY_S,
                 lock: threading.RLock | None = None, tick: bool = True):
        self.source, self.emit_event, self.shape, self.clock = source, emit, shape, clock
        carried = carried or Carried()
        self.total, self.savings = carried.accumulated, carried.savings
        self.lost, self.lost_steps = carried.lost, carried.lost_steps
        self.since = clock() if since is None else since
        self.last_t, self.unpriced = self.since, 0.0
        self.every_s, self.last_sent = every_s, -math.inf
        self.lock = lock or threading.RLock()
        self.price: Price | None = None
        self.step, self.step_total = 0, self.total
        self.start: tuple[int, Decimal] | None = None  # (step, dollars) when training began
        self.marks = _Marks()
        self.batches: int | None = None
        self.world = 1
        self.done = threading.Event()
        self.timer = threading.Thread(target=self._ticks, name="cost-meter", daemon=True) if tick else None
        if self.timer is not None:
            self.timer.start()

    # ---- integration -------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Bill the time since the last call at the current price (time before any price was
        known is billed at the first price found)."""
        price = self.source.price()
        gap = max(0.0, now - self.last_t)
        self.last_t = max(self.last_t, now)
        if price is None:
            self.unpriced += gap
            return
        gap, self.unpriced = gap + self.unpriced, 0.0
        hours = seconds(gap) / 3600
        self.price = price
        self.total += price.per_hour * hours
        if price.lifecycle == "spot" and price.on_demand is not None:
            self.savings += (price.on_demand - price.per_hour) * hours

    def per_step(self) -> Decimal | None:
        """Dollars per step as measured this session, from when training began to the last step
        (evaluations and pauses between included)."""
        if self.start is None or self.step <= self.start[0]:
            return None
        return (self.step_total - self.start[1]) / (self.step - self.start[0])

    # ---- the sink ----------------------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        try:
            with self.lock:
                self._on(event)
        except Exception:  # noqa: BLE001 - a meter must never take training down
            pass

    def _on(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "cost":
            return
        stamp = event.get("t")  # the event's own time: marks then agree with the events file
        now = stamp if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) else self.clock()
        self.advance(now)
        if kind == "resume" and isinstance(event.get("step"), int):
            self.step, self.step_total = event["step"], self.total
        elif kind == "state":
            state = event.get("state")
            if state == "running" and self.start is None:
                self.step_total = self.total
                self.start = (self.step, self.total)
                self.marks.add(self.step, self.total)
            if state in FORCED_STATES:
                self._send(now)
            if state in FINAL_STATES:
                self.done.set()
        elif kind == "step" and isinstance(event.get("step"), int):
            self._on_step(event, now)
        elif kind == "checkpoint" and isinstance(event.get("step"), int):
            spent = self.marks.at(event["step"], self.per_step())
            if spent is not None:
                self._send(now, checkpoint_step=event["step"], checkpoint_accumulated=dollars(spent))

    def _on_step(self, event: dict[str, Any], now: float) -> None:
        if self.start is None:
            self.start = (self.step, self.total)
            self.marks.add(self.step, self.total)
        self.step, self.step_total = event["step"], self.total
        self.marks.add(self.step, self.total)
        if isinstance(event.get("batches_per_epoch"), int) and event["batches_per_epoch"] > 0:
            self.batches = event["batches_per_epoch"]
        if isinstance(event.get("world_size"), int) and event["world_size"] > 0:
            self.world = event["world_size"]
        if now - self.last_sent >= self.every_s:
            self._send(now)

    def tick(self) -> None:
        """Bill the time so far and report it if no cost event went out for `every_s` (a pause)."""
        with self.lock:
            now = self.clock()
            self.advance(now)
            if now - self.last_sent >= self.every_s:
                self._send(now)

    def _ticks(self) -> None:
        while not self.done.wait(self.every_s / 4):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - telemetry closing under us
                return

    def fields(self, now: float) -> dict[str, Any] | None:
        """The cost event's fields now (None while no price is known)."""
        price = self.price
        if price is None:
            return None
        age = price.age_s(now)
        out: dict[str, Any] = {
            "price_per_hour": dollars(price.per_hour), "source": price.source, "currency": price.currency,
            "price_age_s": None if age is None else round(age, 1),
            "accumulated": dollars(self.total), "lost": dollars(self.lost), "lost_steps": self.lost_steps,
            "step": self.step, "step_accumulated": dollars(self.step_total), "since": round(self.since, 3),
        }
        if self.start is not None:
            out.update(from_step=self.start[0], from_accumulated=dollars(self.start[1]))
        if price.lifecycle:
            out["lifecycle"] = price.lifecycle
        if price.instance_type:
            out["instance_type"] = price.instance_type
        if price.lifecycle == "spot" and price.on_demand is not None:
            out.update(on_demand_per_hour=dollars(price.on_demand), savings=dollars(self.savings))
        per_step = self.per_step()
        projected = remaining = per_epoch = per_1k = None
        if per_step is not None and self.batches:
            remaining = max(0, self.shape.total_steps(self.batches) - self.step)
            projected = dollars(self.total + per_step * remaining)
            per_epoch = dollars(per_step * self.shape.steps_per_epoch(self.batches))
            per_1k = dollars(per_step * 1000 / self.shape.samples_per_step(self.world))
        out.update(projected=projected, remaining_steps=remaining, per_epoch=per_epoch, per_1k_samples=per_1k)
        return out

    def _send(self, now: float, **extra: Any) -> None:
        fields = self.fields(now)
        if fields is None:
            return
        self.last_sent = now
        self.emit_event("cost", **fields, **extra)

    def close(self) -> None:
        self.done.set()
        closing = getattr(self.source, "close", None)
        if closing is not None:
            closing()
