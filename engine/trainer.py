"""The training loop: restore, then step / evaluate / checkpoint / obey commands, then close."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import checkpoint as ckpt
from engine.async_save import AsyncSaver, HostStaging, Job
from engine.config import Config
from engine.control import ControlServer, Pending
from engine.dist import Dist
from engine.doctor import Doctor, flops_per_sample, peak_tflops
from engine.data import (DataSpec, DeviceLoader, EpochSampler, Normalizer, Prepared, batches_per_epoch,
                         make_loader)
from engine.optim import build_optimizer
from engine.protocol import EXIT_FAILED, EXIT_FINISHED, EXIT_STOPPED
from engine.rundir import RunDir, socket_path_for
from engine.schedule import lr_at
from engine.telemetry import Telemetry


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


class StopRun(Exception):
    """Leave the loop at a step boundary, checkpoint, and exit with code 3."""

    def __init__(self, reason: str, pending: list[Pending] = ()):
        super().__init__(reason)
        self.reason, self.pending = reason, pending


def pick_device(name: str, dist: Dist | None = None) -> torch.device:
    """'auto' is the first GPU when there is one, else the CPU; under torchrun, each rank
    takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if dist is not None and dist.active and name.startswith("cuda"):
        return torch.device("cuda", dist.local_rank)
    return torch.device(name)


@dataclass
class Plan:
    """What every rank does at this step boundary, as agreed (see `Trainer.obey`)."""

    stop: int = 0          # 0 no, 1 the stop command, 2 a signal (on any rank)
    checkpoint: int = 0    # 1 a command asked for one, 2 one is due by the clock
    pause: int = 0         # 0 unchanged, 1 continue, 2 pause
    lr: float = -1.0       # a `set` command's learning rate (-1: none)

    def vector(self) -> list[float]:
        return [self.stop, self.checkpoint, self.pause, self.lr]

    @classmethod
    def of(cls, v: list[float]) -> "Plan":
        return cls(int(v[0]), int(v[1]), int(v[2]), v[3])


class Trainer:
    """One run in one process."""

    def __init__(self, cfg: Config, spec: DataSpec, model: nn.Module, run: RunDir,
                 telemetry: Telemetry, resume: dict[str, Any] | None = None, dist: Dist | None = None):
        self.cfg, self.spec, self.run, self.tele = cfg, spec, run, telemetry
        self.dist = dist or Dist()
        t = cfg.train
        self.device = pick_device(t.device, self.dist)
        self.model = model.to(self.device)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        sample = spec.train[0][0]
        self.flops = flops_per_sample(self.model, tuple(sample.shape)) if hasattr(sample, "shape") else None
        self.comm_launched = 0.0
        self.wrapped = self._wrap(self.model)
        self.forward = self._maybe_compile(self.wrapped)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scaler = self._scaler(t.precision == "fp16")
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(t.precision)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        self._build_loaders()
        self.pos = Position(peak_lr=cfg.optim.lr)
        self.store = ckpt.CheckpointStore(run.checkpoints, cfg.checkpoint.keep_last)
        main = self.dist.main
        self.server = ControlServer(socket_path_for(run.path), self.status) if main else None
        self.saver = (AsyncSaver(self.store, self._saved, self._save_failed)
                      if cfg.checkpoint.async_save and main and not self.dist.sharded else None)
        self.staging = HostStaging(pin=self.device.type == "cuda")
        self.save_error: BaseException | None = None
        self.state = "starting"
        self.stop_signal: str | None = None
        self.last_save_step, self.last_save_time = -1, time.monotonic()
        self.last_status = 0.0
        self.last_loss: float | None = None
        self.doctor = Doctor()
        self.peak = cfg.train.peak_tflops or (
            peak_tflops(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None)
        self.rank_pids = self.dist.gather(os.getpid()) if self.dist.active else None
        if resume is not None:
            self._restore(resume)

    # ---- set-up ---------------------------------------------------------------------

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP or FSDP2 under torchrun; the bare model in a single process."""
        if not self.dist.active:
            return model
        if self.dist.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for child in model.children():  # each parameterized block is a unit; then the root
                if any(p.requires_grad for p in child.parameters()):
                    fully_shard(child)
            fully_shard(model)
            return model
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        from torch.nn.parallel import DistributedDataParallel

        if self.cfg.distributed.sync_batchnorm:
            model = self.model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids)

        def timed_allreduce(state, bucket):  # noqa: ANN001 - DDP checks the annotations
            # The last bucket is launched when the backward computation is done; whatever
            # backward() waits after that is communication that did not overlap compute.
            self.comm_launched = time.perf_counter()
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, timed_allreduce)
        return ddp

    def _scaler(self, enabled: bool) -> Any:
        """fp16's loss scaler; FSDP's shards need one that agrees on inf/NaN across ranks."""
        if enabled and self.dist.sharded:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            return ShardedGradScaler(self.device.type)
        return torch.amp.GradScaler(self.device.type, enabled=enabled)

    def _maybe_compile(self, model: nn.Module) -> Any:
        if not self.cfg.train.compile:
            return model
        try:
            return torch.compile(model, mode=self.cfg.train.compile_mode)
        except Exception as exc:  # noqa: BLE001 - compile failures fall back to eager
            self.tele.emit("log", level="warning", message=f"torch.compile failed, running eager: {exc}")
            return model

    def _build_loaders(self) -> None:
        cfg, spec = self.cfg, self.spec
        train = Prepared(spec.train, spec, cfg.data.augment, cfg.train.seed, train=True)
        val = Prepared(spec.val, spec, cfg.data.augment, cfg.train.seed, train=False)
        rank, world = self.dist.rank, self.dist.world
        self.sampler = EpochSampler(len(train), cfg.train.seed, shuffle=True, rank=rank, world=world)
        if cfg.data.device_resident:
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
            self.loader = DeviceLoader(spec.train, spec, cfg, self.sampler, self.device, dtype)
        else:
            self.loader = make_loader(train, cfg, cfg.train.batch_size, self.sampler)
        eval_bs = cfg.train.eval_batch_size or cfg.train.batch_size
        # Validation is sharded too, padded so that every rank runs as many batches (FSDP
        # gathers weights in each forward); the padding is masked out of the metrics.
        val_sampler = EpochSampler(len(val), 0, shuffle=False, rank=rank, world=world)
        self.val_valid = len(range(rank, len(val), world))
        self.val_loader = make_loader(val, cfg, eval_bs, val_sampler)
        # the device-resident training set is normalized once, up front
        self.normalize = Normalizer(spec, cfg.data.augment.normalize, self.device)
        self.normalize_train = Normalizer(spec, cfg.data.augment.normalize and not cfg.data.device_resident,
                                          self.device)
        self.batches = batches_per_epoch(self.sampler.per_rank(), cfg.train.batch_size)
        self.steps_per_epoch = math.ceil(self.batches / cfg.train.grad_accum_steps)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch

    def _restore(self, state: dict[str, Any]) -> None:
        if self.dist.sharded:
            from engine.sharded import load_local_state

            load_local_state(self.model, self.optimizer, state)
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.pos = Position(**state["trainer"])
        self.pos.peak_lr = state["scheduler"]["peak_lr"]
        rngs = state.get("rng_ranks")
        ckpt.restore_rng(rngs[self.dist.rank] if self.dist.active and rngs else state["rng"])
        self.last_save_step = self.pos.step

    def snapshot(self, rngs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything needed to continue exactly from this step boundary (`rngs`: every
        rank's RNG state, gathered by `save` under torchrun)."""
        extra: dict[str, Any] = {"rng_ranks": rngs} if rngs is not None and len(rngs) > 1 else {}
        if self.dist.sharded:
            from engine.sharded import local_state

            extra.update(local_state(self.model, self.optimizer), rank=self.dist.rank, strategy="fsdp")
        else:
            extra.update(model=self.model.state_dict(), optimizer=self.optimizer.state_dict())
        return {**extra,
            "format": ckpt.FORMAT,
            "step": self.pos.step,
            "scaler": self.scaler.state_dict(),
            "scheduler": {"name": self.cfg.schedule.name, "peak_lr": self.pos.peak_lr},
            "trainer": asdict(self.pos),
            "data": {"epoch": self.pos.epoch, "offset": self.pos.batch * self.cfg.train.batch_size,
                     "seed": self.cfg.train.seed},
            "rng": ckpt.capture_rng(),
            "world_size": self.dist.world,
            "config": self.cfg.model_dump(),
            "torch_version": str(torch.__version__),
        }

    # ---- the loop ---------------------------------------------------------------------

    def train(self) -> int:
        """Run to the end (0), to a stop (3) or to a failure (1)."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        if self.server is not None:
            self.server.start()
        self.started = time.monotonic()
        try:
            self.set_state("running")
            while not self.finished():
                self.run_epoch()
            self.save("final")
            self.flush_saves()
            self.check_replicas()
            self.set_state("finished")
            return EXIT_FINISHED
        except StopRun as stop:
            return self._stop(stop)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then exit 1
            if not self.dist.main:  # only rank 0 writes events: the others say it on stderr
                print(f"cockpit-engine: rank {self.dist.rank} failed: {traceback.format_exc()}",
                      file=sys.stderr, flush=True)
            reason = f"{type(exc).__name__}: {exc}"
            if self.dist.active and _collective_failure(exc):
                reason = ("another rank died or stopped answering (collectives give up after "
                          f"distributed.timeout_s = {self.cfg.distributed.timeout_s:g} s): {reason}")
            self.tele.emit("error", message=reason, traceback=traceback.format_exc())
            self.set_state("failed", reason=reason)
            return EXIT_FAILED
        finally:
            if self.saver is not None:
                self.saver.close()  # a failed run still finishes the writes it queued
            if self.server is not None:
                self.server.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def check_replicas(self) -> None:
        """Under DDP, confirm at the end that every rank holds the same weights (a cheap
        guard against a rank that silently trained on something else)."""
        if not self.dist.replicated:
            return
        flat = torch.cat([p.detach().float().flatten().cpu() for p in self.model.parameters()])
        digest = [float(flat.double().sum()), float(flat.double().abs().sum()), float(flat.double().square().sum())]
        high, low = self.dist.agree_max(digest), self.dist.agree_max([-v for v in digest])
        if all(h == -lo for h, lo in zip(high, low)):
            self.tele.emit("log", level="info", message=f"DDP replicas agree: {flat.numel():,} parameters "
                           f"identical on {self.dist.world} ranks")
        else:
            self.tele.emit("log", level="warning", message=f"DDP replicas differ across the {self.dist.world} "
                           "ranks at the end of training: check for rank-dependent code in the model")

    def finished(self) -> bool:
        return self.pos.step >= self.total_steps or self.pos.epoch >= self.cfg.train.epochs

    def run_epoch(self) -> None:
        """Train from the current position to the end of the epoch (or max_steps)."""
        self.sampler.set_position(self.pos.epoch, self.pos.batch * self.cfg.train.batch_size)
        self.model.train()
        meter = StepMeter(self.device)
        accum = self.cfg.train.grad_accum_steps
        for x, y in meter.timed(self.loader):
            last = (self.pos.batch + 1) % accum == 0 or self.pos.batch + 1 >= self.batches
            self.micro_step(x, y, meter, sync=last)
            self.pos.batch += 1
            if not last:
                continue
            self.optimizer_step(meter)
            self.after_step(meter)
            if self.pos.step >= self.total_steps:
                break
        self.end_epoch()

    def micro_step(self, x: torch.Tensor, y: torch.Tensor, meter: "StepMeter", sync: bool = True) -> None:
        """Forward and backward for one micro-batch; gradients accumulate. Under DDP/FSDP the
        gradients are reduced across ranks only on the step's last micro-batch (`sync`)."""
        mark0 = meter.mark()
        x = self.normalize_train(x.to(self.device, non_blocking=True))
        y = y.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        mark1 = meter.mark()
        meter.span("h2d", mark0, mark1)
        with self._grad_sync(sync):
            with self.autocast():
                loss = self.loss_fn(self.forward(x), y)
            self.comm_launched = 0.0
            t_backward = time.perf_counter()
            self.scaler.scale(loss / self.cfg.train.grad_accum_steps).backward()
            t_end = time.perf_counter()
        meter.add_loss(loss.detach(), len(y))
        comm = t_end - self.comm_launched if self.comm_launched > t_backward else 0.0
        meter.comm += comm
        if meter.events:  # on a GPU the device's own clock times forward+backward
            meter.span("compute", mark1, meter.mark())
        else:
            meter.compute += t_end - mark1 - comm

    def _grad_sync(self, sync: bool) -> Any:
        """Skip the cross-rank gradient reduction on accumulation micro-batches."""
        if not self.dist.active:
            return nullcontext()
        if self.dist.strategy == "fsdp":
            self.model.set_requires_gradient_sync(sync)
            return nullcontext()
        return nullcontext() if sync else self.wrapped.no_sync()

    def optimizer_step(self, meter: "StepMeter") -> None:
        """Unscale, clip, step, update the scaler, zero the gradients."""
        t0 = time.perf_counter()
        mark0 = meter.mark()
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.cfg.train.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip_norm)
        # fp16 only: GradScaler.step already synchronizes to check for inf/NaN, so reading the
        # scale costs no extra stall. The scale only ever shrinks when the step was skipped.
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else 0.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.is_enabled() and self.scaler.get_scale() < scale_before:
            self.pos.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.pos.step += 1
        meter.lr, meter.steps = lr, meter.steps + 1
        if meter.events:
            meter.span("optim", mark0, meter.mark())
        else:
            meter.optim += time.perf_counter() - t0

    def current_lr(self) -> float:
        """The schedule's rate for the next step; skipped fp16 steps do not advance it."""
        return lr_at(self.pos.step - self.pos.skipped, self.total_steps, self.pos.peak_lr, self.cfg.schedule)

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def after_step(self, meter: "StepMeter") -> None:
        """Log, checkpoint on schedule, and obey commands and signals: all at a step boundary."""
        if self.pos.step % self.cfg.logging.every_steps == 0 or self.pos.step == self.total_steps:
            self.log_step(meter)
        c = self.cfg.checkpoint
        if c.every_steps and self.pos.step % c.every_steps == 0:
            self.save("periodic")
        if self.save_error is not None:
            self.flush_saves()
        self.obey()
        if time.monotonic() - self.last_status >= self.cfg.logging.status_every_s:
            self.write_status()

    def log_step(self, meter: "StepMeter") -> None:
        """One step event; reading the loss here is the only host-device sync of the step."""
        report = meter.report(self.dist)
        self.pos.samples += report["samples"]
        self.pos.train_seconds += report["wall_s"]
        self.last_loss = report["loss"]
        elapsed = self.pos.train_seconds
        eta = elapsed / max(1, self.pos.step) * (self.total_steps - self.pos.step) if elapsed else None
        self.tele.emit(
            "step", step=self.pos.step, epoch=self.pos.epoch, batch=self.pos.batch,
            batches_per_epoch=self.batches, loss=report["loss"], lr=report["lr"],
            samples_per_s=report["samples_per_s"], steps_per_s=report["steps_per_s"],
            eta_s=eta, time_data_s=report["data"], time_h2d_s=report["h2d"], time_compute_s=report["compute"],
            time_optim_s=report["optim"], time_comm_s=report["comm"], skipped_steps=self.pos.skipped,
            **self._flops(report["samples_per_s"] / self.dist.world), **self._memory(),
            **({"world_size": self.dist.world} if self.dist.active else {}),
        )
        self.doctor.add(report["data"] + report["h2d"], report["compute"] + report["optim"], report["comm"])
        verdict = self.doctor.changed()
        if verdict is not None:
            self.tele.emit("doctor", step=self.pos.step, bound=verdict.bound, share=verdict.share,
                           field=verdict.field, remedy=verdict.remedy, message=verdict.message())
        self._emit_cost(eta)

    def _memory(self) -> dict[str, int]:
        """Peak device memory so far (CUDA's allocator counter: no synchronization)."""
        if self.device.type != "cuda":
            return {}
        return {"mem_peak_bytes": int(torch.cuda.max_memory_allocated(self.device))}

    def _flops(self, samples_per_s: float) -> dict[str, float]:
        """Achieved TFLOP/s, and MFU where the device's peak is known."""
        if not self.flops:
            return {}
        achieved = self.flops * samples_per_s / 1e12
        out = {"tflops": achieved}
        if self.peak:
            out["mfu"] = achieved / self.peak
        return out

    def _emit_cost(self, eta: float | None) -> None:
        price = self.cfg.cost.price_per_hour
        if price is None:
            return
        spent = price * self.pos.train_seconds / 3600
        projected = spent + price * (eta or 0) / 3600
        self.tele.emit("cost", price_per_hour=price, source="config", accumulated=spent,
                       projected=projected, currency=self.cfg.cost.currency)

    def end_epoch(self) -> None:
        """Validate when the epoch is complete (or the run is), then checkpoint."""
        epoch_done = self.pos.batch >= self.batches
        if not epoch_done and self.pos.step < self.total_steps:
            return
        metrics = self.evaluate()
        self.tele.emit("eval", step=self.pos.step, epoch=self.pos.epoch, metrics=metrics)
        if epoch_done:
            self.pos.epoch, self.pos.batch = self.pos.epoch + 1, 0
        best = self._is_best(metrics)
        if best or self.cfg.checkpoint.on_epoch_end:
            self.save("epoch", best=best)

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

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss and top-1 accuracy over the whole validation set."""
        self.model.eval()
        # DDP's wrapper is for training; FSDP needs its own forward (it gathers the weights)
        forward = self.model if self.dist.replicated else self.forward
        total, correct, loss_sum = 0, torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for x, y in self.val_loader:
            x, y = self.normalize(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)
            if self.cfg.train.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                logits = forward(x)
            keep = min(len(y), self.val_valid - total)  # this rank's padding is at its end
            logits, y = logits[:keep], y[:keep]
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            total += len(y)
        self.model.train()
        loss_sum_, correct_, total_ = self.dist.sum([loss_sum.item(), correct.item(), total])
        return {"loss": loss_sum_ / total_, "accuracy": correct_ / total_}

    # ---- checkpoints, commands, state -------------------------------------------------

    def save(self, reason: str, best: bool = False, pending: list[Pending] = ()) -> ckpt.Saved | None:
        """Checkpoint now (at most once per step; a later `best` only moves the pointer).

        Every rank calls this at the same step (rank 0 gathers their RNG states); rank 0
        writes. With checkpoint.async_save the loop only copies the state to host memory; the
        write, the event and the replies to `pending` come from the writer thread when done.
        """
        if self.pos.step == self.last_save_step:
            if self.dist.main:
                self._mark_best_or_answer(best, pending)
            return None
        previous = self.state
        self._checkpointing(True)
        self.last_save_step, self.last_save_time = self.pos.step, time.monotonic()
        if self.dist.sharded:
            return self._save_shards(reason, best, pending, previous)
        rngs = self.dist.gather(ckpt.capture_rng()) if self.dist.active else None
        if not self.dist.main:
            self._checkpointing(False, previous)
            return None
        if self.saver is not None:
            start = time.perf_counter()
            state, release = self.staging.copy(self.snapshot(rngs))
            self.saver.submit(Job(state, self.pos.step, best, reason, time.perf_counter() - start,
                                  done=self._answer_when_written(pending), release=release))
            self._checkpointing(False, previous)
            return None
        saved = self.store.save(self.snapshot(rngs), self.pos.step, best=best)
        self._saved(saved, Job(None, saved.step, best, reason, saved.seconds))
        self._checkpointing(False, previous)
        for p in pending:
            p.answer(step=saved.step, path=str(saved.path), bytes=saved.bytes, seconds=saved.seconds)
        return saved

    def _checkpointing(self, entering: bool, previous: str = "") -> None:
        """Show "checkpointing" while saving, then the state before; a stop's own save
        stays in "stopping" (one state event, with its reason)."""
        if self.state == "stopping" or previous == "stopping":
            return
        self.set_state("checkpointing" if entering else previous)

    def _save_shards(self, reason: str, best: bool, pending: list[Pending], previous: str) -> ckpt.Saved | None:
        """FSDP: every rank writes its shards (synchronously) into one temporary directory,
        which rank 0 renames into place once all have written."""
        start = time.perf_counter()
        tmp = self.dist.broadcast(str(self.store.shards_tmp(self.pos.step)) if self.dist.main else None)
        self.store.write_shard(Path(tmp), self.dist.rank, self.snapshot())
        self.dist.barrier()
        saved = None
        if self.dist.main:
            saved = self.store.commit_shards(Path(tmp), self.pos.step, best, start)
            self._saved(saved, Job(None, saved.step, best, reason, saved.seconds))
            for p in pending:
                p.answer(step=saved.step, path=str(saved.path), bytes=saved.bytes, seconds=saved.seconds)
        self._checkpointing(False, previous)
        return saved

    def _mark_best_or_answer(self, best: bool, pending: list[Pending]) -> None:
        """A second request at the same step: move the best pointer, answer with the file."""
        if self.saver is not None:
            if best:
                self.saver.submit(Job(None, self.pos.step, True, "best", 0.0))
            self.saver.wait()
        elif best:
            self.store.mark_best(self.pos.step)
        path = self.store.path_for(self.pos.step)
        for p in pending:
            size = path.stat().st_size if path.is_file() else None
            p.answer(step=self.pos.step, path=str(path), bytes=size, seconds=0.0)

    def _answer_when_written(self, pending: list[Pending]):
        if not pending:
            return None

        def done(saved: ckpt.Saved | None, job: Job) -> None:
            for p in pending:
                if saved is None:
                    p.answer(False, error=f"checkpoint at step {job.step} failed: {self.save_error}")
                else:
                    p.answer(step=saved.step, path=str(saved.path), bytes=saved.bytes,
                             seconds=saved.seconds, stall_s=job.stall_s)
        return done

    def _saved(self, saved: ckpt.Saved, job: Job) -> None:
        """Report a written checkpoint (from the writer thread when saving asynchronously)."""
        extra = {"stall_s": round(job.stall_s, 6)} if self.saver is not None else {}
        self.tele.emit("checkpoint", path=str(saved.path), step=saved.step,
                       seconds=round(saved.seconds, 4), bytes=saved.bytes, reason=job.reason,
                       best=job.best, **extra)

    def _save_failed(self, exc: BaseException, job: Job) -> None:
        self.save_error = exc

    def flush_saves(self) -> None:
        """Wait for queued checkpoints; a failed background write fails the run here."""
        if self.saver is not None:
            self.saver.wait()
        if self.save_error is not None:
            error, self.save_error = self.save_error, None
            raise RuntimeError(f"writing a checkpoint failed: {error}") from error

    def obey(self) -> None:
        """Agree on signals, commands and clock-due checkpoints with every rank, then act on
        them, all at this step boundary; block here (still agreeing) while paused.

        Rank 0 folds the commands that arrived into a `Plan`; an element-wise maximum over
        the ranks adds any rank's signal. Every rank then carries out the same plan.
        """
        while True:
            pending = self.server.poll() if self.server is not None else []
            if self.state == "paused" and not pending and self.server is not None and not self.stop_signal:
                waited = self.server.wait(0.5)  # the heartbeat: the other ranks wait in agree
                pending = [waited] if waited else []
            plan = self._fold(pending)
            if self.stop_signal:
                plan.stop = max(plan.stop, 2)
            plan = Plan.of(self.dist.agree_max(plan.vector()))
            self._carry_out(plan, pending)
            if self.state != "paused":
                return
            if time.monotonic() - self.last_status >= self.cfg.logging.status_every_s:
                self.write_status()

    def _fold(self, pending: list[Pending]) -> Plan:
        """The commands that arrived since the last boundary, in order, as one plan."""
        plan = Plan()
        c = self.cfg.checkpoint
        if self.dist.main and c.every_minutes and time.monotonic() - self.last_save_time >= c.every_minutes * 60:
            plan.checkpoint = 2
        for p in pending:
            if p.cmd == "checkpoint":
                plan.checkpoint = 1
            elif p.cmd in ("pause", "continue"):
                plan.pause = 2 if p.cmd == "pause" else 1
            elif p.cmd == "set":
                plan.lr = float(p.request["lr"])
            elif p.cmd == "stop":
                plan.stop = max(plan.stop, 1)
        return plan

    def _carry_out(self, plan: Plan, pending: list[Pending]) -> None:
        """Act on an agreed plan (every rank), answering rank 0's commands."""
        by_cmd: dict[str, list[Pending]] = {}
        for p in pending:
            by_cmd.setdefault(p.cmd, []).append(p)
        if plan.lr >= 0:
            self._set_lr(plan.lr, by_cmd.get("set", []))
        if plan.checkpoint:
            self.save("command" if plan.checkpoint == 1 else "periodic", pending=by_cmd.get("checkpoint", []))
        if plan.pause == 2 and self.state != "paused":
            self.set_state("paused")
        elif plan.pause == 1 and self.state == "paused":
            self.set_state("running")
        for p in by_cmd.get("pause", []) + by_cmd.get("continue", []):
            p.answer(state=self.state, step=self.pos.step)
        if plan.stop:
            stop = by_cmd.get("stop", [])
            reason = self.stop_signal or ("stop command" if stop else "a signal on another rank")
            raise StopRun(reason, stop)
    def _set_lr(self, lr: float, pending: list[Pending]) -> None:
        """Make the current lr the requested one; the schedule keeps its shape from here."""
        factor = lr_at(self.pos.step - self.pos.skipped, self.total_steps, 1.0, self.cfg.schedule)
        self.pos.peak_lr = lr / factor if factor > 1e-12 else lr
        self.tele.emit("log", level="info", message=f"learning rate set to {lr:g} at step {self.pos.step}")
        for p in pending:
            p.answer(lr=lr, peak_lr=self.pos.peak_lr, step=self.pos.step)

    def _stop(self, stop: StopRun) -> int:
        self.set_state("stopping", reason=stop.reason)
        self.save("stop")
        self.flush_saves()
        latest = self.store.pointer("latest") if self.dist.main else None
        path = str(self.run.checkpoints / latest) if latest else None
        for p in stop.pending:
            p.answer(state="stopped", step=self.pos.step, path=path)
        self.set_state("stopped", reason=stop.reason, exit_code=EXIT_STOPPED)
        return EXIT_STOPPED

    def _on_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: leave at once
        self.stop_signal = name

    def set_state(self, state: str, **extra: Any) -> None:
        """Record a state change in the events and status.json."""
        self.state = state
        self.tele.emit("state", state=state, step=self.pos.step, **extra)
        self.write_status(**extra)

    def status(self) -> dict[str, Any]:
        """What `status` replies and status.json holds."""
        return {"state": self.state, "step": self.pos.step, "epoch": self.pos.epoch,
                "total_steps": self.total_steps, "loss": self.last_loss,
                "lr": self.current_lr(),
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


class StepMeter:
    """Accumulates per-step timings and the loss (as a tensor: no sync until read).

    Data wait is host time (perf_counter). The copy to the device, forward+backward and the
    optimizer step are timed with perf_counter on the CPU and with CUDA events on a GPU:
    events are only read in `report`, after the loss has been read, when they are complete,
    so timing adds no host-device synchronization of its own.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.events = device is not None and device.type == "cuda"
        self.data = self.h2d = self.compute = self.optim = self.comm = 0.0
        self.spans: list[tuple[str, Any, Any]] = []
        self.loss_sum: torch.Tensor | None = None
        self.batches = self.samples = self.steps = 0
        self.lr = 0.0
        self.since = time.perf_counter()

    def mark(self) -> Any:
        """A point in time: a recorded CUDA event on a GPU, perf_counter() otherwise."""
        if not self.events:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def span(self, kind: str, start: Any, end: Any) -> None:
        """Add the time between two marks to `kind` (CUDA spans are resolved in `report`)."""
        if self.events:
            self.spans.append((kind, start, end))
        else:
            setattr(self, kind, getattr(self, kind) + end - start)

    def timed(self, loader: Any) -> Any:
        """Iterate the loader, timing how long each batch is waited for."""
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.data += time.perf_counter() - t0
            yield batch

    def add_loss(self, loss: torch.Tensor, n: int) -> None:
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.batches += 1
        self.samples += n

    def report(self, dist: Dist) -> dict[str, Any]:
        """Averages since the last report over every rank (samples summed), then reset."""
        wall = time.perf_counter() - self.since
        loss_sum = self.loss_sum.item() if self.loss_sum is not None else float("nan")
        for kind, start, end in self.spans:  # complete: the .item() above waited for them
            setattr(self, kind, getattr(self, kind) + start.elapsed_time(end) / 1000)
        loss_sum, batches, samples, data, h2d, compute, optim, comm = dist.sum(
            [loss_sum, self.batches, self.samples, self.data, self.h2d, self.compute, self.optim, self.comm])
        n = max(1, batches)  # per micro-batch, averaged over the ranks
        out = {"loss": loss_sum / n, "lr": self.lr, "samples": int(samples), "wall_s": wall,
               "samples_per_s": samples / wall if wall > 0 else 0.0,
               "steps_per_s": self.steps / wall if wall > 0 else 0.0, "data": data / n, "h2d": h2d / n,
               "compute": compute / n, "optim": optim / n, "comm": comm / n}
        self.__init__(self.device)
        return out
