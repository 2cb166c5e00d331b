"""Teachers for distillation: a run or checkpoint of ours, a torchvision model, or a factory; frozen.

The teacher is built before the run directory exists, so a bad teacher is refused (exit 2)
with nothing written. It is frozen (no gradients, eval mode: its BatchNorm statistics never
move), never wrapped in DDP/FSDP, never compiled with the student and never given to the
optimizer. Its identity is the SHA-256 of its weights, recorded in every checkpoint so that a
resume with another teacher is refused.

The teacher sees the student's batch: the same samples, the same crops and flips. A teacher from
a run or checkpoint of ours was trained on inputs normalized its own way (its config's
data.augment.normalize, mean and std); when that differs from the student's, `InputAdapter`
turns the student's inputs back into pixels and normalizes them the teacher's way, so the
teacher is scored and consulted on the inputs it learnt from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from contracts.layout import RunLayout
from engine.checkpoint.store import best_or_latest, load
from engine.config.schema import Config, ModelConfig
from engine.data.sources import DataSpec, normalization
from contracts.errors import BadInput
from engine.model.zoo import build_model


@dataclass
class Teacher:
    """A frozen teacher, where it came from, and the digest of its weights."""

    model: nn.Module
    source: str
    sha256: str


def load_teacher(cfg: Config, spec: DataSpec) -> Teacher | None:
    """The configured teacher, checked against the student's data; None without distillation."""
    d = cfg.distill
    if not d.enabled:
        return None
    model, source, teacher_cfg = _build(cfg, spec)
    _check_outputs(model, spec, d.teacher)
    model.requires_grad_(False)
    model.eval()
    sha256 = weights_sha256(model)  # of the teacher's own weights, with or without an adapter
    if teacher_cfg is not None:
        model = InputAdapter.between(model, cfg, teacher_cfg, spec.in_channels)
    return Teacher(model, source, sha256)


class InputAdapter(nn.Module):
    """A teacher behind a change of input normalization: per channel, x * scale + shift turns
    the student's inputs into the teacher's (pixels normalized the way its own run did)."""

    def __init__(self, model: nn.Module, scale: list[float], shift: list[float]):
        super().__init__()
        self.model = model
        # not persistent: the teacher's state (and its SHA-256) stays its own weights
        self.register_buffer("scale", torch.tensor(scale).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale.to(x.dtype) + self.shift.to(x.dtype) if x.dim() == 4 else x)

    @staticmethod
    def between(model: nn.Module, student: Config, teacher: Config, channels: int) -> nn.Module:
        """`model` itself when the two configs normalize alike, else `model` behind an adapter."""
        s_scale, s_shift = _pixels_from(student, channels)
        t_scale, t_shift = _pixels_from(teacher, channels)
        if (s_scale, s_shift) == (t_scale, t_shift):
            return model
        # pixels = x_s * s_scale + s_shift;  x_t = (pixels - t_shift) / t_scale
        scale = [a / b for a, b in zip(s_scale, t_scale)]
        shift = [(c - d) / b for c, d, b in zip(s_shift, t_shift, t_scale)]
        return InputAdapter(model, scale, shift).eval()


def _pixels_from(cfg: Config, channels: int) -> tuple[list[float], list[float]]:
    """(std, mean) per channel such that pixels = inputs * std + mean for this config's inputs."""
    if not cfg.data.augment.normalize:
        return [1.0] * channels, [0.0] * channels
    mean, std = normalization(cfg, channels)  # (a run whose lengths differ never trained)
    return [float(v) for v in std], [float(v) for v in mean]


def _build(cfg: Config, spec: DataSpec) -> tuple[nn.Module, str, Config | None]:
    """The teacher, where it came from, and its run's config (None: not a run of ours)."""
    d = cfg.distill
    path = Path(d.teacher)
    if path.is_dir() or path.suffix == ".pt" or path.exists():
        if path.is_dir():
            checkpoint = _run_checkpoint(path, d.teacher)
        elif path.is_file():
            checkpoint = path
        else:
            raise BadInput(f"distill.teacher = {d.teacher!r}: no such checkpoint file")
        model, teacher_cfg = _from_checkpoint(checkpoint, spec, d.teacher)
        return model, str(path), teacher_cfg
    if "/" in d.teacher:
        raise BadInput(f"distill.teacher = {d.teacher!r}: no such run directory or checkpoint file")
    teacher_cfg = Config(model=ModelConfig(name=d.teacher, factory_args=d.teacher_factory_args,
                                           weights_path=d.teacher_weights))
    try:
        return build_model(teacher_cfg, spec), d.teacher, None
    except BadInput as exc:  # name the teacher's fields, not the student's
        text = str(exc).replace("model.weights_path", "distill.teacher_weights").replace(
            "model.factory_args", "distill.teacher_factory_args").replace("model.name", "distill.teacher")
        raise BadInput(text) from None


def _run_checkpoint(run: Path, given: str) -> Path:
    """A run's best checkpoint, else its latest."""
    if not RunLayout(run).config.is_file():
        raise BadInput(f"distill.teacher = {given!r}: {run} is not a run directory (no config.toml)")
    found = best_or_latest(RunLayout(run).checkpoints)
    if found is not None:
        return found
    raise BadInput(f"distill.teacher = {given!r}: the run has no checkpoint to teach from "
                   "(train it first, or name a checkpoint file)")


def _from_checkpoint(path: Path, spec: DataSpec, given: str) -> tuple[nn.Module, Config]:
    """The teacher with the checkpoint's weights, and the config its run trained with."""
    if path.is_dir():
        raise BadInput(f"distill.teacher = {given!r}: {path.name} is a sharded (FSDP) checkpoint; "
                       "a teacher must be one file (train it with one process or DDP)")
    try:
        state = load(path)
        teacher_cfg = Config.model_validate(state["config"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
        raise BadInput(f"distill.teacher = {given!r}: cannot read checkpoint {path}: {exc}") from None
    teacher_cfg.model.weights_path = None
    model = build_model(teacher_cfg, spec)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise BadInput(f"distill.teacher = {given!r}: its weights do not fit the student's data "
                       f"({spec.num_classes} classes, {spec.in_channels} input channels): "
                       f"{str(exc).splitlines()[-1].strip()}") from None
    return model, teacher_cfg


def _check_outputs(model: nn.Module, spec: DataSpec, given: str) -> None:
    """One forward pass on a training sample: the teacher must take the student's input and
    give one logit per class."""
    x = spec.train[0][0]
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.float().unsqueeze(0))
    except Exception as exc:  # noqa: BLE001 - a teacher that cannot take the student's input
        raise BadInput(f"distill.teacher = {given!r}: it cannot take the student's input "
                       f"({spec.in_channels} channels, shape {tuple(x.shape)}): {exc}") from None
    if out.dim() != 2 or out.shape[1] != spec.num_classes:
        raise BadInput(f"distill.teacher = {given!r}: it gives {tuple(out.shape[1:])} outputs per sample, "
                       f"the student's data has {spec.num_classes} classes")


def weights_sha256(model: nn.Module) -> str:
    """The teacher's identity: SHA-256 over every tensor of its state, by name, in order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
