"""Stop reasons and plans: why the training loop stops, saves, pauses or changes its rate.

At every step boundary each source (control commands, signals, the clock, the spot watcher, the
S3 lease, a sweep's pruner) gives a `Plan`. Plans fold by maximum, field by field, so the strongest
reason wins; under torchrun the same maximum is taken across ranks with one all-reduce, so every
rank acts on the same plan at the same step. The engine's sources implement `Source`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from contracts.control import Pending
from contracts.events import EXIT_FINISHED, EXIT_STOPPED


class Reason(IntEnum):
    """Why the loop leaves its rhythm at a boundary, weakest first (the greater one wins)."""

    CONTINUE = 0
    CHECKPOINT_DUE = 1      # checkpoint.every_minutes has passed
    CHECKPOINT_COMMAND = 2  # the `checkpoint` command
    STOP_COMMAND = 3        # the `stop` command
    SIGNAL = 4              # SIGTERM or Ctrl+C, on any rank
    REQUEUE = 5             # a Slurm job near its time limit (USR1, the requeue command): save, requeue, exit
    PREEMPTED = 6           # the machine is being taken away (spot interruption notice)
    PRUNED = 7              # a sweep's pruner gave up on this trial
    TARGET_REACHED = 8      # an evaluation reached train.target with train.stop_at_target: an early finish

    @property
    def stops(self) -> bool:
        """True for the reasons that end the run (after a checkpoint)."""
        return self >= Reason.STOP_COMMAND

    @property
    def finishes(self) -> bool:
        """True for a reason that ends the run early as finished (exit 0), not stopped."""
        return OUTCOMES[self][0] == "finished" and self.stops


#: How a run that stopped for a reason ends: its final state and exit code.
OUTCOMES: dict[Reason, tuple[str, int]] = {
    Reason.CONTINUE: ("finished", EXIT_FINISHED),
    Reason.STOP_COMMAND: ("stopped", EXIT_STOPPED),
    Reason.SIGNAL: ("stopped", EXIT_STOPPED),
    Reason.REQUEUE: ("requeued", EXIT_STOPPED),
    Reason.PREEMPTED: ("preempted", EXIT_STOPPED),
    Reason.PRUNED: ("pruned", EXIT_STOPPED),
    Reason.TARGET_REACHED: ("finished", EXIT_FINISHED),
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


class Source:
    """Anything that may ask for a stop, a checkpoint, a pause or a new lr at a step boundary.

    Only `poll` is required; the rest are optional parts with no-op defaults, so a source says
    what it needs through this interface and the training loop knows none of them by name.
    """

    #: True for a source that must also be asked between evaluation batches (`urgent`): every
    #: rank then agrees there too, at the same batch index, whenever any rank's source says so.
    between_batches: bool = False

    def poll(self) -> Plan:
        """This boundary's plan (never blocks)."""
        return Plan()

    def wait(self, timeout: float) -> Plan | None:
        """While paused: block up to `timeout` s for the next plan (None: this source never waits)."""
        return None

    def urgent(self) -> Plan:
        """Between evaluation batches: a plan that cannot wait for the epoch's end."""
        return Plan()

    def start(self) -> None:
        """The run starts training (threads, sockets, signal handlers)."""

    def close(self) -> None:
        """The run has ended (undo `start`)."""

    def saved(self) -> None:
        """A checkpoint was just taken."""

    def outcome(self, plan: Plan) -> dict[str, Any]:
        """Extra fields for the final state event of a run that stopped for `plan`."""
        return {}


#: Words for a stop reason that came from another rank (this rank's sources said nothing).
ELSEWHERE = {Reason.STOP_COMMAND: "stop command", Reason.SIGNAL: "a signal on another rank",
             Reason.PREEMPTED: "preempted", Reason.PRUNED: "pruned", Reason.TARGET_REACHED: "target reached"}


class StopRun(Exception):
    """Leave the loop at a step boundary, for the agreed plan's reason (with words for it)."""

    def __init__(self, plan: Plan):
        plan.why = plan.why or ELSEWHERE.get(plan.reason, plan.reason.name.lower())
        super().__init__(plan.why)
        self.plan = plan
