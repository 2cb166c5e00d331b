"""The loop's step boundaries: obey the sources' agreed plan, and end the run (finished, stopped,
failed) with its last checkpoint.

A mixin of the Trainer (engine.train.trainer): it reads the Trainer's sources, position and
Checkpointer, and knows no source by name.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any

from contracts.control import Pending
from contracts.events import EXIT_FAILED
from contracts.stops import OUTCOMES, Pause, Plan, Reason, StopRun
from engine.checkpoint.space import DiskFull, human
from engine.model.convert import finalize
from engine.parallel.dist import collective_failure
from engine.parallel.wrap import check_replicas
from engine.train.guard import Diverged
from engine.train.measures import measure, wanted
from engine.train.schedule import peak_for
from engine.train.state import RunResult


def debugging() -> bool:
    """`--debug`: failures the engine explains still show their traceback."""
    return os.environ.get("COCKPIT_DEBUG", "") not in ("", "0")


class Obeying:
    """Commands, signals and every other source's plan, agreed by every rank at each boundary."""

    def obey(self) -> None:
        """Fold every source's plan, agree on it with every rank, then act on it, all at this
        step boundary; block here (still agreeing, every 0.5 s) while paused."""
        while True:
            plan = Plan()
            for source in self.sources:
                plan = plan.fold(source.poll())
            if self.state == "paused" and not plan.reason.stops and not plan.pending:
                plan = plan.fold(self._wait(0.5))
            self.unanswered = plan.pending  # answered by _carry_out, _finish or, failing, _fail
            self._carry_out(plan.agreed(self.dist.agree_max(plan.vector())))
            if self.state != "paused":
                return
            if time.monotonic() - self.last_status >= self.cfg.logging.status_every_s:
                self.write_status()

    def _carry_out(self, plan: Plan) -> None:
        """Act on an agreed plan (every rank), answering rank 0's commands."""
        if plan.reason == Reason.REQUEUE and self.finished():  # done: nothing is left to requeue for
            for p in plan.pending:
                if p.cmd == "requeue":
                    p.answer(False, error="the run has trained its last step: it finishes instead of requeueing")
            plan = Plan(pause=plan.pause, lr=plan.lr, pending=[p for p in plan.pending if p.cmd != "requeue"])
        by_cmd: dict[str, list[Pending]] = {}
        for p in plan.pending:
            by_cmd.setdefault(p.cmd, []).append(p)
        if plan.lr >= 0:
            self._set_lr(plan.lr, by_cmd.get("set", []))
        for p in by_cmd.get("target", []):
            self._set_target(p)
        if plan.reason in (Reason.CHECKPOINT_DUE, Reason.CHECKPOINT_COMMAND):
            self.save("command" if plan.reason == Reason.CHECKPOINT_COMMAND else plan.why or "periodic",
                      pending=by_cmd.get("checkpoint", []))
        if plan.pause == Pause.PAUSE and self.state != "paused":
            self.set_state("paused")
        elif plan.pause == Pause.CONTINUE and self.state == "paused":
            self.set_state("running")
        for p in by_cmd.get("pause", []) + by_cmd.get("continue", []):
            p.answer(state=self.state, step=self.pos.step)
        if plan.reason.stops:
            raise StopRun(plan)

    def _wait(self, timeout: float) -> Plan:
        """Paused: wait for the first source that waits (the control socket), else not at all
        (the agreement that follows is then the wait: ranks other than 0 block on rank 0's)."""
        for source in self.sources:
            waited = source.wait(timeout)
            if waited is not None:
                return waited
        return Plan()

    def urgent(self) -> None:
        """Between evaluation batches (and before an epoch): a spot notice stops the run at once,
        agreed by every rank at the same batch, so a long evaluation does not eat the window."""
        self.progress.tick()  # a long evaluation still moves, for the hang watchdog
        if not self.watching:
            return
        plan = Plan()
        for source in self.sources:
            if source.between_batches:
                plan = plan.fold(source.urgent())
        plan = plan.agreed(self.dist.agree_max(plan.vector()))
        if plan.reason.stops:
            raise StopRun(plan)

    def _set_lr(self, lr: float, pending: list[Pending]) -> None:
        """Make the current lr the requested one; the schedule keeps its shape from here."""
        self.pos.peak_lr = peak_for(lr, self.pos.step - self.pos.skipped, self.total_steps, self.cfg.schedule)
        self.tele.emit("log", level="info", message=f"learning rate set to {lr:g} at step {self.pos.step}")
        for p in pending:
            p.answer(lr=lr, peak_lr=self.pos.peak_lr, step=self.pos.step)

    def _set_target(self, p: Pending) -> None:
        """The `target` command (rank 0): a new train.target / stop_at_target from this boundary on,
        recorded as a `target` event (the projection sink answers it; a resume keeps it)."""
        from engine.train.target import change

        if self.target_hook is None:
            p.answer(False, error="target: this engine has no target hook (not rank 0)")
            return
        try:
            fields = change(self.target_hook, p.request, self.cfg.data.name)
        except ValueError as exc:
            p.answer(False, error=f"{exc}; nothing was changed")
            return
        self.tele.emit("target", step=self.pos.step, **fields)
        p.answer(step=self.pos.step, **fields)

    def _finish(self, plan: Plan) -> RunResult:
        """The last checkpoint, then the final state the reason decides (finished, stopped...)."""
        state, code = OUTCOMES[plan.reason]
        early = plan.reason.finishes  # an early finish (the target reached): a final save, exit 0
        stops = plan.reason.stops and not early
        if stops:
            self.set_state("stopping", reason=plan.why)
        checkpoint_asked = [p for p in plan.pending if p.cmd == "checkpoint"]  # answered by this save
        try:
            self._last_save(stops, checkpoint_asked)
        except StopRun as stop:  # a stop while the final checkpoint waited for disk space
            return self._finish(stop.plan)
        if self.unsaved is not None:
            return self._stopped_unsaved(plan)
        self.checkpoints.flush()
        if not stops:
            verdict = check_replicas(self.model, self.dist)
            if verdict:
                self.tele.emit("log", level=verdict[0], message=verdict[1])
            finalize(self.model, self.converters)
            self._measure()
        latest = self.checkpoints.latest()
        extra: dict[str, Any] = {}
        for source in self.sources:
            extra.update(source.outcome(plan))
        for p in plan.pending:
            if p.cmd in ("stop", "prune", "requeue"):
                p.answer(state=state, step=self.pos.step, path=str(latest) if latest else None)
        self.set_state(state, **({"reason": plan.why, "exit_code": code, **extra} if stops or early else {}))
        # Leave together: a rank that tears its process group down while another still talks
        # to it can abort at exit (seen once with two torchrun agents). A no-op in one process.
        self.dist.barrier()
        return RunResult(code, state, self.pos.step, plan.why, self.metrics, self.pos.best)

    def _measure(self) -> None:
        """A sweep trial's `measures` event (parameters, CPU latency), once, on rank 0."""
        params, latency = wanted(self.cfg)
        if not (params and self.dist.main):
            return
        try:
            self.tele.emit("measures", **measure(self.cfg, self.spec, latency))
        except Exception as exc:  # noqa: BLE001 - the run stays finished; the trial lacks the objective
            self.tele.emit("log", level="warning", message=f"measuring the model for the sweep failed: {exc}")

    def _last_save(self, stops: bool, pending: list[Pending]) -> None:
        """The final or stop checkpoint. A stop does not wait for disk space: it tries (a
        background write that failed, once more) and, without room, stops without it."""
        if self.unsaved is not None:  # the stop's save was tried while waiting for space
            return
        reason = "stop" if stops else "final"
        try:
            self.save(reason, pending=pending, patient=not stops)
            if self.checkpoints.settle() is not None:  # the background write found the disk full
                self.save(reason, wait=True, patient=not stops)
        except DiskFull as full:
            self.unsaved = full

    def _stopped_unsaved(self, plan: Plan) -> RunResult:
        """A stop whose checkpoint the disk had no room for: the last good one is what remains."""
        full = self.unsaved
        state, code = OUTCOMES[plan.reason] if full.last_good else ("failed", EXIT_FAILED)
        why = (f"{plan.why}; the checkpoint of step {full.step} could not be written (disk full: "
               f"{human(full.free)} free in {full.folder}), so the last good checkpoint is "
               f"{full.last_good or 'none'}: a resume continues from there")
        latest = self.checkpoints.latest()
        for p in plan.pending:
            if p.cmd == "checkpoint":
                p.answer(False, error=why)
            elif p.cmd in ("stop", "prune", "requeue"):
                p.answer(state=state, step=self.pos.step, path=str(latest) if latest else None, reason=why)
        self.set_state(state, reason=why, exit_code=code)
        self.dist.barrier()
        return RunResult(code, state, self.pos.step, why, self.metrics, self.pos.best)

    def _fail(self, exc: BaseException) -> RunResult:
        """Report a failure (traceback in the events and engine.log): state failed, exit 1."""
        # an explained failure (its message says it all) shows no traceback unless --debug
        trace = "" if getattr(exc, "explained", False) and not debugging() else traceback.format_exc()
        if not self.dist.main:  # only rank 0 writes events: the others say it on stderr
            print(f"cockpit-engine: rank {self.dist.rank} failed: {trace or exc}",
                  file=sys.stderr, flush=True)
        reason = str(exc) if isinstance(exc, Diverged) or not trace else f"{type(exc).__name__}: {exc}"
        if self.dist.active and collective_failure(exc):
            lost = self.watchdog.culprit_now() if self.watchdog is not None else None
            who = (f"rank {lost['rank']} on {lost['host']} (pid {lost['pid']}) "
                   f"{'exited' if lost['why'] == 'exited' else 'stopped answering'}" if lost else
                   "another rank died or stopped answering")
            reason = (f"{who} (collectives give up after "
                      f"distributed.timeout_s = {self.cfg.distributed.timeout_s:g} s): {reason}")
        for p in self.unanswered:  # commands taken off the socket before the failure
            if not p.done.is_set():
                p.answer(False, error=f"the run failed: {reason}")
        self.tele.emit("error", message=reason, **({"traceback": trace} if trace else {}))
        self.set_state("failed", reason=reason, exit_code=EXIT_FAILED)
        return RunResult(EXIT_FAILED, "failed", self.pos.step, reason, self.metrics, self.pos.best)
