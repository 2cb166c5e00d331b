"""FSDP2 state in sharded checkpoints: each rank saves and loads only its own shards.

torch.distributed.checkpoint's `get_state_dict` / `set_state_dict` give the model and
optimizer state keyed by parameter name, with DTensors for the sharded tensors (and they
create the optimizer's state before its first step, so a fresh optimizer is a template).
On disk, each rank keeps plain local tensors in its own file, written and loaded like every
other checkpoint (atomic, `weights_only=True`); loading puts each local tensor back into a
DTensor with the sharding the live model has. A resume therefore needs the same world size
and strategy, which the engine checks before it starts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor


def local_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """This rank's shards of the model and optimizer state, as plain CPU tensors."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": _to_local(model_sd), "optimizer": _to_local(optim_sd)}


def load_local_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Put the shards written by `local_state` (on this rank) back into the model and optimizer."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    set_state_dict(model, optimizer,
                   model_state_dict=_from_local(saved["model"], model_sd, "model"),
                   optim_state_dict=_from_local(saved["optimizer"], optim_sd, "optimizer"))


def _to_local(obj: Any) -> Any:
    if isinstance(obj, DTensor):
        return obj.to_local().detach().to("cpu", copy=True)
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_local(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_local(v) for v in obj)
    return obj


def _from_local(saved: Any, template: Any, where: str) -> Any:
    """`saved` in the shape of `template`: local tensors become DTensors like the template's."""
    if isinstance(template, DTensor):
        if not isinstance(saved, torch.Tensor) or saved.shape != template.to_local().shape:
            raise ValueError(f"{where}: the shard does not match this model's sharding")
        return DTensor.from_local(saved.to(template.device), template.device_mesh, template.placements,
                                  shape=template.shape, stride=template.stride(), run_check=False)
    if isinstance(template, torch.Tensor):
        return saved.to(template.device) if isinstance(saved, torch.Tensor) else saved
    if isinstance(template, dict):
        if not isinstance(saved, dict) or set(saved) != set(template):
            raise ValueError(f"{where}: keys differ from this model's ({sorted(set(template) ^ set(saved or {}))[:4]})")
        return {k: _from_local(saved[k], template[k], f"{where}.{k}") for k in template}
    if isinstance(template, (list, tuple)):
        return type(template)(_from_local(s, t, f"{where}[{i}]") for i, (s, t) in enumerate(zip(saved, template)))
    return saved
