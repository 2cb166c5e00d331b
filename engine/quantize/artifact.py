"""Quantized models on disk: `torch.export` programs (`.pt2`) of plain tensors, loaded safely.

A converted PT2E graph keeps its activation scales as graph constants and is fast only under
`torch.compile`, so the artifact is the exported program, not a state_dict. Every artifact
takes images scaled to [0, 1] with any batch size and normalizes them itself, so using it
needs nothing of ours: `torch.export.load(path).module()`.

`torch.export.load` unpickles tensor-subclass weights with `weights_only=False`; our
artifacts never hold such entries (torchao's subclasses are unwrapped into plain tensors
first), and `load` here refuses any archive that does, so loading one runs no code.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contracts.errors import BadInput

MAX_BATCH = 1 << 16


class Normalized(nn.Module):
    """Per-channel normalization in front of a model: the artifact takes [0, 1] images."""

    def __init__(self, model: nn.Module, mean: list[float] | None, std: list[float] | None):
        super().__init__()
        self.model = model
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.model(x)


def batch_dims(example: torch.Tensor, minimum: int = 1) -> tuple[dict[int, Any]]:
    """A dynamic batch dimension for torch.export."""
    return ({0: torch.export.Dim("batch", min=minimum, max=MAX_BATCH)},)


def export(model: nn.Module, example: torch.Tensor, what: str) -> Any:
    """`torch.export` with a dynamic batch; a model it cannot trace is bad input, named."""
    try:
        return torch.export.export(model, (example,), dynamic_shapes=batch_dims(example))
    except Exception as exc:  # noqa: BLE001 - any tracing failure is a property of the user's model
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise BadInput(f"{what}: torch.export cannot trace this model ({type(exc).__name__}: {first[:300]}); "
                       "quantization needs a model without data-dependent Python control flow") from None


def strip_unused(gm: torch.fx.GraphModule) -> int:
    """Drop the parameters and buffers the graph no longer reads (the float weights a
    converted graph replaced with int8 ones). Returns how many tensors were removed."""
    gm.graph.eliminate_dead_code()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    removed = 0
    for name, _ in list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False)):
        if name in used:
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if attr in owner._parameters:
            del owner._parameters[attr]
        elif attr in owner._buffers:
            del owner._buffers[attr]
        removed += 1
    gm.delete_all_unused_submodules()
    gm.recompile()
    return removed


def check_plain(path: Path) -> None:
    """Refuse an archive whose loading would unpickle objects (run code)."""
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith("_config.json") and "/data/" in name:
                    config = json.loads(z.read(name)).get("config", {})
                    for key, meta in config.items():
                        if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(
                                ("weight_", "tensor_", "constant_")):
                            raise BadInput(f"{path}: entry {key!r} would be unpickled on load; "
                                           "refusing (only plain tensors are loaded)")
                elif name.endswith(".pt") and "/data/sample_inputs/" in name:
                    torch.load(io.BytesIO(z.read(name)), weights_only=True)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BadInput(f"{path}: not a readable torch.export archive ({exc})") from None
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - weights_only refused something in the archive
        raise BadInput(f"{path}: refusing to load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None


def load(path: str | Path) -> nn.Module:
    """A saved artifact as a callable module, after checking it holds only plain tensors."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{p}: no such quantized model")
    check_plain(p)
    register_ops()
    return torch.export.load(str(p)).module()


def register_ops() -> None:
    """Make the quantize/dequantize operators of PT2E graphs known to torch before loading."""
    import torchao.quantization.pt2e  # noqa: F401 - registers torch.ops.quantized_decomposed


def weights_bytes(program: Any) -> int:
    """Bytes of the tensors an exported program holds (its weights and constants)."""
    tensors = list(program.state_dict.values()) + [v for v in program.constants.values()
                                                  if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)
