"""The loop's step events and the doctor's verdicts, on logging steps.

A mixin of the Trainer (engine.train.trainer).
"""

from __future__ import annotations

import torch

from engine.telemetry.doctor import nothing_to_change, suggest
from engine.telemetry.flops import bf16_native, memory_fields, step_flops
from engine.telemetry.ranks import gpu_slots, identity, records, straggler_message
from engine.train.guard import Diverged
from engine.train.step import StepMeter


class Reporting:
    """One step event per logging step, and the doctor's verdict when it changes."""

    def log_step(self, meter: StepMeter) -> None:
        """One step event; reading the loss here is the only host-device sync of the step."""
        report = meter.report(self.dist, ranks=self.cfg.logging.ranks)
        self.pos.samples += report["samples"]
        self.pos.train_seconds += report["wall_s"]
        self.last_loss = report["loss"]
        try:
            self.guard.loss(report["loss"], self.pos.step)
        except Diverged as exc:
            self.alerts.fire("nonfinite_loss", "critical", self.pos.step, str(exc), loss=report["loss"])
            raise
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
            **self._pipeline_fields(report),
            **({"mem_peak_ranks_bytes": report["mem_peak_ranks"]} if "mem_peak_ranks" in report else {}),
        )
        self.step_s = report["wall_s"] / report["steps"] if report["steps"] else self.step_s
        if self.ledger is not None:
            self.ledger.interval = self.interval
            spans = report["spans"]
            self.ledger.spans(self.pos.step, report["steps"], spans["productive"], spans["data"],
                              spans["communication"], spans["bubble"])
            self.ledger.send()
        if self.dist.main:
            self.alerts.loss(self.pos.step, report["loss"])
            self.alerts.throughput(self.pos.step, report["samples_per_s"])
            if "rank_slots" in report:
                self._ranks(report["rank_slots"])
            elif not self.dist.active and self.device.type == "cuda" and self.cfg.alerts.gpu:
                self._gpu_alerts(records(gpu_slots(self.device), 1, [identity()]))
        self.doctor.add(report["data"] + report["h2d"], report["compute"] + report["optim"], report["comm"],
                        report.get("bubble", 0.0))
        verdict = self.doctor.changed()
        if verdict is not None:
            facts = self._doctor_facts()
            named = suggest(verdict.bound, **facts)
            if named is not None:
                verdict.field, verdict.current, verdict.value = named
            else:  # say plainly that nothing in the config will help (the pane and f say the same)
                verdict.remedy = nothing_to_change(verdict.bound, **facts)
            self.tele.emit("doctor", step=self.pos.step, bound=verdict.bound, share=verdict.share,
                           field=verdict.field, remedy=verdict.remedy, message=verdict.message(),
                           **({"value": verdict.value, "current": verdict.current} if named else {}))

    def _ranks(self, slots: list[float]) -> None:
        """Rank 0: every rank's record as a `ranks` event, and a straggler alert for a new one."""
        ranks = records(slots, self.dist.world, self.rank_ids or [])
        slowest = max(ranks, key=lambda r: r["busy_s"])["rank"]
        self.tele.emit("ranks", step=self.pos.step, slowest=slowest, ranks=ranks)
        if self.cfg.alerts.gpu:
            self._gpu_alerts(ranks)
        if not self.cfg.alerts.straggler:
            return
        for s in self.stragglers.feed(ranks):
            field = ({"field": "data.num_workers"} if s["where"] == "input" else {})
            self.alerts.fire("straggler", "warning", self.pos.step, straggler_message(s), **s, **field)

    def _gpu_alerts(self, ranks: list[dict]) -> None:
        for kind, severity, message, fields in self.gpu_health.feed(ranks):
            self.alerts.fire(kind, severity, self.pos.step, message, **fields)

    def _pipeline_fields(self, report: dict) -> dict:
        """A pipeline's idle time and its share of the schedule, beside the ideal share, and each
        stage's forward and backward seconds per micro-batch."""
        if "bubble" not in report:
            return {}
        from engine.parallel.pipeline import ideal_bubble

        pipe = self.net.pipeline
        busy = report["compute"] + report["bubble"]
        return {"time_bubble_s": report["bubble"], "pipeline_bubble": report["bubble"] / busy if busy else 0.0,
                "pipeline_bubble_ideal": ideal_bubble(pipe.stages, pipe.microbatches, pipe.per_rank),
                "stage_forward_s": report["stage_forward"], "stage_backward_s": report["stage_backward"]}

    def _doctor_facts(self) -> dict:
        """What doctor.suggest needs to name a value for a verdict: the config's values and this device's."""
        d, t, gpu = self.cfg.data, self.cfg.train, self.device.type == "cuda"
        pipe = getattr(self.net, "pipeline", None)
        return {"num_workers": d.num_workers, "pin_memory": d.pin_memory, "batch_size": t.batch_size, "on_gpu": gpu,
                "mem_peak_bytes": memory_fields(self.device).get("mem_peak_bytes"),
                "mem_total_bytes": torch.cuda.get_device_properties(self.device).total_memory if gpu else None,
                "precision": t.precision, "bf16": bf16_native(self.device), "channels_last": t.channels_last,
                "conv": any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in self.model.modules()),
                "compile": t.compile, "microbatches": pipe.microbatches if pipe is not None else None}
