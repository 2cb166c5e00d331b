"""The loop's checkpoints: save at a step boundary, and wait (paused) when the disk is full.

A mixin of the Trainer (engine.train.trainer), like the cockpit's screens and their controls:
it reads the Trainer's position, sources and Checkpointer.
"""

from __future__ import annotations

import time
from typing import Any

from contracts.control import Pending
from contracts.stops import Pause, Plan, Reason, StopRun
from engine.checkpoint.space import DiskFull, DiskFullTimeout, free_bytes, human

#: While paused for disk space: retry a checkpoint at least this often, whatever the free space says.
DISK_FULL_RETRY_S = 30.0
#: Retry at once when this much more than the checkpoint's size is free.
DISK_FULL_MARGIN = 1 << 20


class Saving:
    """Checkpoints at step boundaries, on every rank at the same step."""

    def save(self, reason: str, best: bool = False, pending: list[Pending] = (), wait: bool = False,
             patient: bool = True) -> None:
        """Checkpoint now, on every rank at the same step, never from non-finite training
        (a second save at the same step only moves `best` and answers `pending`).

        A disk with no room for it pauses training here until the checkpoint is written
        (`patient`; otherwise DiskFull is raised). `wait` (the same on every rank) writes it
        on this thread even with checkpoint.async_save."""
        new = self.pos.step != self.checkpoints.last_step
        if new:
            self.guard.before_save(self.meter.pending_loss() if self.meter else None, self.pos.step)
        previous = self.state
        entering = new and previous not in ("stopping", "checkpointing")
        if entering:  # a stop's own save stays in "stopping" (one state event, with its reason)
            self.set_state("checkpointing")
        if new:
            for source in self.sources:
                source.saved()  # checkpoint.every_minutes counts from the start of a save
        try:
            began = time.monotonic()
            reply = self.checkpoints.save(self.pos.step, reason, self.snapshot, best, pending, wait)
            self.stalls.append(time.monotonic() - began)
            if self.ledger is not None:
                self.ledger.add("checkpoint", self.stalls[-1])
        except DiskFull as full:
            if not patient:
                if entering:
                    self.set_state(previous)
                raise
            reply, previous = self._wait_for_space(full, reason, best, pending, previous)
            entering = True
        if entering:
            self.set_state(previous)
        reply()  # a written checkpoint is answered once the state is back

    def _wait_for_space(self, full: DiskFull, reason: str, best: bool, pending: list[Pending],
                        then: str) -> tuple[Any, str]:
        """The disk had no room for this step's checkpoint: pause (state `paused`, the reason
        naming the folder, the free space, the size and the last good checkpoint), retry when
        space was freed (and every DISK_FULL_RETRY_S anyway: quotas do not show in the free
        space), and return (the reply, the state to go back to) once it is written. Commands
        are obeyed meanwhile; a stop tries once more and stops without it if it still does not
        fit; after checkpoint.disk_full_wait_s the run fails (DiskFullTimeout)."""
        c, step, start = self.cfg.checkpoint, self.pos.step, time.monotonic()
        pending, last_try = list(pending), start
        self.set_state("paused", reason=full.reason)
        self.tele.emit("log", level="warning", message=(
            f"{full.reason}. Training is paused at step {step} and continues by itself once the checkpoint "
            f"is written; it stops (exit 1) after checkpoint.disk_full_wait_s = {c.disk_full_wait_s:g} s "
            "without room. Nothing is lost meanwhile."))
        while True:
            agreed, retry, out_of_time, then = self._space_round(full, start, last_try, pending, then)
            if not (agreed.reason.stops or retry or out_of_time):
                if time.monotonic() - self.last_status >= self.cfg.logging.status_every_s:
                    self.write_status()
                continue
            try:
                reply = self.checkpoints.save(step, reason, self.snapshot, best, pending, wait=True)
            except DiskFull as again:
                full, last_try = again, time.monotonic()
                self._still_full(full, agreed, pending, out_of_time, start)
                continue
            self.tele.emit("log", level="info", message=(
                f"checkpoint of step {step} written after {time.monotonic() - start:.0f} s waiting "
                "for disk space; training continues"))
            if agreed.reason.stops:
                self.set_state(then)
                reply()
                raise StopRun(agreed)
            return reply, then

    def _space_round(self, full: DiskFull, start: float, last_try: float, pending: list[Pending],
                     then: str) -> tuple[Plan, float, float, str]:
        """One round of the wait: every source's plan and whether to retry (rank 0 looks at the
        free space), agreed by every rank; `set`, `pause` and `continue` are answered at once,
        `checkpoint` commands join `pending` (the retry answers them). Returns (the agreed plan,
        retry, out of time, the state to go back to)."""
        plan = Plan()
        for source in self.sources:
            plan = plan.fold(source.poll())
        if not plan.reason.stops and not plan.pending:
            plan = plan.fold(self._wait(0.5))
        now, retry, out_of_time = time.monotonic(), 0.0, 0.0
        if self.dist.main:
            free = free_bytes(self.checkpoints.store.folder)
            room = free is None or full.needed is None or free >= full.needed + DISK_FULL_MARGIN
            asked = plan.reason == Reason.CHECKPOINT_COMMAND
            retry = float(room or asked or now - last_try >= DISK_FULL_RETRY_S)
            out_of_time = float(now - start >= self.cfg.checkpoint.disk_full_wait_s)
        self.unanswered = plan.pending + pending
        values = self.dist.agree_max(plan.vector() + [retry, out_of_time])
        agreed = plan.agreed(values[:3])
        by_cmd: dict[str, list[Pending]] = {}
        for p in agreed.pending:
            by_cmd.setdefault(p.cmd, []).append(p)
        if agreed.lr >= 0:
            self._set_lr(agreed.lr, by_cmd.get("set", []))
        if agreed.pause == Pause.PAUSE:
            then = "paused"
        elif agreed.pause == Pause.CONTINUE and then == "paused":
            then = "running"
        for p in by_cmd.get("pause", []) + by_cmd.get("continue", []):
            p.answer(state="paused", step=self.pos.step, reason=full.reason,
                     after=then)  # after: the state once the checkpoint is written
        pending += by_cmd.get("checkpoint", [])  # answered by the retry's checkpoint
        return agreed, values[3], values[4], then

    def _still_full(self, full: DiskFull, agreed: Plan, pending: list[Pending], out_of_time: float,
                    start: float) -> None:
        """A retry found no room again: a stop stops without it (the last good checkpoint stays),
        out of time fails the run, otherwise the pause goes on (its reason updated)."""
        if agreed.reason.stops:
            self.unsaved = full
            agreed.pending = agreed.pending + pending  # checkpoint commands: told it failed
            raise StopRun(agreed) from None
        if out_of_time:
            raise DiskFullTimeout(self._out_of_space(full, time.monotonic() - start)) from None
        if full.reason != self.state_reason:  # the free space changed: say so
            self.set_state("paused", reason=full.reason)

    def _out_of_space(self, full: DiskFull, waited: float) -> str:
        """The one-paragraph message of a run that waited for disk space in vain."""
        last = full.last_good or "none (no checkpoint of this run was ever written)"
        return (f"the checkpoint of step {full.step} could not be written: {full.folder} has "
                f"{human(full.free)} free and the checkpoint needs about {human(full.needed)}, and no space "
                f"was freed in {waited:.0f} s (checkpoint.disk_full_wait_s = {self.cfg.checkpoint.disk_full_wait_s:g}). "
                f"Training stopped at step {full.step}; the last good checkpoint is {last}, intact: free some "
                f"space, then continue with `cockpit-engine resume {self.run.path}`.")
