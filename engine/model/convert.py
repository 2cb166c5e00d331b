"""Model converters: change the model after it is built, before it is wrapped and trained.

A converter's `convert(model)` runs once the model is on its device and before DDP/FSDP,
torch.compile and the optimizer see it; `inputs(x)` readies a batch for the converted model;
`finalize(model)` runs after training. `channels_last` was the first converter; quantization-aware
training and float8 training (engine.quantize.training) are the others; the session picks them
(engine.run.assemble.converters). A converter may also have
`summary()`: one line on what `convert` changed, which the run logs (float8 names its layers).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class ModelConverter(Protocol):
    """Changes a model before training and may finish it after."""

    name: str

    def convert(self, model: nn.Module) -> nn.Module: ...

    def inputs(self, x: torch.Tensor) -> torch.Tensor: ...

    def finalize(self, model: nn.Module) -> nn.Module: ...


class ChannelsLast:
    """NHWC memory format for conv nets (faster convolutions on tensor cores)."""

    name = "channels_last"

    def convert(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    def finalize(self, model: nn.Module) -> nn.Module:
        return model


def convert(model: nn.Module, converters: list[ModelConverter]) -> nn.Module:
    """Apply every converter in order."""
    for c in converters:
        model = c.convert(model)
    return model


def summaries(converters: list[ModelConverter]) -> list[str]:
    """What each converter that says so changed (its optional `summary()`), after `convert`."""
    return [line for c in converters if callable(getattr(c, "summary", None)) and (line := c.summary())]


def prepare_inputs(x: torch.Tensor, converters: list[ModelConverter]) -> torch.Tensor:
    """A batch as the converted model expects it."""
    for c in converters:
        x = c.inputs(x)
    return x


def finalize(model: nn.Module, converters: list[ModelConverter]) -> nn.Module:
    """Finish every converter after training, last applied first."""
    for c in reversed(converters):
        model = c.finalize(model)
    return model
