"""The engine's own boundary sources: control commands, signals and the checkpoint clock.

Each is a `contracts.stops.Source`; the session builds them (with the spot watcher, the S3 lease
and whatever else a run needs) and hands the list to the Trainer, which only folds their plans.
"""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Any, Callable

from contracts.control import Pending
from contracts.stops import Pause, Plan, Reason, Source


class Signals(Source):
    """SIGTERM and SIGINT as a source: the first asks for a stop, a second Ctrl+C leaves at once."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.previous: dict[int, Any] = {}

    def start(self) -> None:
        self.previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def close(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.name and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: leave at once
        self.name = signal.Signals(signum).name

    def poll(self) -> Plan:
        return Plan(Reason.SIGNAL, why=self.name) if self.name else Plan()


class SlurmSignal(Source):
    """Under Slurm, USR1 sent to the engine itself (`--signal=USR1@S` with one task per rank):
    checkpoint at the next boundary, requeue the job, exit (the batch script written by
    `slurm submit` turns its own USR1 into a `requeue` command instead)."""

    def __init__(self) -> None:
        self.signalled = False
        self.previous: Any = None

    def start(self) -> None:
        self.previous = signal.signal(signal.SIGUSR1, self._on_signal)

    def close(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGUSR1, self.previous)

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self.signalled = True

    def poll(self) -> Plan:
        return Plan(Reason.REQUEUE, why="Slurm sent USR1: the time limit is near") if self.signalled else Plan()


class AutoCheckpoint(Source):
    """checkpoint.every_steps = "auto" as a source (rank 0 decides; the plan is agreed): a
    checkpoint once the Young-Daly interval (engine.checkpoint.interval) has passed in steps,
    recomputed from the measured stall and step time, each new interval a `checkpoint_interval`
    event."""

    def __init__(self, auto: Any, trainer: Callable[[], Any], emit: Callable[..., Any],
                 lookup: Callable[[], Any] | None = None):
        self.auto, self.trainer, self.emit = auto, trainer, emit
        self.seen_stalls = 0
        self.lookup = lookup  # M from what the metadata service says this instance is (assemble.band_lookup)

    def poll(self) -> Plan:
        t = self.trainer()
        if self.lookup is not None:
            found = self.lookup()
            if found is not None:
                self.lookup = None
                mtbi, why = found
                if (mtbi, why) != (self.auto.mtbi_s, self.auto.source):
                    self.auto.set_mtbi(mtbi, why)
        for stall in t.stalls[self.seen_stalls:]:
            self.auto.stalled(stall)
        if len(t.stalls) != self.seen_stalls or self.auto.every is None:
            self.seen_stalls = len(t.stalls)
            if t.step_s:
                changed = self.auto.update(t.step_s)
                if changed:
                    self.emit("checkpoint_interval", step=t.pos.step, **changed)
                    t.interval = changed
        if self.auto.every and t.pos.step - max(0, t.checkpoints.last_step) >= self.auto.every:
            return Plan(Reason.CHECKPOINT_DUE, why="auto")
        return Plan()


class Clock(Source):
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


class Commands(Source):
    """The control socket as a source: the commands that arrived since the last boundary.

    It owns the socket's life (`start` binds it, `close` removes it); `server` is None on ranks
    other than 0, which only take part in the agreement.
    """

    def __init__(self, server: Any, configured_lr: float, highest_for: Callable[[float], float]):
        # highest_for(lr): the highest rate the schedule reaches from now on if lr is set now
        self.server, self.configured_lr, self.highest_for = server, configured_lr, highest_for

    def start(self) -> None:
        if self.server is not None:
            self.server.start()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def poll(self) -> Plan:
        return self._plan(self.server.poll() if self.server is not None else [])

    def wait(self, timeout: float) -> Plan | None:
        """Paused: the next command, waiting up to `timeout` (the heartbeat the other ranks wait on)."""
        if self.server is None:
            return None
        waited = self.server.wait(timeout)
        return self._plan([waited] if waited else [])

    def _plan(self, pending: list[Pending]) -> Plan:
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
        if p.cmd == "requeue":
            if not os.environ.get("SLURM_JOB_ID"):
                p.answer(False, error="requeue: this engine is not a Slurm job (no SLURM_JOB_ID); use stop")
                return Plan()
            return Plan(Reason.REQUEUE, why=str(p.request.get("reason") or "requeue command"), pending=[p])
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


