"""Quantization while training, as model converters: quantization-aware training and float8.

QAT trains through int8 fake quantization so the weights learn to live with rounding; the
trained run is then turned into a real int8 model by `cockpit-engine quantize RUN --mode
qat-convert`. Conv nets go through PT2E (`prepare_qat_pt2e` on an exported graph, the same
quantizer as static quantization, so the converted model runs the same int8 kernels);
models with Linear layers and no convolutions use torchao's `QATConfig`, which swaps each
Linear for a fake-quantized one and later converts to dynamic int8. Fake-quantization and
observer state are ordinary tensors in the model's state_dict: checkpoints hold them and
load `weights_only`, so a QAT run resumes exactly.

float8 training (`torchao.float8.convert_to_float8_training`) swaps eligible Linear layers
for float8 matmuls on H100-class GPUs. Eligible means both dimensions divisible by 16; a
model where none is refuses instead of training unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from contracts.errors import BadInput
from engine.quantize.support import require_torchao

# The fake quantization that matches what `--mode qat-convert` produces for Linear-only models
# (int8 per-token activations, int8 per-channel symmetric weights, as dynamic int8 runs them).
QAT_ACT = dict(dtype=torch.int8, granularity="per_token", is_symmetric=False)
QAT_WEIGHT = dict(dtype=torch.int8, granularity="per_channel", is_symmetric=True)


def has(model: nn.Module, kind: type) -> bool:
    return any(isinstance(m, kind) for m in model.modules())


def qat_kind(model: nn.Module) -> str:
    """'pt2e' for conv nets, 'linear' for models with Linear layers only."""
    if has(model, nn.Conv2d) or has(model, nn.Conv1d):
        return "pt2e"
    if has(model, nn.Linear):
        return "linear"
    raise BadInput("quantize.qat = true: the model has no Conv or Linear layer to quantize")


def x86_quantizer(is_qat: bool) -> Any:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat))
    return quantizer


ACTIVATIONS = ("ReLU", "ReLU6", "Hardtanh", "SiLU", "GELU", "Hardswish", "LeakyReLU")


def separate_reused_activations(gm: torch.fx.GraphModule) -> int:
    """Give each call of a reused activation module its own identity in the graph's metadata.

    torchvision's ResNet blocks call one `self.relu` twice; the quantizer groups graph nodes
    into partitions by the module they came from, so both calls land in one partition with two
    outputs and the x86 quantizer's conv-add-relu matching fails ("Input partition has more
    than one output node"). Returns how many calls were separated.
    """
    seen: dict[str, int] = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not stack:
            continue
        key, (fqn, cls) = list(stack.items())[-1]
        name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1]
        if name not in ACTIVATIONS:
            continue
        seen[fqn] = seen.get(fqn, 0) + 1
        if seen[fqn] > 1:
            node.meta["nn_module_stack"] = {**stack, key: (f"{fqn}@{seen[fqn]}", cls)}
    return sum(n - 1 for n in seen.values())


def quantizer_prepare(prepare: Any, graph: torch.fx.GraphModule, is_qat: bool, what: str) -> torch.fx.GraphModule:
    """PT2E's prepare (observers, or fake quantization for QAT) with the x86 quantizer; a model
    the quantizer cannot annotate is bad input, named."""
    separate_reused_activations(graph)
    try:
        return prepare(graph, x86_quantizer(is_qat=is_qat))
    except Exception as exc:  # noqa: BLE001 - the quantizer's pattern matching failed on this model
        raise BadInput(f"{what}: the x86 quantizer cannot annotate this model ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from None


def prepare_qat(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The fake-quantized model QAT trains: deterministic, so a resume or the convert step
    rebuilds the same module and loads the checkpoint's state into it."""
    from engine.quantize.artifact import export

    if qat_kind(model) == "linear":
        from torchao.quantization import quantize_
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

        quantize_(model, QATConfig(activation_config=IntxFakeQuantizeConfig(**QAT_ACT),
                                   weight_config=IntxFakeQuantizeConfig(**QAT_WEIGHT), step="prepare"))
        return model
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    graph = export(model.train(), example, "quantize.qat = true").module()
    prepared = quantizer_prepare(prepare_qat_pt2e, graph, True, "quantize.qat = true")
    allow_exported_model_train_eval(prepared)  # .train()/.eval() switch BatchNorm and dropout
    _rng_neutral(prepared)
    return prepared


def _rng_neutral(model: nn.Module) -> None:
    """Make the exported model's train()/eval() leave the RNG alone: they rewrite the graph's
    dropout and BatchNorm patterns by tracing them on random inputs, which would draw from the
    global generator at every epoch start and evaluation, so a resumed run (which calls train()
    at a different step) would drift from the uninterrupted one."""
    switch = model.train

    def train(mode: bool = True) -> nn.Module:
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return switch(mode)

    model.train = train  # type: ignore[method-assign]
    model.eval = lambda: train(False)  # type: ignore[method-assign]


def example_input(spec: Any, device: torch.device | str = "cpu", batch: int = 2) -> torch.Tensor:
    """A batch shaped like the data, for tracing."""
    x = spec.train[0][0]
    shape = tuple(x.shape) if hasattr(x, "shape") else tuple(torch.as_tensor(x).shape)
    return torch.rand((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)


class QAT:
    """Quantization-aware training as a model converter."""

    name = "qat"

    def __init__(self, spec: Any):
        self.spec = spec

    def convert(self, model: nn.Module) -> nn.Module:
        device = next(model.parameters()).device
        return prepare_qat(model, example_input(self.spec, device))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def finalize(self, model: nn.Module) -> nn.Module:
        return model  # the int8 model is made by `cockpit-engine quantize RUN --mode qat-convert`


def float8_filter(module: nn.Module, fqn: str) -> bool:
    """Linear layers whose both dimensions are divisible by 16 (float8 matmul's requirement)."""
    return isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


class Float8:
    """float8 training of the eligible Linear layers (torchao.float8)."""

    name = "float8"
    layers: tuple[list[str], list[str]] = ([], [])

    def convert(self, model: nn.Module) -> nn.Module:
        from torchao.float8 import convert_to_float8_training

        self.layers = float8_layers(model)
        return convert_to_float8_training(model, module_filter_fn=float8_filter)

    def summary(self) -> str:
        ok, not_ok = self.layers
        return (f"float8 training: {len(ok)} of {len(ok) + len(not_ok)} Linear layers converted "
                f"({', '.join(ok)})" + (f"; left in high precision (a dimension not divisible by 16): "
                                          f"{', '.join(not_ok)}" if not_ok else ""))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def finalize(self, model: nn.Module) -> nn.Module:
        return model


def float8_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """(eligible, ineligible) Linear layer names."""
    ok, not_ok = [], []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            (ok if float8_filter(m, name) else not_ok).append(f"{name} ({m.in_features}->{m.out_features})")
    return ok, not_ok


def check(cfg: Any, model: nn.Module, spec: Any) -> None:
    """Refuse a training-time quantization the run cannot do, before its directory exists."""
    q = cfg.quantize
    if not (q.qat or q.float8):
        return
    if q.qat and q.float8:
        raise BadInput("quantize.qat and quantize.float8 are both true: pick one")
    field = "quantize.qat = true" if q.qat else "quantize.float8 = true"
    require_torchao(field)
    if q.float8:
        ok, not_ok = float8_layers(model)
        if not ok:
            raise BadInput(f"{field}: no Linear layer has both dimensions divisible by 16, so float8 would "
                           f"change nothing (Linear layers: {', '.join(not_ok) or 'none'}); float8 pays off "
                           "for large Linear layers (transformers, MLPs)")
        if cfg.train.device == "cpu" or not torch.cuda.is_available():
            raise BadInput(f"{field}: float8 matmuls need a CUDA GPU of compute capability 8.9 or later "
                           "(H100-class); none is visible" if not torch.cuda.is_available() else
                           "(H100-class); train.device is 'cpu'")
        if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
            raise BadInput(f"{field}: this GPU ({torch.cuda.get_device_name()}) has compute capability "
                           f"{torch.cuda.get_device_capability()}; float8 needs 8.9 or later")
        return
    if qat_kind(model) == "pt2e":
        prepare_qat(copy.deepcopy(model), example_input(spec))  # a model export cannot trace is refused here


def converters(cfg: Any, spec: Any) -> list[Any]:
    """The training-time quantization converters a config asks for."""
    if cfg.quantize.qat:
        return [QAT(spec)]
    if cfg.quantize.float8:
        return [Float8()]
    return []
