"""The training loop: restore, then step / evaluate / checkpoint / obey, then finish.

The loop only orchestrates. What a batch means is the task's (engine.train.task); how the
model changes before training, the converters'; why the loop stops or saves, the boundary
sources' (contracts.stops.Source); how checkpoints are written, the Checkpointer's
(engine.checkpoint.saver); what is reported, the telemetry sinks'. The session builds the
converters and sources (engine.run.assemble) and hands them in: the loop knows none by name.
The Trainer's boundary handling (obeying), checkpoints (saving) and step events (reporting)
are mixins of their own modules.
"""

from __future__ import annotations

import errno
import math
import os
import time
from typing import Any

import torch
from torch import nn

from contracts.control import Pending
from contracts.layout import RunLayout
from contracts.stops import Plan, Source, StopRun
from engine.checkpoint.saver import Checkpointer
from engine.checkpoint.space import DiskFull
from engine.checkpoint.store import CheckpointStore
from engine.config.schema import Config
from engine.data.loaders import build_loaders
from engine.data.sources import DataSpec
from engine.model.convert import ModelConverter, convert, prepare_inputs, summaries
from engine.model.teacher import Teacher
from engine.parallel.dist import Dist, device_for
from engine.parallel.wrap import grad_scaler, wrap
from engine.telemetry.alerts import Alerts
from engine.telemetry.doctor import Doctor
from engine.telemetry.ranks import GpuHealth, Stragglers, identity
from contracts.events import FINAL_STATES
from engine.telemetry.cost import CostMeter, process_start
from engine.telemetry.ledger import Ledger, last_event, last_ledger, last_words
from engine.telemetry.watchdog import Progress, Publisher, Watchdog, beat_for, store_of_group
from engine.telemetry.flops import flops_per_sample, peak_tflops
from engine.telemetry.sinks import Telemetry
from engine.train.evaluate import EvalHook, evaluate, hooks_plan, improves
from engine.train.guard import DivergenceGuard
from engine.train.optim import build_optimizer
from engine.train.schedule import highest_if_set, lr_at, warmup_warning
from engine.train.state import Position, RunResult, restore, snapshot
from engine.train.step import StepMeter, Stepper, compiled
from engine.train.obeying import Obeying
from engine.train.reporting import Reporting
from engine.train.saving import Saving
from engine.train.task import build_task


class Trainer(Reporting, Saving, Obeying):
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
        tokens = sample.dtype if spec.kind == "tokens" else None  # token ids trace as ids, images as floats
        self.flops = flops_per_sample(model, tuple(sample.shape), tokens) if hasattr(sample, "shape") else None
        self.teacher = teacher
        self.task = build_task(cfg, teacher.model.to(self.device) if teacher else None)
        self.net = wrap(model, self.dist, self.device, cfg.distributed.sync_batchnorm,
                        pipeline=(cfg.distributed, t.batch_size, self.task.pipeline_loss))
        self.model = self.net.model
        self.forward = compiled(self.net.forward, t.compile, t.compile_mode, self.tele.emit)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scaler = grad_scaler(t.precision == "fp16", self.dist, self.device)
        self.stepper = Stepper(self.net, self.forward, self.optimizer, self.scaler, self.task, self.device,
                               t.precision, t.grad_accum_steps, t.grad_clip_norm)
        self.data = build_loaders(cfg, spec, self.dist.dp_rank, self.dist.dp_world, self.device)
        self.sampler, self.loader, self.batches = self.data.sampler, self.data.train, self.data.batches
        self.steps_per_epoch = math.ceil(self.batches / t.grad_accum_steps)
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        self.pos = Position(peak_lr=cfg.optim.lr)
        self.checkpoints = Checkpointer(CheckpointStore(run.checkpoints, cfg.checkpoint.keep_last), self.dist,
                                        self.tele.emit, cfg.checkpoint.async_save, self.device.type == "cuda")
        self.guard = DivergenceGuard(self.model, self.dist, t.precision, self.checkpoints.last_good)
        self.watching = False  # any rank's source asked between evaluation batches (agreed in train)
        self.eval_hooks: list[EvalHook] = []
        #: Rank 0's train.target hook (engine.train.target), which the `target` command changes.
        self.target_hook: Any = None
        self.state, self.last_status, self.last_loss = "starting", 0.0, None
        self.metrics: dict[str, float] = {}
        self.meter: StepMeter | None = None
        self.unanswered: list[Pending] = []
        self.state_reason: str | None = None  # why the run is in its state (a pause for a full disk)
        self.unsaved: DiskFull | None = None  # a stop whose checkpoint the disk had no room for
        self.doctor = Doctor()
        self.peak = t.peak_tflops or (
            peak_tflops(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None)
        # where this rank is (step, phase), published for rank 0's watchdog without a collective
        self.progress = Progress()
        self.publisher = self._publisher()
        # who each rank is (host, local rank, pid): gathered once, named in `ranks` events and alerts
        self.rank_ids = self.dist.gather(identity()) if self.dist.active else None
        self.rank_pids = [r["pid"] for r in self.rank_ids] if self.rank_ids else None
        self.alerts = Alerts(cfg.alerts, self.tele.emit, active=self.dist.main)
        self.stragglers = Stragglers(cfg.alerts.straggler_ratio, cfg.alerts.straggler_steps, cfg.alerts.straggler_min_s)
        self.gpu_health = GpuHealth()
        self.watchdog = self._watchdog()
        self.paused_at: float | None = None
        self.ledger: Ledger | None = None
        self.stalls: list[float] = []  # each save's stall on the loop (checkpoint.every_steps = "auto")
        self.step_s: float | None = None  # seconds per step over the last logging period (agreed numbers)
        self.interval: dict[str, Any] | None = None  # the automatic checkpoint interval, when there is one
        # batches on the device as the converted model takes them (training, validation)
        self.prepare = lambda x: prepare_inputs(self.data.normalize_train(x), self.converters)
        self.prepare_val = lambda x: prepare_inputs(self.data.normalize(x), self.converters)
        if resume is not None:
            self._restore(resume)
        self.ledger = self._ledger()  # rank 0: where this run's seconds and dollars went (from the resumed step)
        warning = warmup_warning(cfg.schedule, self.total_steps)
        if warning:
            self.tele.emit("log", level="warning", message=warning)

    def _publisher(self) -> Publisher | None:
        """Every rank, with several processes: its place in the store (published once now, so
        that rank 0 finds every key after the identity gather that follows)."""
        if not (self.dist.active and self.cfg.alerts.hang):
            return None
        pub = Publisher(store_of_group(), self.dist.rank, self.progress,
                        beat_for(self.cfg.distributed.hang_warn_s))
        pub.publish()
        return pub

    def _watchdog(self) -> Watchdog | None:
        """Rank 0: hangs (several processes), stalls and the disk."""
        if not self.dist.main:
            return None
        return Watchdog(self.progress, self.alerts, self.cfg.alerts, self.cfg.distributed.hang_warn_s,
                        self.run.checkpoints, store=self.publisher.store if self.publisher else None,
                        world=self.dist.world, ids=self.rank_ids, here=identity()["host"])

    def _ledger(self) -> Ledger | None:
        """Rank 0's goodput ledger, carried on from the run's earlier sessions (engine.telemetry.ledger)."""
        if not self.dist.main:
            return None
        meter = next((s for s in self.tele.sinks if isinstance(s, CostMeter)), None)

        def price() -> Any:
            return meter.price.per_hour if meter is not None and meter.price is not None else None

        slurm = last_event(self.run.events, "slurm") if os.environ.get("SLURM_JOB_ID") else None
        started = process_start()
        return Ledger(self.tele.emit, started, price, previous=last_ledger(self.run.events),
                      resume_step=self.pos.step, queued_s=float((slurm or {}).get("waited_s") or 0.0),
                      last_words=last_words(self.run.events, started))

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
        started: list[Any] = []
        try:
            for thread in (self.publisher, self.watchdog):
                if thread is not None:
                    thread.start()
                    started.append(thread)
            for source in self.sources:
                source.start()
                started.append(source)
            self.set_state("running")
            if self.ledger is not None:
                self.ledger.loop_started()
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
        progress = self.progress
        progress.at("data")
        for x, y in meter.timed(self.loader):
            progress.at("compute")
            last = (self.pos.batch + 1) % accum == 0 or self.pos.batch + 1 >= self.batches
            self.stepper.micro_step(x, y, meter, self.prepare, sync=last)
            self.pos.batch += 1
            if not last:
                progress.at("data")
                continue
            progress.at("optimizer")
            if not self.stepper.optimizer_step(meter, self.current_lr()):
                self.pos.skipped += 1
            self.pos.step += 1
            progress.stepped_to(self.pos.step)
            progress.at("boundary")
            self.after_step(meter)
            if self.pos.step >= self.total_steps:
                break
            progress.at("data")
        progress.at("evaluation")
        self.end_epoch()

    def current_lr(self) -> float:
        """The schedule's rate for the next step; skipped fp16 steps do not advance it."""
        return lr_at(self.pos.step - self.pos.skipped, self.total_steps, self.pos.peak_lr, self.cfg.schedule)

    def after_step(self, meter: StepMeter) -> None:
        """Log, checkpoint on schedule, and obey commands and signals: all at a step boundary."""
        if self.pos.step % self.cfg.logging.every_steps == 0 or self.pos.step == self.total_steps:
            self.log_step(meter)
        every = self.cfg.train.eval_every_steps
        if every and self.pos.step % every == 0 and self.pos.batch < self.batches and self.pos.step < self.total_steps:
            self.validate(epoch_done=False)  # inside the epoch: its end validates anyway
        c = self.cfg.checkpoint
        if isinstance(c.every_steps, int) and self.pos.step % c.every_steps == 0:
            self.save("periodic")
        full = self.checkpoints.check()
        if full is not None:  # a background write found the disk full: write this step instead
            self.save("periodic", wait=True)
        self.obey()
        if time.monotonic() - self.last_status >= self.cfg.logging.status_every_s:
            self.write_status()

    def end_epoch(self) -> None:
        """Validate when the epoch is complete (or the run is)."""
        epoch_done = self.pos.batch >= self.batches
        if not epoch_done and self.pos.step < self.total_steps:
            return
        self.validate(epoch_done)

    def validate(self, epoch_done: bool) -> None:
        """Evaluate, tell the hooks, checkpoint a new best (and, at an epoch's end with
        checkpoint.on_epoch_end, every epoch). `epoch_done` False: train.eval_every_steps inside an
        epoch (the `eval` event says partial)."""
        partial = not epoch_done and self.pos.batch < self.batches
        # DDP's wrapper is for training; FSDP needs its own forward (it gathers the weights)
        self.model.eval()
        began = time.monotonic()
        metrics = evaluate(self.model if self.dist.replicated else self.forward, self.data.val, self.task,
                           self.device, self.cfg.train.precision,
                           self.prepare_val,
                           self.data.val_valid, self.dist.sum, self.urgent)
        if self.ledger is not None:
            self.ledger.add("evaluation", time.monotonic() - began)
        self.model.train()
        self.metrics = metrics
        self.tele.emit("eval", step=self.pos.step, epoch=self.pos.epoch, metrics=metrics,
                       **({"partial": True} if partial else {}))
        epoch = self.pos.epoch
        if epoch_done:
            self.pos.epoch, self.pos.batch = self.pos.epoch + 1, 0
        best = improves(metrics, self.pos.best, self.cfg.checkpoint.best_metric)
        if best:
            self.pos.best = metrics[self.cfg.checkpoint.best_metric.removeprefix("val_")]
        if best or (self.cfg.checkpoint.on_epoch_end and not partial):
            self.save("eval" if partial else "epoch", best=best)
        plan = hooks_plan(self.eval_hooks, self.pos.step, epoch, metrics)
        plan = plan.agreed(self.dist.agree_max(plan.vector()))  # a hook on one rank stops them all
        if plan.reason.stops:
            raise StopRun(plan)

    # ---- state ------------------------------------------------------------------------

    def set_state(self, state: str, **extra: Any) -> None:
        """Record a state change in the events and status.json (its reason stays in status.json
        for as long as the state lasts)."""
        if self.ledger is not None and (state == "paused") != (self.state == "paused"):
            if state == "paused":
                self.paused_at = time.monotonic()
            elif self.paused_at is not None:
                self.ledger.add("paused", time.monotonic() - self.paused_at)
                self.paused_at = None
        if self.ledger is not None and state in FINAL_STATES:
            self.ledger.send(final=True)  # the session's last ledger, before its final state
        self.state, self.state_reason = state, extra.get("reason")
        self.progress.at(state if state in ("paused", "checkpointing", "stopping") else "boundary")
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
