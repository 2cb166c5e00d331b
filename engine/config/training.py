"""The learning sections: [optim], [schedule], [train], [distill], [quantize]."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from engine.config.base import Int, Section, suggest


class OptimConfig(Section):
    """The optimizer."""

    name: Literal["sgd", "adam", "adamw", "lamb"] = Field(
        "adamw", description="sgd, adam, adamw, or lamb (large batches; needs timm)")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (the schedule scales it)")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (decoupled for adamw)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="SGD Nesterov momentum (needs momentum > 0)")
    betas: list[float] = Field(
        [0.9, 0.999], min_length=2, max_length=2, description="Adam/AdamW/LAMB betas"
    )
    eps: float = Field(1e-8, gt=0, description="Adam/AdamW/LAMB epsilon")

    @model_validator(mode="after")
    def _check(self) -> "OptimConfig":
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov=true needs optim.name='sgd' and optim.momentum > 0")
        return self


class ScheduleConfig(Section):
    """The learning rate as a pure function of the optimizer step."""

    name: Literal["constant", "cosine", "step", "onecycle"] = Field(
        "cosine", description="constant, cosine (to min_lr_ratio), step (decay by gamma), onecycle"
    )
    warmup_steps: Int = Field(0, ge=0, description="Linear warm-up from 0 over this many steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine: final lr as a share of lr")
    step_size: Int = Field(1000, ge=1, description="Step: decay every this many steps")
    gamma: float = Field(0.1, gt=0, le=1, description="Step: decay factor")
    pct_start: float = Field(0.3, gt=0, lt=1, description="Onecycle: share of steps spent rising")
    div_factor: float = Field(25.0, ge=1, description="Onecycle: initial lr = lr / div_factor")
    final_div_factor: float = Field(1e4, ge=1, description="Onecycle: final lr = initial / this")


#: The metrics a target may name (as checkpoint.best_metric names them) and which way is better.
TARGET_METRICS = {"val_accuracy": "up", "val_loss": "down", "val_perplexity": "down"}


class TargetConfig(Section):
    """What the run is for: a validation metric's value (train.target)."""

    metric: str = Field("val_accuracy", description="val_accuracy (up), val_loss or val_perplexity (down)")
    value: float = Field(description="The value to reach")

    @model_validator(mode="after")
    def _check(self) -> "TargetConfig":
        if self.metric not in TARGET_METRICS:
            raise ValueError(f"metric = {self.metric!r}: expected one of {', '.join(TARGET_METRICS)}"
                             f"{suggest(self.metric, TARGET_METRICS)}")
        v = self.value
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"value = {v!r}: expected a finite number")
        if self.metric == "val_accuracy" and not 0 < v <= 1:
            raise ValueError(f"value = {v!r}: val_accuracy is a share, expected 0 < value <= 1")
        if self.metric == "val_loss" and v <= 0:
            raise ValueError(f"value = {v!r}: val_loss targets are above 0")
        if self.metric == "val_perplexity" and v <= 1:
            raise ValueError(f"value = {v!r}: val_perplexity targets are above 1")
        return self

    @property
    def up(self) -> bool:
        return TARGET_METRICS[self.metric] == "up"

    def met(self, value: float) -> bool:
        return value >= self.value if self.up else value <= self.value


class TrainConfig(Section):
    """The loop itself."""

    epochs: Int = Field(10, ge=1, description="Passes over the training set")
    max_steps: Optional[Int] = Field(
        None, ge=1, description="Stop after this many optimizer steps (default: epochs decide)"
    )
    batch_size: Int = Field(64, ge=1, description="Samples per micro-batch")
    eval_batch_size: Optional[Int] = Field(None, ge=1, description="Default: batch_size")
    eval_every_steps: Optional[Int] = Field(
        None, ge=1, description="Also validate every this many optimizer steps inside an epoch (as Lightning's "
        "val_check_interval; for long epochs and one-epoch language-model runs): an `eval` event with partial = true "
        "(a new best is checkpointed; train.target's projection and stop count it; the sweep's pruner sees epoch ends "
        "only). Default: at each epoch's end only")
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="fp32, fp16 (autocast + GradScaler) or bf16 (autocast, no scaler)"
    )
    device: str = Field("auto", description="'auto' (cuda if present), 'cpu', 'cuda' or 'cuda:N'")
    seed: Int = Field(0, ge=0, description="Seed for weights, shuffling and augmentation")
    deterministic: bool = Field(
        True, description="Deterministic algorithms (bit-exact resume on the CPU)"
    )
    grad_accum_steps: Int = Field(1, ge=1, description="Micro-batches per optimizer step")
    grad_clip_norm: Optional[float] = Field(
        None, gt=0, description="Clip the gradient's global norm to this (default: off)"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing")
    channels_last: bool = Field(False, description="channels_last memory format for conv nets")
    tf32: bool = Field(False, description="Allow TF32 matmuls and convolutions on GPUs that have them")
    peak_tflops: Optional[float] = Field(
        None, gt=0, description="The device's peak TFLOP/s for MFU (default: a table of common GPUs)")
    compile: bool = Field(False, description="torch.compile the model (falls back to eager on failure)")
    compile_mode: str = Field("default", description="torch.compile mode")
    target: Optional[TargetConfig] = Field(
        None, description="What the run is for, e.g. { metric = \"val_accuracy\", value = 0.98 }: after each "
        "evaluation (from the fourth) a learning curve fitted to the run's evaluations projects the step, time "
        "and dollars to reach it (`projection` events)")
    stop_at_target: bool = Field(
        False, description="Finish the run (state finished, exit 0) at the evaluation that reaches train.target")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        ok = self.device in ("auto", "cpu", "cuda") or (
            self.device.startswith("cuda:") and self.device[5:].isdigit()
        )
        if not ok:
            raise ValueError(
                f"device={self.device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
            )
        if self.stop_at_target and self.target is None:
            raise ValueError("stop_at_target = true needs train.target, e.g. "
                             "target = { metric = \"val_accuracy\", value = 0.98 }")
        return self


class DistillConfig(Section):
    """Knowledge distillation: the model learns from a frozen teacher's softened outputs."""

    enabled: bool = Field(False, description="Train the model as a student of `teacher`")
    teacher: Optional[str] = Field(
        None, description="A run directory of ours (its best checkpoint, else its latest), a checkpoint "
        "file of ours, a torchvision classifier by name, or 'package.module:factory'")
    teacher_weights: Optional[str] = Field(
        None, description="For a torchvision or factory teacher: a local state_dict file (never downloaded)")
    teacher_factory_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for a teacher factory")
    temperature: float = Field(3.0, gt=0, description="Softens both distributions: softmax(logits / T)")
    alpha: float = Field(
        0.5, ge=0, le=1, description="Share of the distillation term: alpha * T^2 * KL + (1 - alpha) * CE")

    @model_validator(mode="after")
    def _check(self) -> "DistillConfig":
        if self.enabled and not self.teacher:
            raise ValueError("enabled=true needs distill.teacher: a run directory, a checkpoint file, "
                             "a torchvision model name or 'package.module:factory'")
        return self


class QuantizeConfig(Section):
    """Training-time quantization (needs the `quantize` extra: torchao). Post-training
    quantization of a finished run is the `cockpit-engine quantize` command."""

    qat: bool = Field(
        False, description="Quantization-aware training: train with int8 fake quantization (PT2E for "
        "conv nets, torchao's QATConfig for Linear-only models), then `cockpit-engine quantize RUN "
        "--mode qat-convert`; fine-tune a float run by setting model.weights_path to its run directory")
    float8: bool = Field(
        False, description="float8 training of the Linear layers (torchao; H100-class GPUs, both "
        "dimensions divisible by 16)")
