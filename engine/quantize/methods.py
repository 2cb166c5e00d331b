"""The three ways to an int8 model: static (PT2E, calibrated), dynamic (torchao), QAT's convert.

Each takes the float model (or QAT's fake-quantized one) wrapped in `Normalized` and returns
the exported program to save, with the layers it quantized and those it left in float.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from contracts.errors import BadInput
from engine.quantize.artifact import Normalized, export, strip_unused
from engine.quantize.training import has, quantizer_prepare

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
DEQUANT_WEIGHT = ("dequantize_per_channel", "dequantize_per_tensor")


@dataclass
class Quantized:
    """An exported int8 program and what it covers."""

    program: Any
    quantized: list[str] = field(default_factory=list)
    float: list[str] = field(default_factory=list)


def weighted_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, WEIGHTED)]


def _module_of(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path.removeprefix("L['self'].").removeprefix("model.") or None


def graph_coverage(gm: torch.fx.GraphModule, names: list[str]) -> tuple[list[str], list[str]]:
    """Which conv/linear layers of a converted PT2E graph take int8 weights (their weight
    comes out of a dequantize op), and which stayed float."""
    covered = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or not any(k in str(node.target) for k in ("conv", "linear")):
            continue
        weight = node.args[1] if len(node.args) > 1 else None
        if isinstance(weight, torch.fx.Node) and any(k in str(weight.target) for k in DEQUANT_WEIGHT):
            module = _module_of(node)
            if module:
                covered.add(module)
    quantized = [n for n in names if n in covered]
    return quantized, [n for n in names if n not in covered]


def static(model: nn.Module, norm: tuple[Any, Any], example: torch.Tensor,
           calibration: Iterable[torch.Tensor], what: str) -> Quantized:
    """Post-training static int8 through PT2E: export, insert observers, calibrate, convert."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    names = weighted_layers(model)
    graph = export(Normalized(model, *norm).eval(), example, what).module()  # calibrated on [0, 1] images
    prepared = quantizer_prepare(prepare_pt2e, graph, False, what)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    converted = convert_pt2e(prepared)
    return _finish(converted, names, None, example, what)


def qat_convert(prepared: nn.Module, names: list[str], norm: tuple[Any, Any], example: torch.Tensor,
                what: str) -> Quantized:
    """A QAT run's fake-quantized model as a real int8 one."""
    if isinstance(prepared, torch.fx.GraphModule):
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        move_exported_model_to_eval(prepared)
        return _finish(convert_pt2e(prepared), names, norm, example, what)
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(prepared, QATConfig(step="convert"))  # fake-quantized Linear layers back to plain ones
    return dynamic(prepared, norm, example, what)


def _finish(converted: torch.fx.GraphModule, names: list[str], norm: tuple[Any, Any] | None,
            example: torch.Tensor, what: str) -> Quantized:
    """Strip the replaced float weights and export (with normalization in front, unless the
    graph has it already)."""
    strip_unused(converted)
    quantized, left = graph_coverage(converted, names)
    program = export(converted if norm is None else Normalized(converted, *norm), example, what)
    return Quantized(program, quantized, left)


def dynamic(model: nn.Module, norm: tuple[Any, Any], example: torch.Tensor, what: str) -> Quantized:
    """Dynamic int8 (int8 weights, activations quantized per token at run time) for Linear layers."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    from torchao.utils import unwrap_tensor_subclass

    if not has(model, nn.Linear):
        raise BadInput(f"{what}: the model has no Linear layer, and dynamic int8 quantizes only Linear "
                       f"layers (it leaves {', '.join(weighted_layers(model)) or 'every layer'} in float); "
                       "use --mode static for conv nets")
    names = weighted_layers(model)
    model = copy.deepcopy(model).eval()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    quantized = [n for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and type(m.weight) not in (nn.Parameter, torch.Tensor)]
    unwrap_tensor_subclass(model)  # plain tensors in the archive: it loads without unpickling
    program = export(Normalized(model, *norm).eval(), example, what)
    return Quantized(program, quantized, [n for n in names if n not in quantized])


def float_program(model: nn.Module, norm: tuple[Any, Any], example: torch.Tensor, what: str) -> Any:
    """The float model exported the same way: the baseline every variant is measured against."""
    return export(Normalized(copy.deepcopy(model), *norm).eval(), example, what)


MODES: dict[str, Callable[..., Quantized]] = {"static": static, "dynamic": dynamic, "qat-convert": qat_convert}
