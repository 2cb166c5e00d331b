"""Goodput: where every second (and dollar) of a run's life went, across all its sessions.

Each engine's life, from its process's start to its last ledger event, splits into classes that
do not overlap and add up to it by construction (`other` is what is left over: the step
boundaries' bookkeeping, logging, status writes, the final save's wait):

* startup: from the process's start to the training loop's first step (interpreter, torch,
  model and data, the resume's checkpoint read);
* productive, data, communication, bubble: the training steps' own measured spans (the
  StepMeter's h2d + forward/backward + optimizer, waiting for the loader, exposed all-reduce,
  a pipeline's idle time), averaged over the ranks;
* checkpoint: the loop blocked in a save (the stall, not the background write);
* evaluation: the validation passes;
* paused: time in the paused state;
* lost: steps done again after a crash, a preemption or a requeue (the previous sessions' time
  for the steps past the checkpoint a session resumed from, moved out of their classes).

Dollars follow the seconds at the cost meter's price when each second was counted (a spot price
that moves is followed). Goodput is productive time over the total. `ledger` events are
cumulative over the run's sessions: a resume carries the last one on (engine.run.session).
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from contracts.events import newest_event

CLASSES = ("startup", "productive", "data", "communication", "bubble", "checkpoint", "evaluation", "paused",
           "lost", "other")
#: The classes a training step's time is made of (moved to `lost` when the step is redone).
STEP_CLASSES = ("productive", "data", "communication", "bubble")
#: A ledger event at most this often at logging steps (and always at a session's end).
EVERY_S = 5.0

#: What to do about the largest loss (a class other than productive).
REMEDIES = {
    "startup": "most time went to start-up: keep the engine warm (longer runs, resume rather than restart, "
               "one sweep worker for many trials)",
    "data": "waiting for data: raise data.num_workers, pin memory, or move the data to faster storage",
    "communication": "exposed communication: larger batches per rank, gradient accumulation, or fewer ranks",
    "bubble": "the pipeline's bubble: more distributed.microbatches, or the interleaved schedule",
    "checkpoint": "checkpoint less often (checkpoint.every_steps = 'auto'), or checkpoint.async_save = true",
    "evaluation": "evaluation: validate less often or on fewer batches",
    "paused": "the run stood paused",
    "lost": "steps redone after interruptions: checkpoint more often (checkpoint.every_steps = 'auto')",
    "other": "the step boundaries' bookkeeping: log less often (logging.every_steps)",
}


class Ledger:
    """Rank 0's ledger of this session, carried on from the run's earlier sessions."""

    def __init__(self, emit: Callable[..., Any], started_at: float, price: Callable[[], Decimal | None],
                 previous: dict[str, Any] | None = None, resume_step: int = 0, clock: Callable[[], float] = time.time,
                 queued_s: float = 0.0, last_words: float | None = None):
        """`queued_s`: how long this session waited to start (a Slurm job's queue and set-up), kept
        beside the classes: it is no engine's life."""
        self.emit_event, self.started_at, self.price, self.clock = emit, started_at, price, clock
        self.seconds = dict.fromkeys(CLASSES, 0.0)
        self.dollars = dict.fromkeys(CLASSES, Decimal(0))
        self.counted = dict.fromkeys(CLASSES, 0.0)  # seconds already priced into dollars
        self.before_total, self.before_steps, self.sessions = 0.0, 0, 1
        self.queued_s = queued_s
        self.steps = 0  # steps trained in this session (redone ones included)
        self.step = resume_step
        self.started_loop: float | None = None
        self.last_sent = -1e18
        self.interval: dict[str, Any] | None = None  # checkpoint.every_steps = "auto": the interval now
        if previous:
            self._carry(previous, resume_step, last_words)

    def _carry(self, prev: dict[str, Any], resume_step: int, last_words: float | None) -> None:
        """The earlier sessions' ledger, with the steps this session redoes moved to `lost`, and
        the previous engine's life after its last ledger (a SIGKILL's tail: up to its last event of
        any kind) counted as lost too."""
        classes = prev.get("classes") or {}
        for c in CLASSES:
            entry = classes.get(c) or {}
            self.seconds[c] = float(entry.get("seconds") or 0.0)
            self.counted[c] = self.seconds[c]
            self.dollars[c] = Decimal(str(entry.get("dollars") or 0))
        self.before_total = float(prev.get("total_s") or 0.0)
        tail = (last_words - float(prev["t"])) if last_words is not None and prev.get("t") else 0.0
        if tail > 0 and not prev.get("final"):  # killed: its last steps, unaccounted, are redone
            self.before_total += tail
            self.seconds["lost"] += tail
        self.before_steps = int(prev.get("steps") or 0)
        self.sessions = int(prev.get("sessions") or 1) + 1
        self.queued_s += float(prev.get("queued_s") or 0.0)
        redone = int(prev.get("step") or 0) - resume_step
        step_s = sum(self.seconds[c] for c in STEP_CLASSES)
        if redone > 0 and self.before_steps > 0 and step_s > 0:
            share = min(1.0, redone / self.before_steps)
            for c in STEP_CLASSES:
                moved_s, moved_d = self.seconds[c] * share, self.dollars[c] * Decimal(str(share))
                self.seconds[c] -= moved_s
                self.counted[c] -= moved_s
                self.dollars[c] -= moved_d
                self.seconds["lost"] += moved_s
                self.counted["lost"] += moved_s
                self.dollars["lost"] += moved_d
            self.before_steps -= redone

    # ---- what the loop reports ----------------------------------------------------------

    def loop_started(self) -> None:
        """The training loop's first step is about to run: start-up ends here (once)."""
        if self.started_loop is None:
            self.started_loop = self.clock()
            self.seconds["startup"] += max(0.0, self.started_loop - self.started_at)

    def spans(self, step: int, steps: int, productive: float, data: float, communication: float,
              bubble: float) -> None:
        """A logging period's steps: their measured seconds (each rank's average)."""
        self.step, self.steps = step, self.steps + steps
        for c, s in (("productive", productive), ("data", data), ("communication", communication),
                     ("bubble", bubble)):
            self.seconds[c] += max(0.0, s)

    def add(self, cls: str, seconds: float) -> None:
        self.seconds[cls] += max(0.0, seconds)

    # ---- the account --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The cumulative ledger now: every class's seconds and dollars, goodput, total."""
        now = self.clock()
        total = self.before_total + max(0.0, now - self.started_at)
        known = sum(v for c, v in self.seconds.items() if c != "other")
        self.seconds["other"] = max(0.0, total - known)
        price = self.price()
        if price is not None:
            for c in CLASSES:  # the seconds not yet priced, at the price now
                fresh = self.seconds[c] - self.counted[c]
                self.dollars[c] += price * Decimal(str(fresh)) / 3600
                self.counted[c] = self.seconds[c]
        total = max(total, sum(self.seconds.values()))
        return {"step": self.step, "steps": self.before_steps + self.steps, "sessions": self.sessions,
                "total_s": total, "goodput": self.seconds["productive"] / total if total > 0 else 0.0,
                "dollars": float(sum(self.dollars.values())) if price is not None or any(self.dollars.values())
                else None,
                "classes": {c: {"seconds": self.seconds[c], "dollars": float(self.dollars[c])} for c in CLASSES},
                "worst": worst(self.seconds),
                **({"checkpoint_interval": self.interval} if self.interval else {}),
                **({"queued_s": self.queued_s} if self.queued_s else {})}

    def send(self, final: bool = False) -> None:
        """A `ledger` event: at most every EVERY_S at logging steps, and at a session's end."""
        now = self.clock()
        if not final and now - self.last_sent < EVERY_S:
            return
        self.last_sent = now
        self.emit_event("ledger", **self.snapshot(), final=final)


def worst(seconds: dict[str, float]) -> dict[str, Any] | None:
    """The largest class other than productive, with its remedy."""
    losses = {c: s for c, s in seconds.items() if c != "productive" and s > 0}
    if not losses:
        return None
    c = max(losses, key=losses.get)
    return {"class": c, "seconds": losses[c], "remedy": REMEDIES[c]}


def last_words(events: Path, before: float) -> float | None:
    """The time of the newest event written before `before` (this engine's start): the previous
    engine's last words."""
    found = newest_event(events, before=before)
    return float(found["t"]) if found is not None else None


def last_ledger(events: Path) -> dict[str, Any] | None:
    """The newest `ledger` event of a run's events file (read before this session writes)."""
    return newest_event(events, "ledger")


def last_event(events: Path, kind: str) -> dict[str, Any] | None:
    """The newest event of this type in a run's events file."""
    return newest_event(events, kind)
