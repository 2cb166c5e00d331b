"""The core of a step: micro-steps (forward, backward) and the optimizer step, and their meter.

`Stepper.micro_step` runs the task under autocast and backpropagates the loss divided by the
accumulation steps (scaled for fp16); `optimizer_step` unscales and clips, steps, updates the
scaler and zeroes the gradients. `StepMeter` keeps the timings and sums the loss and its
parts as device tensors: nothing is read back to the host until a logging step.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from engine.parallel.dist import Dist
from engine.parallel.wrap import Wrapped
from engine.train.evaluate import autocast
from engine.train.task import StepOutput


class StepMeter:
    """Accumulates per-step timings, the loss and its parts (tensors: no sync until read).

    Data wait is host time (perf_counter). The copy to the device, forward+backward and the
    optimizer step are timed with perf_counter on the CPU and with CUDA events on a GPU:
    events are only read in `report`, after the loss has been read, when they are complete,
    so timing adds no host-device synchronization of its own.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.events = device is not None and device.type == "cuda"
        self.data = self.h2d = self.compute = self.optim = self.comm = self.bubble = 0.0
        #: A pipeline stage's (index, stages, forward s, backward s) since the last report.
        self.stage: list = []
        self.spans: list[tuple[str, Any, Any]] = []
        self.loss_sum: torch.Tensor | None = None
        self.part_sums: dict[str, torch.Tensor] = {}
        #: Correct predictions (argmax of the logits) and the samples they were counted over.
        self.correct_sum: torch.Tensor | None = None
        self.counted = 0
        self.batches = self.samples = self.steps = 0
        self.loss_batches = 0  # micro-batches whose loss this rank knows (a pipeline's last stage only)
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

    def add_loss(self, loss: torch.Tensor, n: int, parts: dict[str, torch.Tensor] | None = None,
                 known: bool = True) -> None:
        """Add one micro-batch's (detached) loss and parts, as device tensors (`known` = False: a
        pipeline stage that does not see the loss adds zeros, so the ranks' sums line up)."""
        self.loss_batches += int(known)
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        for name, value in (parts or {}).items():
            self.part_sums[name] = value if name not in self.part_sums else self.part_sums[name] + value
        self.batches += 1
        self.samples += n

    def add_correct(self, logits: torch.Tensor | None, y: torch.Tensor) -> None:
        """Count one micro-batch's correct predictions, as a device tensor: one per class label, or
        one per token (logits (B, T, vocab) against targets (B, T))."""
        if logits is None or y.is_floating_point() or logits.dim() != y.dim() + 1 or logits.shape[:-1] != y.shape:
            return
        correct = (logits.detach().argmax(-1) == y).sum()
        self.correct_sum = correct if self.correct_sum is None else self.correct_sum + correct
        self.counted += y.numel()

    def _stage_vectors(self) -> list[float]:
        """[forward of stage 0..P-1, backward of stage 0..P-1], this rank's slot filled."""
        if not self.stage:
            return []
        index, stages, forward, backward = self.stage
        vec = [0.0] * (2 * stages)
        vec[index], vec[stages + index] = forward, backward
        return vec

    def pending_loss(self) -> float | None:
        """The summed loss not yet reported (a host-device sync; used before a save)."""
        return None if self.loss_sum is None else float(self.loss_sum.item())

    def report(self, dist: Dist, ranks: bool = True) -> dict[str, Any]:
        """Averages since the last report over every rank (samples summed), then reset; with
        `ranks`, every rank's own record too (its slot in the same all-reduce)."""
        wall = time.perf_counter() - self.since
        # .item() here is the step's one host-device sync, on logging steps only
        names = list(self.part_sums)
        correct_t = [] if self.correct_sum is None else [self.correct_sum]
        if self.loss_sum is not None:  # one copy to the host for the loss, its parts and the correct count
            loss_sum, *parts = torch.stack(
                [t.double() for t in (self.loss_sum, *self.part_sums.values(), *correct_t)]).tolist()
            correct = parts.pop() if correct_t else 0.0
        else:
            loss_sum, parts, correct = float("nan"), [float("nan")] * len(names), 0.0
        for kind, start, end in self.spans:  # complete: the .item() above waited for them
            setattr(self, kind, getattr(self, kind) + start.elapsed_time(end) / 1000)
        stages = self._stage_vectors()
        slots = self._rank_slots(dist) if ranks else []  # every rank's record (engine.telemetry.ranks), in its slot
        loss_sum, batches, samples, data, h2d, compute, optim, comm, correct, counted, known, bubble, *rest = dist.sum(
            [loss_sum, self.batches, self.samples, self.data, self.h2d, self.compute, self.optim, self.comm,
             correct, self.counted, self.loss_batches, self.bubble, *stages, *slots, *parts])
        stages, slots, parts = rest[:len(stages)], rest[len(stages):len(stages) + len(slots)], rest[len(stages) + len(slots):]
        n = max(1, batches)  # per micro-batch, averaged over the ranks
        samples /= dist.model_parallel  # a tensor- or pipeline-parallel group's ranks count the same samples
        k = max(1, known)
        out = {"loss": loss_sum / k, "lr": self.lr, "samples": int(samples), "wall_s": wall,
               "samples_per_s": samples / wall if wall > 0 else 0.0,
               "steps_per_s": self.steps / wall if wall > 0 else 0.0, "data": data / n, "h2d": h2d / n,
               "compute": compute / n, "optim": optim / n, "comm": comm / n,
               "losses": {name: value / k for name, value in zip(names, parts)},
               "accuracy": correct / counted if counted else None,
               # the period's seconds, each rank's average (the goodput ledger's step classes)
               "steps": self.steps, "spans": {"productive": (h2d + compute + optim) / dist.world,
                                              "data": data / dist.world, "communication": comm / dist.world,
                                              "bubble": bubble / dist.world}}
        if slots:
            from engine.telemetry.ranks import FIELDS

            out["rank_slots"] = slots
            out["mem_peak_ranks"] = [int(b) for b in slots[FIELDS.index("mem_peak_bytes")::len(FIELDS)]]
        if stages:  # a pipeline: each stage's forward and backward per micro-batch, and the idle time
            p = len(stages) // 2
            out.update(bubble=bubble / n, stage_forward=[s * p / n for s in stages[:p]],
                       stage_backward=[s * p / n for s in stages[p:]])
        self.__init__(self.device)
        return out


    def _rank_slots(self, dist: Dist) -> list[float]:
        """world x len(FIELDS) zeros but for this rank's own record (none in one process)."""
        if not dist.active:
            return []
        from engine.telemetry.flops import peak_bytes
        from engine.telemetry.ranks import FIELDS, gpu_reading

        device = self.device or torch.device("cpu")
        n = max(1, self.batches)
        own = [self.data / n, self.h2d / n, self.compute / n, self.comm / n, self.optim / n,
               float(peak_bytes(device)), *gpu_reading(device)]
        slots = [0.0] * (dist.world * len(FIELDS))
        slots[dist.rank * len(FIELDS):(dist.rank + 1) * len(FIELDS)] = own
        return slots


class Stepper:
    """Forward/backward per micro-batch and the optimizer step, for one wrapped model."""

    def __init__(self, net: Wrapped, forward: Any, optimizer: torch.optim.Optimizer, scaler: Any,
                 task: Any, device: torch.device, precision: str, accum: int, clip: float | None):
        self.net, self.forward, self.optimizer, self.scaler = net, forward, optimizer, scaler
        self.task, self.device, self.precision = task, device, precision
        self.accum, self.clip = accum, clip

    def micro_step(self, x: torch.Tensor, y: torch.Tensor, meter: StepMeter, prepare: Any,
                   sync: bool = True) -> StepOutput | None:
        """Forward and backward for one micro-batch; gradients accumulate. Under DDP/FSDP the
        gradients are reduced across ranks only on the step's last micro-batch (`sync`)."""
        if self.net.pipeline is not None:
            return self.pipeline_step(x, y, meter, prepare)
        mark0 = meter.mark()
        x = prepare(x.to(self.device, non_blocking=True))
        y = y.to(self.device, non_blocking=True)
        mark1 = meter.mark()
        meter.span("h2d", mark0, mark1)
        comm = self.net.comm
        with self.net.grad_sync(sync):
            with autocast(self.device, self.precision):
                out = self.task(self.forward, (x, y))
            comm.launched = 0.0
            t_backward = time.perf_counter()
            self.scaler.scale(out.loss / self.accum).backward()
            t_end = time.perf_counter()
        meter.add_loss(out.loss.detach(), len(y), out.parts)
        meter.add_correct(out.logits, y)
        waited = t_end - comm.launched if comm.launched > t_backward else 0.0
        meter.comm += waited
        if meter.events:  # on a GPU the device's own clock times forward+backward
            meter.span("compute", mark1, meter.mark())
        else:
            meter.compute += t_end - mark1 - waited
        return out

    def pipeline_step(self, x: torch.Tensor, y: torch.Tensor, meter: StepMeter, prepare: Any) -> None:
        """The batch through this rank's pipeline stage: the schedule runs every microbatch's
        forward and backward, exchanging activations and gradients with the neighbouring stages."""
        mark0 = meter.mark()
        x, y = prepare(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)
        mark1 = meter.mark()
        meter.span("h2d", mark0, mark1)
        pipe = self.net.pipeline
        pipe.clock.take()  # (an evaluation's forwards are not this step's)
        t0 = time.perf_counter()
        with autocast(self.device, self.precision):
            losses, logits = pipe.step(x, y)
        wall = time.perf_counter() - t0
        forward, backward = pipe.clock.take()
        if not meter.stage:
            meter.stage = [pipe.index, pipe.stages, 0.0, 0.0]
        meter.stage[2] += forward
        meter.stage[3] += backward
        meter.bubble += max(0.0, wall - forward - backward)
        if pipe.last:
            loss = torch.stack([part.detach().float() for part in losses]).mean()
            meter.add_loss(loss, len(y), {"ce": loss})
            meter.add_correct(logits, y)
        else:
            zero = torch.zeros((), device=self.device)
            meter.add_loss(zero, len(y), {"ce": zero}, known=False)
        meter.compute += min(wall, forward + backward)  # busy; the rest of the schedule's time is the bubble
        return None

    def optimizer_step(self, meter: StepMeter, lr: float) -> bool:
        """Unscale, clip, step, update the scaler, zero the gradients; False when fp16's
        scaler skipped the step for inf/NaN gradients."""
        t0 = time.perf_counter()
        mark0 = meter.mark()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.model.parameters(), self.clip)
        # fp16 only: GradScaler.step already synchronizes to check for inf/NaN, so reading the
        # scale costs no extra stall. The scale only ever shrinks when the step was skipped.
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else 0.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        skipped = self.scaler.is_enabled() and self.scaler.get_scale() < scale_before
        self.optimizer.zero_grad(set_to_none=True)
        meter.lr, meter.steps = lr, meter.steps + 1
        if meter.events:
            meter.span("optim", mark0, meter.mark())
        else:
            meter.optim += time.perf_counter() - t0
        return not skipped


def compiled(model: nn.Module, enabled: bool, mode: str, emit: Any) -> Any:
    """torch.compile'd when asked; a compile failure falls back to eager with a warning."""
    if not enabled:
        return model
    try:
        return torch.compile(model, mode=mode)
    except Exception as exc:  # noqa: BLE001 - compile failures fall back to eager
        emit("log", level="warning", message=f"torch.compile failed, running eager: {exc}")
        return model
