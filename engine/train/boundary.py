"""Step boundaries: why the loop stops or saves, the sources that say so, and their agreement.

At every step boundary each source (control commands, signals, the clock; later the spot
poller and the sweep pruner) adds to one `Plan`. Plans fold by maximum, field by field, so
the strongest reason wins; under torchrun the same maximum is taken across ranks with one
all-reduce, so every rank acts on the same plan at the same step.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

from engine.protocol import EXIT_FINISHED, EXIT_STOPPED
from engine.run.control import Pending


class Reason(IntEnum):
    """Why the loop leaves its rhythm at a boundary, weakest first (the greater one wins)."""

    CONTINUE = 0
    CHECKPOINT_DUE = 1      # checkpoint.every_minutes has passed
    CHECKPOINT_COMMAND = 2  # the `checkpoint` command
    STOP_COMMAND = 3        # the `stop` command
    SIGNAL = 4              # SIGTERM or Ctrl+C, on any rank
    PREEMPTED = 5           # the machine is being taken away (spot interruption notice)
    PRUNED = 6              # a sweep's pruner gave up on this trial

    @property
    def stops(self) -> bool:
        """True for the reasons that end the run (after a checkpoint)."""
        return self >= Reason.STOP_COMMAND



#: How a run that stopped for a reason ends: its final state and exit code.
OUTCOMES: dict[Reason, tuple[str, int]] = {
    Reason.CONTINUE: ("finished", EXIT_FINISHED),
    Reason.STOP_COMMAND: ("stopped", EXIT_STOPPED),
    Reason.SIGNAL: ("stopped", EXIT_STOPPED),
    Reason.PREEMPTED: ("preempted", EXIT_STOPPED),
    Reason.PRUNED: ("pruned", EXIT_STOPPED),
}


class Pause(IntEnum):
    """A pause request: none, continue, or pause (a pause wins over a continue)."""

    NONE = 0
    CONTINUE = 1
    PAUSE = 2


@dataclass
class Plan:
    """What every rank does at this step boundary."""

    reason: Reason = Reason.CONTINUE
    pause: Pause = Pause.NONE
    lr: float = -1.0  # a `set` command's learning rate (-1: none)
    why: str = ""     # words for the reason, from the source that gave it (this rank only)
    pending: list[Pending] = field(default_factory=list)  # rank 0's commands to answer

    def vector(self) -> list[float]:
        return [float(self.reason), float(self.pause), self.lr]

    def fold(self, other: "Plan") -> "Plan":
        """The stronger of two plans, field by field (a source's words go with its reason)."""
        why = other.why if other.reason > self.reason else self.why
        return Plan(max(self.reason, other.reason), max(self.pause, other.pause), max(self.lr, other.lr),
                    why, self.pending + other.pending)

    def agreed(self, values: list[float]) -> "Plan":
        """This plan with the fields every rank agreed on (the element-wise maximum)."""
        reason = Reason(int(values[0]))
        why = self.why if reason == self.reason else ""
        return Plan(reason, Pause(int(values[1])), values[2], why, self.pending)


class Source(Protocol):
    """Anything that may ask for a stop, a checkpoint, a pause or a new lr at a boundary."""

    def poll(self) -> Plan: ...


class Signals:
    """SIGTERM and SIGINT as a source: the first asks for a stop, a second Ctrl+C leaves at once."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        self.previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.name and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: leave at once
        self.name = signal.Signals(signum).name

    def poll(self) -> Plan:
        return Plan(Reason.SIGNAL, why=self.name) if self.name else Plan()


class Clock:
    """checkpoint.every_minutes as a source (rank 0's clock decides)."""

    def __init__(self, every_minutes: float | None):
        self.every_s = every_minutes * 60 if every_minutes else None
        self.last_save = time.monotonic()

    def saved(self) -> None:
        """A checkpoint was just taken: the clock starts again."""
        self.last_save = time.monotonic()

    def poll(self) -> Plan:
        if self.every_s is not None and time.monotonic() - self.last_save >= self.every_s:
            return Plan(Reason.CHECKPOINT_DUE)
        return Plan()


#: How far from the configured rate a `set` command may move the learning rate.
LR_RANGE = 1000.0


class Commands:
    """The control socket as a source: the commands that arrived since the last boundary."""

    def __init__(self, server: Any, configured_lr: float, highest_for: Any):
        # highest_for(lr): the highest rate the schedule reaches from now on if lr is set now
        self.server, self.configured_lr, self.highest_for = server, configured_lr, highest_for

    def poll(self, wait_s: float = 0.0) -> Plan:
        pending = self.server.poll() if self.server is not None else []
        if not pending and wait_s and self.server is not None:
            waited = self.server.wait(wait_s)  # paused: the heartbeat the other ranks wait on
            pending = [waited] if waited else []
        plan = Plan()
        for p in pending:
            one = self._plan_for(p)
            plan = plan.fold(one)
            # between commands, the later one wins (as sent); max is for reasons and ranks
            plan.pause = one.pause or plan.pause
            plan.lr = one.lr if one.lr >= 0 else plan.lr
        return plan

    def _plan_for(self, p: Pending) -> Plan:
        if p.cmd == "checkpoint":
            return Plan(Reason.CHECKPOINT_COMMAND, pending=[p])
        if p.cmd in ("pause", "continue"):
            return Plan(pause=Pause.PAUSE if p.cmd == "pause" else Pause.CONTINUE, pending=[p])
        if p.cmd == "stop":
            return Plan(Reason.STOP_COMMAND, why="stop command", pending=[p])
        if p.cmd == "prune":
            return Plan(Reason.PRUNED, why=str(p.request.get("reason") or "prune command"), pending=[p])
        if p.cmd == "set":
            error = self.check_lr(float(p.request["lr"]))
            if error:
                p.answer(False, error=error)  # refused: nothing changes
                return Plan()
            return Plan(lr=float(p.request["lr"]), pending=[p])
        return Plan(pending=[p])

    def check_lr(self, lr: float) -> str | None:
        """Why a `set` learning rate is refused (None: accepted). Bounded so that one command
        can never make the next step overflow or stall the run."""
        low, high = self.configured_lr / LR_RANGE, self.configured_lr * LR_RANGE
        if not math.isfinite(lr) or not low <= lr <= high:
            return (f"set: lr={lr!r}: expected a finite rate within {LR_RANGE:g}x of optim.lr = "
                    f"{self.configured_lr:g}, i.e. between {low:g} and {high:g}; nothing was changed")
        peak = self.highest_for(lr)
        if not math.isfinite(peak) or peak > high * (1 + 1e-9):
            return (f"set: lr={lr!r}: the schedule is still rising and would later reach {peak:g}, above "
                    f"{high:g} ({LR_RANGE:g}x optim.lr); set a smaller rate or wait for the warm-up to end; "
                    "nothing was changed")
        return None


#: Words for a stop reason that came from another rank (this rank's sources said nothing).
ELSEWHERE = {Reason.STOP_COMMAND: "stop command", Reason.SIGNAL: "a signal on another rank",
             Reason.PREEMPTED: "preempted", Reason.PRUNED: "pruned"}


class StopRun(Exception):
    """Leave the loop at a step boundary, for the agreed plan's reason (with words for it)."""

    def __init__(self, plan: Plan):
        plan.why = plan.why or ELSEWHERE.get(plan.reason, plan.reason.name.lower())
        super().__init__(plan.why)
        self.plan = plan
