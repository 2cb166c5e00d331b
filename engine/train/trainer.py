"""The training loop: restore, then step / evaluate / checkpoint / obey, then finish.

The loop only orchestrates. What a batch means is the task's (engine.train.task); how the
model changes before training, the converters' (engine.model.convert); why the loop stops
or saves, the boundary sources' (engine.train.boundary); how checkpoints are written, the
Checkpointer's (engine.checkpoint.saver); what is reported, the telemetry sinks'.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from engine.checkpoint.rng import capture_rng, restore_rng
from engine.checkpoint.saver import Checkpointer
from engine.checkpoint.store import FORMAT, CheckpointStore
from engine.config.schema import Config
from engine.data.loaders import build_loaders
from engine.data.sources import DataSpec
from engine.model.convert import build_converters, convert, finalize, prepare_inputs
from engine.parallel.dist import Dist
from engine.parallel.wrap import check_replicas, grad_scaler, wrap
from engine.protocol import EXIT_FAILED
from engine.run.control import ControlServer, Pending
from engine.run.rundir import RunDir, socket_path_for
from engine.telemetry.doctor import Doctor
from engine.telemetry.flops import flops_per_sample, memory_fields, peak_tflops, step_flops
from engine.telemetry.sinks import Telemetry
from engine.train.boundary import OUTCOMES, Clock, Commands, Pause, Plan, Reason, Signals
from engine.train.evaluate import EvalHook, evaluate
from engine.train.guard import Diverged, diverged_message, finite, weights_finite
from engine.train.optim import build_optimizer
from engine.train.schedule import highest_ahead, lr_at, peak_for, warmup_warning
from engine.train.step import StepMeter, Stepper
from engine.train.task import build_task


@dataclass
class Position:
    """Where the run is: everything besides tensors that a checkpoint must restore."""

    step: int = 0          # optimizer steps taken
    epoch: int = 0         # current epoch (0-based)
    batch: int = 0         # micro-batches of this epoch already consumed
    peak_lr: float = 0.0   # the schedule's peak (changed by the `set` command)
    best: float | None = None
    train_seconds: float = 0.0
    samples: int = 0
    skipped: int = 0       # fp16 steps skipped for inf/NaN gradients (the schedule holds still)


@dataclass
class RunResult:
    """How a run ended: its exit code and final state, the last and best metrics, the steps."""

    exit_code: int
    state: str
    steps: int
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    best: float | None = None


class StopRun(Exception):
    """Leave the loop at a step boundary, for the agreed plan's reason."""

    def __init__(self, plan: Plan):
        super().__init__(plan.why)
        self.plan = plan


def pick_device(name: str, dist: Dist | None = None) -> torch.device:
    """'auto' is the first GPU when there is one, else the CPU; under torchrun, each rank
    takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if dist is not None and dist.active and name.startswith("cuda"):
        return torch.device("cuda", dist.local_rank)
    return torch.device(name)


#: Words for a stop reason that came from another rank (this rank's sources said nothing).
ELSEWHERE = {Reason.STOP_COMMAND: "stop command", Reason.SIGNAL: "a signal on another rank",
             Reason.PREEMPTED: "preempted", Reason.PRUNED: "pruned"}


class Trainer:
    """One run in one process (one rank of several under torchrun)."""

    def __init__(self, cfg: Config, spec: DataSpec, model: nn.Module, run: RunDir,
                 telemetry: Telemetry, resume: dict[str, Any] | None = None, dist: Dist | None = None):
        self.cfg, self.spec, self.run, self.tele = cfg, spec, run, telemetry
        self.dist = dist or Dist()
        t = cfg.train
        self.device = pick_device(t.device, self.dist)
        self.converters = build_converters(cfg)
        model = convert(model.to(self.device), self.converters)
        sample = spec.train[0][0]
        self.flops = flops_per_sample(model, tuple(sample.shape)) if hasattr(sample, "shape") else None
        self.net = wrap(model, self.dist, self.device, cfg.distributed.sync_batchnorm)
        self.model = self.net.model
        self.forward = self._maybe_compile(self.net.forward)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scaler = grad_scaler(t.precision == "fp16", self.dist, self.device)
        self.task = build_task(cfg)
        self.stepper = Stepper(self.net, self.forward, self.optimizer, self.scaler, self.task, self.device,
                               t.precision, t.grad_accum_steps, t.grad_clip_norm)
        self.data = build_loaders(cfg, spec, self.dist.rank, self.dist.world, self.device)
        self.sampler, self.loader, self.batches = self.data.sampler, self.data.train, self.data.batches
        self.steps_per_epoch = math.ceil(self.batches / t.grad_accum_steps)
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        self.pos = Position(peak_lr=cfg.optim.lr)
        main = self.dist.main
        self.server = ControlServer(socket_path_for(run.path), self.status) if main else None
        self.checkpoints = Checkpointer(CheckpointStore(run.checkpoints, cfg.checkpoint.keep_last), self.dist,
                                        self.tele.emit, cfg.checkpoint.async_save, self.device.type == "cuda")
        self.commands = Commands(self.server, cfg.optim.lr, self._highest_for)
        self.signals, self.clock = Signals(), Clock(cfg.checkpoint.every_minutes if main else None)
        self.sources: list[Any] = [self.signals, self.clock]  # more boundary sources plug in here
        self.eval_hooks: list[EvalHook] = []
        self.state, self.last_status, self.last_loss = "starting", 0.0, None
        self.metrics: dict[str, float] = {}
        self.meter: StepMeter | None = None
        self.doctor = Doctor()
        self.peak = t.peak_tflops or (
            peak_tflops(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None)
        self.rank_pids = self.dist.gather(os.getpid()) if self.dist.active else None
        self.prepare = lambda x: prepare_inputs(self.data.normalize_train(x), self.converters)
        if resume is not None:
            self._restore(resume)
        warning = warmup_warning(cfg.schedule, self.total_steps)
        if warning:
            self.tele.emit("log", level="warning", message=warning)

    def _maybe_compile(self, model: nn.Module) -> Any:
        if not self.cfg.train.compile:
            return model
        try:
            return torch.compile(model, mode=self.cfg.train.compile_mode)
        except Exception as exc:  # noqa: BLE001 - compile failures fall back to eager
            self.tele.emit("log", level="warning", message=f"torch.compile failed, running eager: {exc}")
            return model

    def _restore(self, state: dict[str, Any]) -> None:
        if self.dist.sharded:
            from engine.parallel.sharded import load_local_state

            load_local_state(self.model, self.optimizer, state)
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.pos = Position(**state["trainer"])
        self.pos.peak_lr = state["scheduler"]["peak_lr"]
        rngs = state.get("rng_ranks")
        restore_rng(rngs[self.dist.rank] if self.dist.active and rngs else state["rng"])
        self.checkpoints.last_step = self.pos.step

    def snapshot(self, rngs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything needed to continue exactly from this step boundary (`rngs`: every
        rank's RNG state, gathered by the Checkpointer under torchrun)."""
        extra: dict[str, Any] = {"rng_ranks": rngs} if rngs is not None and len(rngs) > 1 else {}
        if self.dist.sharded:
            from engine.parallel.sharded import local_state

            extra.update(local_state(self.model, self.optimizer), rank=self.dist.rank, strategy="fsdp")
        else:
            extra.update(model=self.model.state_dict(), optimizer=self.optimizer.state_dict())
        return {**extra, "format": FORMAT, "step": self.pos.step, "scaler": self.scaler.state_dict(),
                "scheduler": {"name": self.cfg.schedule.name, "peak_lr": self.pos.peak_lr},
                "trainer": asdict(self.pos),
                "data": {"epoch": self.pos.epoch, "offset": self.pos.batch * self.cfg.train.batch_size,
                         "seed": self.cfg.train.seed},
                "rng": capture_rng(), "world_size": self.dist.world, "config": self.cfg.model_dump(),
                "torch_version": str(torch.__version__)}

    # ---- the loop ---------------------------------------------------------------------

    def train(self) -> RunResult:
        """Run to the end, to a stop or to a failure; the result says which (and its exit code)."""
        self.signals.install()
        if self.server is not None:
            self.server.start()
        try:
            self.set_state("running")
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
            if self.server is not None:
                self.server.close()
            self.signals.restore()

    def finished(self) -> bool:
        return self.pos.step >= self.total_steps or self.pos.epoch >= self.cfg.train.epochs

    def run_epoch(self) -> None:
        """Train from the current position to the end of the epoch (or max_steps)."""
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
        self.checkpoints.check()
        self.obey()
        if time.monotonic() - self.last_status >= self.cfg.logging.status_every_s:
            self.write_status()

    def log_step(self, meter: StepMeter) -> None:
        """One step event; reading the loss here is the only host-device sync of the step."""
        report = meter.report(self.dist)
        self.pos.samples += report["samples"]
        self.pos.train_seconds += report["wall_s"]
        self.last_loss = report["loss"]
        self._guard_loss(report["loss"])
        elapsed = self.pos.train_seconds
        eta = elapsed / max(1, self.pos.step) * (self.total_steps - self.pos.step) if elapsed else None
        self.tele.emit(
            "step", step=self.pos.step, epoch=self.pos.epoch, batch=self.pos.batch,
            batches_per_epoch=self.batches, loss=report["loss"], losses=report["losses"], lr=report["lr"],
            samples_per_s=report["samples_per_s"], steps_per_s=report["steps_per_s"], eta_s=eta,
            train_s=elapsed, time_data_s=report["data"], time_h2d_s=report["h2d"],
            time_compute_s=report["compute"], time_optim_s=report["optim"], time_comm_s=report["comm"],
            skipped_steps=self.pos.skipped, **step_flops(self.flops, report["samples_per_s"] / self.dist.world, self.peak),
            **memory_fields(self.device), **({"world_size": self.dist.world} if self.dist.active else {}),
        )
        self.doctor.add(report["data"] + report["h2d"], report["compute"] + report["optim"], report["comm"])
        verdict = self.doctor.changed()
        if verdict is not None:
            self.tele.emit("doctor", step=self.pos.step, bound=verdict.bound, share=verdict.share,
                           field=verdict.field, remedy=verdict.remedy, message=verdict.message())

    def end_epoch(self) -> None:
        """Validate when the epoch is complete (or the run is), tell the hooks, then checkpoint."""
        epoch_done = self.pos.batch >= self.batches
        if not epoch_done and self.pos.step < self.total_steps:
            return
        # DDP's wrapper is for training; FSDP needs its own forward (it gathers the weights)
        self.model.eval()
        metrics = evaluate(self.model if self.dist.replicated else self.forward, self.data.val, self.task,
                           self.device, self.cfg.train.precision,
                           lambda x: prepare_inputs(self.data.normalize(x), self.converters),
                           self.data.val_valid, self.dist.sum)
        self.model.train()
        self.metrics = metrics
        self.tele.emit("eval", step=self.pos.step, epoch=self.pos.epoch, metrics=metrics)
        epoch = self.pos.epoch
        if epoch_done:
            self.pos.epoch, self.pos.batch = self.pos.epoch + 1, 0
        best = self._is_best(metrics)
        if best or self.cfg.checkpoint.on_epoch_end:
            self.save("epoch", best=best)
        for hook in self.eval_hooks:
            verdict = hook(self.pos.step, epoch, metrics)
            if verdict is not None:  # every rank's hooks see the same reduced metrics
                raise StopRun(Plan(verdict.reason, why=verdict.why))

    def _is_best(self, metrics: dict[str, float]) -> bool:
        name = self.cfg.checkpoint.best_metric
        if name is None:
            return False
        value = metrics[name.removeprefix("val_")]
        better = self.pos.best is None or (
            value > self.pos.best if name == "val_accuracy" else value < self.pos.best)
        if better:
            self.pos.best = value
        return better

    # ---- checkpoints and divergence ---------------------------------------------------

    def save(self, reason: str, best: bool = False, pending: list[Pending] = ()) -> None:
        """Checkpoint now, on every rank at the same step, never from non-finite training
        (a second save at the same step only moves `best` and answers `pending`)."""
        new = self.pos.step != self.checkpoints.last_step
        if new:
            self._guard_state()
        previous = self.state
        entering = new and previous not in ("stopping", "checkpointing")
        if entering:  # a stop's own save stays in "stopping" (one state event, with its reason)
            self.set_state("checkpointing")
        self.checkpoints.save(self.pos.step, reason, self.snapshot, best, pending)
        if new:
            self.clock.saved()
        if entering:
            self.set_state(previous)

    def _guard_loss(self, loss: float | None) -> None:
        """fp32/bf16 train on through a NaN: stop at the first non-finite loss read (reduced
        over the ranks, so every rank stops here). fp16's scaler skips such steps itself."""
        if self.cfg.train.precision != "fp16" and not finite(loss):
            raise Diverged(diverged_message(f"the loss is {loss}", self.pos.step, self.cfg.train.precision,
                                            self._last_good()))

    def _guard_state(self) -> None:
        """Before a save: the loss not yet logged, and every weight, must be finite on every
        rank (agreed, so that all ranks fail together rather than wait for each other)."""
        pending = self.meter.pending_loss() if self.meter is not None else None
        bad = [float(self.cfg.train.precision != "fp16" and not finite(pending)),
               float(not weights_finite(self.model))]
        bad_loss, bad_weights = (v > 0 for v in self.dist.agree_max(bad))
        if bad_loss or bad_weights:
            what = "the loss is not finite" if bad_loss else "the weights are not finite"
            raise Diverged(diverged_message(what, self.pos.step, self.cfg.train.precision, self._last_good()))

    def _last_good(self) -> Any:
        """The newest checkpoint once the queued writes have landed (all finite: each was checked)."""
        try:
            self.checkpoints.flush()
        except RuntimeError:
            pass  # a failed write: the newest file on disk is still the last good one
        return self.checkpoints.latest()

    # ---- commands, signals, stop reasons ------------------------------------------------

    def obey(self) -> None:
        """Fold every source's plan, agree on it with every rank, then act on it, all at this
        step boundary; block here (still agreeing, every 0.5 s) while paused."""
        while True:
            paused = self.state == "paused" and not self.signals.name
            plan = self.commands.poll(wait_s=0.5 if paused else 0.0)
            for source in self.sources:
                plan = plan.fold(source.poll())
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
            self.save("command" if plan.reason == Reason.CHECKPOINT_COMMAND else "periodic",
                      pending=by_cmd.get("checkpoint", []))
        if plan.pause == Pause.PAUSE and self.state != "paused":
            self.set_state("paused")
        elif plan.pause == Pause.CONTINUE and self.state == "paused":
            self.set_state("running")
        for p in by_cmd.get("pause", []) + by_cmd.get("continue", []):
            p.answer(state=self.state, step=self.pos.step)
        if plan.reason.stops:
            plan.why = plan.why or ELSEWHERE[plan.reason]
            raise StopRun(plan)

    def _highest_for(self, lr: float) -> float:
        """The highest rate the schedule would reach from now on if `lr` were set now."""
        step, s = self.pos.step - self.pos.skipped, self.cfg.schedule
        return peak_for(lr, step, self.total_steps, s) * highest_ahead(step, self.total_steps, s)

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
        self.save("stop" if stops else "final", pending=checkpoint_asked)
        self.checkpoints.flush()
        if not stops:
            verdict = check_replicas(self.model, self.dist)
            if verdict:
                self.tele.emit("log", level=verdict[0], message=verdict[1])
            finalize(self.model, self.converters)
        latest = self.checkpoints.latest()
        for p in plan.pending:
            if p.cmd == "stop":
                p.answer(state=state, step=self.pos.step, path=str(latest) if latest else None)
        self.set_state(state, **({"reason": plan.why, "exit_code": code} if stops else {}))
        return RunResult(code, state, self.pos.step, plan.why, self.metrics, self.pos.best)

    def _fail(self, exc: BaseException) -> RunResult:
        """Report a failure (traceback in the events and engine.log): state failed, exit 1."""
        if not self.dist.main:  # only rank 0 writes events: the others say it on stderr
            print(f"cockpit-engine: rank {self.dist.rank} failed: {traceback.format_exc()}",
                  file=sys.stderr, flush=True)
        reason = str(exc) if isinstance(exc, Diverged) else f"{type(exc).__name__}: {exc}"
        if self.dist.active and _collective_failure(exc):
            reason = ("another rank died or stopped answering (collectives give up after "
                      f"distributed.timeout_s = {self.cfg.distributed.timeout_s:g} s): {reason}")
        self.tele.emit("error", message=reason, traceback=traceback.format_exc())
        self.set_state("failed", reason=reason)
        return RunResult(EXIT_FAILED, "failed", self.pos.step, reason, self.metrics, self.pos.best)

    # ---- state ------------------------------------------------------------------------

    def set_state(self, state: str, **extra: Any) -> None:
        """Record a state change in the events and status.json."""
        self.state = state
        self.tele.emit("state", state=state, step=self.pos.step, **extra)
        self.write_status(**extra)

    def status(self) -> dict[str, Any]:
        """What `status` replies and status.json holds."""
        return {"state": self.state, "step": self.pos.step, "epoch": self.pos.epoch,
                "total_steps": self.total_steps, "loss": self.last_loss, "lr": self.current_lr(),
                "run_id": self.run.path.name, "socket": str(self.server.path) if self.server else None,
                "world_size": self.dist.world, **({"rank_pids": self.rank_pids} if self.rank_pids else {})}

    def write_status(self, **extra: Any) -> None:
        self.last_status = time.monotonic()
        if self.dist.main:
            self.run.write_status(**self.status(), **extra)


def _collective_failure(exc: BaseException) -> bool:
    """A collective that failed because a peer died or hung (Gloo's errors are often plain
    RuntimeErrors, raised from inside DDP's reducer)."""
    text = str(exc)
    return isinstance(exc, torch.distributed.DistError) or any(
        w in text for w in ("gloo", "NCCL", "Timed out", "Connection reset", "Connection closed"))
