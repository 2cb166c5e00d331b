"""The training loop: restore, then step / evaluate / checkpoint / obey, then finish.

The loop only orchestrates. What a batch means is the task's (engine.train.task); how the
model changes before training, the converters'; why the loop stops or saves, the boundary
sources' (contracts.stops.Source); how checkpoints are written, the Checkpointer's
(engine.checkpoint.saver); what is reported, the telemetry sinks'. The session builds the
converters and sources (engine.run.assemble) and hands them in: the loop knows none by name.
"""

from __future__ import annotations

import errno
import math
import os
import sys
import time
import traceback
from typing import Any

import torch
from torch import nn

from contracts.control import Pending
from contracts.events import EXIT_FAILED
from contracts.layout import RunLayout
from contracts.stops import OUTCOMES, Pause, Plan, Reason, Source, StopRun
from engine.checkpoint.saver import Checkpointer
from engine.checkpoint.space import DiskFull, DiskFullTimeout, free_bytes, human
from engine.checkpoint.store import CheckpointStore
from engine.config.schema import Config
from engine.data.loaders import build_loaders
from engine.data.sources import DataSpec
from engine.model.convert import ModelConverter, convert, finalize, prepare_inputs, summaries
from engine.model.teacher import Teacher
from engine.parallel.dist import Dist, collective_failure, device_for
from engine.parallel.wrap import check_replicas, grad_scaler, wrap
from engine.telemetry.doctor import Doctor, suggest
from engine.telemetry.flops import flops_per_sample, memory_fields, peak_tflops, step_flops
from engine.telemetry.sinks import Telemetry
from engine.train.evaluate import EvalHook, evaluate, hooks_plan, improves
from engine.train.guard import Diverged, DivergenceGuard
from engine.train.optim import build_optimizer
from engine.train.schedule import highest_if_set, lr_at, peak_for, warmup_warning
from engine.train.state import Position, RunResult, restore, snapshot
from engine.train.step import StepMeter, Stepper, compiled
from engine.train.task import build_task


#: While paused for disk space: retry a checkpoint at least this often, whatever the free space says.
DISK_FULL_RETRY_S = 30.0
#: Retry at once when this much more than the checkpoint's size is free.
DISK_FULL_MARGIN = 1 << 20


def debugging() -> bool:
    """`--debug`: failures the engine explains still show their traceback."""
    return os.environ.get("COCKPIT_DEBUG", "") not in ("", "0")


class Trainer:
    """One run in one process (one rank of several under torchrun)."""

    def __init__(self, cfg: Config, spec: DataSpec, model: nn.Module, run: RunLayout,
                 telemetry: Telemetry, resume: dict[str, Any] | None = None, dist: Dist | None = None,
                 teacher: Teacher | None = None, converters: list[ModelConverter] = (),
                 sources: list[Source] = (), socket: Any = None):
        self.cfg, self.spec, self.run, self.tele = cfg, spec, run, telemetry
        self.dist = dist or Dist()
        t = cfg.train
        self.device = device_for(t.device, self.dist)
        self.converters = list(converters)
        self.sources = list(sources)  # asked at every step boundary, in this order (plans fold by max)
        self.socket = socket  # the control socket's path, for status (rank 0)
        model = convert(model.to(self.device), self.converters)
        for line in summaries(self.converters):
            self.tele.emit("log", level="info", message=line)
        sample = spec.train[0][0]
        self.flops = flops_per_sample(model, tuple(sample.shape)) if hasattr(sample, "shape") else None
        self.net = wrap(model, self.dist, self.device, cfg.distributed.sync_batchnorm)
        self.model = self.net.model
        self.forward = compiled(self.net.forward, t.compile, t.compile_mode, self.tele.emit)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scaler = grad_scaler(t.precision == "fp16", self.dist, self.device)
        self.teacher = teacher
        self.task = build_task(cfg, teacher.model.to(self.device) if teacher else None)
        self.stepper = Stepper(self.net, self.forward, self.optimizer, self.scaler, self.task, self.device,
                               t.precision, t.grad_accum_steps, t.grad_clip_norm)
        self.data = build_loaders(cfg, spec, self.dist.rank, self.dist.world, self.device)
        self.sampler, self.loader, self.batches = self.data.sampler, self.data.train, self.data.batches
        self.steps_per_epoch = math.ceil(self.batches / t.grad_accum_steps)
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        self.pos = Position(peak_lr=cfg.optim.lr)
        self.checkpoints = Checkpointer(CheckpointStore(run.checkpoints, cfg.checkpoint.keep_last), self.dist,
                                        self.tele.emit, cfg.checkpoint.async_save, self.device.type == "cuda")
        self.guard = DivergenceGuard(self.model, self.dist, t.precision, self.checkpoints.last_good)
        self.watching = False  # any rank's source asked between evaluation batches (agreed in train)
        self.eval_hooks: list[EvalHook] = []
        self.state, self.last_status, self.last_loss = "starting", 0.0, None
        self.metrics: dict[str, float] = {}
        self.meter: StepMeter | None = None
        self.unanswered: list[Pending] = []
        self.state_reason: str | None = None  # why the run is in its state (a pause for a full disk)
        self.unsaved: DiskFull | None = None  # a stop whose checkpoint the disk had no room for
        self.doctor = Doctor()
        self.peak = t.peak_tflops or (
            peak_tflops(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None)
        self.rank_pids = self.dist.gather(os.getpid()) if self.dist.active else None
        # batches on the device as the converted model takes them (training, validation)
        self.prepare = lambda x: prepare_inputs(self.data.normalize_train(x), self.converters)
        self.prepare_val = lambda x: prepare_inputs(self.data.normalize(x), self.converters)
        if resume is not None:
            self._restore(resume)
        warning = warmup_warning(cfg.schedule, self.total_steps)
        if warning:
            self.tele.emit("log", level="warning", message=warning)

    def _restore(self, state: dict[str, Any]) -> None:
        self.pos = restore(state, self.model, self.optimizer, self.scaler, self.dist)
        self.checkpoints.last_step = self.pos.step

    def snapshot(self, rngs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The checkpoint dictionary of this step boundary (engine.train.state.snapshot)."""
        state = snapshot(self.model, self.optimizer, self.scaler, self.pos, self.cfg, self.dist, rngs)
        if self.teacher is not None:  # resume refuses another teacher (engine.run.session)
            state["teacher"] = {"source": self.teacher.source, "sha256": self.teacher.sha256}
        return state

    def highest_lr_if_set(self, lr: float) -> float:
        """The highest rate the schedule reaches from now on if `lr` is set now (a `set` check)."""
        return highest_if_set(lr, self.pos.step - self.pos.skipped, self.total_steps, self.cfg.schedule)

    # ---- the loop ---------------------------------------------------------------------

    def train(self) -> RunResult:
        """Run to the end, to a stop or to a failure; the result says which (and its exit code)."""
        # agreed, so that every rank takes part in the mid-evaluation agreement when any rank asks
        urgent = any(s.between_batches for s in self.sources)
        self.watching = bool(self.dist.agree_max([1.0 if urgent else 0.0])[0])
        started: list[Source] = []
        try:
            for source in self.sources:
                source.start()
                started.append(source)
            self.set_state("running")
            self._announce_teacher()
            try:
                while not self.finished():
                    self.run_epoch()
                plan = Plan()
            except StopRun as stop:
                plan = stop.plan
            return self._finish(plan)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then exit 1
            return self._fail(exc)
        finally:
            self.checkpoints.close()  # a failed run still finishes the writes it queued
            for source in reversed(started):
                source.close()

    def _announce_teacher(self) -> None:
        """Distillation: the teacher's own validation metrics, once per session (every rank)."""
        if self.teacher is None:
            return
        metrics = evaluate(self.teacher.model, self.data.val, self.task, self.device, self.cfg.train.precision,
                           self.data.normalize, self.data.val_valid,
                           self.dist.sum, self.urgent)
        d = self.cfg.distill
        self.tele.emit("distill", step=self.pos.step, teacher=self.teacher.source, sha256=self.teacher.sha256,
                       metrics=metrics, temperature=d.temperature, alpha=d.alpha)

    def finished(self) -> bool:
        return self.pos.step >= self.total_steps or self.pos.epoch >= self.cfg.train.epochs

    def run_epoch(self) -> None:
        """Train from the current position to the end of the epoch (or max_steps)."""
        self.urgent()  # a notice that came during start-up, the teacher or the last evaluation
        self.sampler.set_position(self.pos.epoch, self.pos.batch * self.cfg.train.batch_size)
        self.model.train()
        self.meter = meter = StepMeter(self.device)
        accum = self.cfg.train.grad_accum_steps
        for x, y in meter.timed(self.loader):
            last = (self.pos.batch + 1) % accum == 0 or self.pos.batch + 1 >= self.batches
            self.stepper.micro_step(x, y, meter, self.prepare, sync=last)
            self.pos.batch += 1
            if not last:
                continue
            if not self.stepper.optimizer_step(meter, self.current_lr()):
                self.pos.skipped += 1
            self.pos.step += 1
            self.after_step(meter)
            if self.pos.step >= self.total_steps:
                break
        self.end_epoch()

    def current_lr(self) -> float:
        """The schedule's rate for the next step; skipped fp16 steps do not advance it."""
        return lr_at(self.pos.step - self.pos.skipped, self.total_steps, self.pos.peak_lr, self.cfg.schedule)

    def after_step(self, meter: StepMeter) -> None:
        """Log, checkpoint on schedule, and obey commands and signals: all at a step boundary."""
        if self.pos.step % self.cfg.logging.every_steps == 0 or self.pos.step == self.total_steps:
            self.log_step(meter)
        c = self.cfg.checkpoint
        if c.every_steps and self.pos.step % c.every_steps == 0:
            self.save("periodic")
        full = self.checkpoints.check()
        if full is not None:  # a background write found the disk full: write this step instead
            self.save("periodic", wait=True)
        self.obey()
        if time.monotonic() - self.last_status >= self.cfg.logging.status_every_s:
            self.write_status()

    def log_step(self, meter: StepMeter) -> None:
        """One step event; reading the loss here is the only host-device sync of the step."""
        report = meter.report(self.dist)
        self.pos.samples += report["samples"]
        self.pos.train_seconds += report["wall_s"]
        self.last_loss = report["loss"]
        self.guard.loss(report["loss"], self.pos.step)
        elapsed = self.pos.train_seconds
        eta = elapsed / max(1, self.pos.step) * (self.total_steps - self.pos.step) if elapsed else None
        self.tele.emit(
            "step", step=self.pos.step, epoch=self.pos.epoch, batch=self.pos.batch,
            batches_per_epoch=self.batches, loss=report["loss"], losses=report["losses"], lr=report["lr"],
            **({"accuracy": report["accuracy"]} if report.get("accuracy") is not None else {}),
            samples_per_s=report["samples_per_s"], steps_per_s=report["steps_per_s"], eta_s=eta,
            train_s=elapsed, time_data_s=report["data"], time_h2d_s=report["h2d"],
            time_compute_s=report["compute"], time_optim_s=report["optim"], time_comm_s=report["comm"],
            skipped_steps=self.pos.skipped, **step_flops(self.flops, report["samples_per_s"] / self.dist.world, self.peak),
            **memory_fields(self.device), **({"world_size": self.dist.world} if self.dist.active else {}),
        )
        self.doctor.add(report["data"] + report["h2d"], report["compute"] + report["optim"], report["comm"])
        verdict = self.doctor.changed()
        if verdict is not None:
            named = self._doctor_value(verdict.bound)
            if named is not None:
                verdict.field, verdict.current, verdict.value = named
            self.tele.emit("doctor", step=self.pos.step, bound=verdict.bound, share=verdict.share,
                           field=verdict.field, remedy=verdict.remedy, message=verdict.message(),
                           **({"value": verdict.value, "current": verdict.current} if named else {}))

    def _doctor_value(self, bound: str):
        """(field, current, new) the doctor can name for this verdict (doctor.suggest), or None."""
        d, gpu = self.cfg.data, self.device.type == "cuda"
        peak = memory_fields(self.device).get("mem_peak_bytes")
        total = torch.cuda.get_device_properties(self.device).total_memory if gpu else None
        return suggest(bound, d.num_workers, d.pin_memory, self.cfg.train.batch_size, gpu, peak, total)

    def end_epoch(self) -> None:
        """Validate when the epoch is complete (or the run is), tell the hooks, then checkpoint."""
        epoch_done = self.pos.batch >= self.batches
        if not epoch_done and self.pos.step < self.total_steps:
            return
        # DDP's wrapper is for training; FSDP needs its own forward (it gathers the weights)
        self.model.eval()
        metrics = evaluate(self.model if self.dist.replicated else self.forward, self.data.val, self.task,
                           self.device, self.cfg.train.precision,
                           self.prepare_val,
                           self.data.val_valid, self.dist.sum, self.urgent)
        self.model.train()
        self.metrics = metrics
        self.tele.emit("eval", step=self.pos.step, epoch=self.pos.epoch, metrics=metrics)
        epoch = self.pos.epoch
        if epoch_done:
            self.pos.epoch, self.pos.batch = self.pos.epoch + 1, 0
        best = improves(metrics, self.pos.best, self.cfg.checkpoint.best_metric)
        if best:
            self.pos.best = metrics[self.cfg.checkpoint.best_metric.removeprefix("val_")]
        if best or self.cfg.checkpoint.on_epoch_end:
            self.save("epoch", best=best)
        plan = hooks_plan(self.eval_hooks, self.pos.step, epoch, metrics)
        plan = plan.agreed(self.dist.agree_max(plan.vector()))  # a hook on one rank stops them all
        if plan.reason.stops:
            raise StopRun(plan)

    # ---- checkpoints and divergence ---------------------------------------------------

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
            reply = self.checkpoints.save(self.pos.step, reason, self.snapshot, best, pending, wait)
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
                out_of_time = float(now - start >= c.disk_full_wait_s)
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
                p.answer(state="paused", step=step, reason=full.reason,
                         after=then)  # after: the state once the checkpoint is written
            pending += by_cmd.get("checkpoint", [])  # answered by the retry's checkpoint
            if agreed.reason.stops or values[3] or values[4]:
                try:
                    reply = self.checkpoints.save(step, reason, self.snapshot, best, pending, wait=True)
                except DiskFull as again:
                    full, last_try = again, time.monotonic()
                    if agreed.reason.stops:  # stop without it: the last good checkpoint stays
                        self.unsaved = full
                        agreed.pending = agreed.pending + pending  # checkpoint commands: told it failed
                        raise StopRun(agreed) from None
                    if values[4]:
                        raise DiskFullTimeout(self._out_of_space(full, time.monotonic() - start)) from None
                    if full.reason != self.state_reason:  # the free space changed: say so
                        self.set_state("paused", reason=full.reason)
                    continue
                self.tele.emit("log", level="info", message=(
                    f"checkpoint of step {step} written after {time.monotonic() - start:.0f} s waiting "
                    "for disk space; training continues"))
                if agreed.reason.stops:
                    self.set_state(then)
                    reply()
                    raise StopRun(agreed)
                return reply, then
            if time.monotonic() - self.last_status >= self.cfg.logging.status_every_s:
                self.write_status()

    def _out_of_space(self, full: DiskFull, waited: float) -> str:
        """The one-paragraph message of a run that waited for disk space in vain."""
        last = full.last_good or "none (no checkpoint of this run was ever written)"
        return (f"the checkpoint of step {full.step} could not be written: {full.folder} has "
                f"{human(full.free)} free and the checkpoint needs about {human(full.needed)}, and no space "
                f"was freed in {waited:.0f} s (checkpoint.disk_full_wait_s = {self.cfg.checkpoint.disk_full_wait_s:g}). "
                f"Training stopped at step {full.step}; the last good checkpoint is {last}, intact: free some "
                f"space, then continue with `cockpit-engine resume {self.run.path}`.")

    # ---- commands, signals, stop reasons ------------------------------------------------

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
        by_cmd: dict[str, list[Pending]] = {}
        for p in plan.pending:
            by_cmd.setdefault(p.cmd, []).append(p)
        if plan.lr >= 0:
            self._set_lr(plan.lr, by_cmd.get("set", []))
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

    def _finish(self, plan: Plan) -> RunResult:
        """The last checkpoint, then the final state the reason decides (finished, stopped...)."""
        state, code = OUTCOMES[plan.reason]
        stops = plan.reason.stops
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
        latest = self.checkpoints.latest()
        extra: dict[str, Any] = {}
        for source in self.sources:
            extra.update(source.outcome(plan))
        for p in plan.pending:
            if p.cmd in ("stop", "prune"):
                p.answer(state=state, step=self.pos.step, path=str(latest) if latest else None)
        self.set_state(state, **({"reason": plan.why, "exit_code": code, **extra} if stops else {}))
        # Leave together: a rank that tears its process group down while another still talks
        # to it can abort at exit (seen once with two torchrun agents). A no-op in one process.
        self.dist.barrier()
        return RunResult(code, state, self.pos.step, plan.why, self.metrics, self.pos.best)

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
            elif p.cmd in ("stop", "prune"):
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
            reason = ("another rank died or stopped answering (collectives give up after "
                      f"distributed.timeout_s = {self.cfg.distributed.timeout_s:g} s): {reason}")
        for p in self.unanswered:  # commands taken off the socket before the failure
            if not p.done.is_set():
                p.answer(False, error=f"the run failed: {reason}")
        self.tele.emit("error", message=reason, **({"traceback": trace} if trace else {}))
        self.set_state("failed", reason=reason, exit_code=EXIT_FAILED)
        return RunResult(EXIT_FAILED, "failed", self.pos.step, reason, self.metrics, self.pos.best)

    # ---- state ------------------------------------------------------------------------

    def set_state(self, state: str, **extra: Any) -> None:
        """Record a state change in the events and status.json (its reason stays in status.json
        for as long as the state lasts)."""
        self.state, self.state_reason = state, extra.get("reason")
        self.tele.emit("state", state=state, step=self.pos.step, **extra)
        self.write_status(**extra)

    def status(self) -> dict[str, Any]:
        """What `status` replies and status.json holds."""
        return {"state": self.state, "step": self.pos.step, "epoch": self.pos.epoch,
                "total_steps": self.total_steps, "loss": self.last_loss, "lr": self.current_lr(),
                "run_id": self.run.path.name, "socket": str(self.socket) if self.socket else None,
                "world_size": self.dist.world, **({"rank_pids": self.rank_pids} if self.rank_pids else {}),
                **({"reason": self.state_reason} if self.state_reason else {})}

    def write_status(self, **extra: Any) -> None:
        self.last_status = time.monotonic()
        if self.dist.main:
            try:
                self.run.write_status(**{**self.status(), **extra})
            except OSError as exc:  # a full disk: status.json keeps its last version meanwhile
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
