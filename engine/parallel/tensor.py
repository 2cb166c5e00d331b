"""Tensor parallel: a model's linears sharded over the ranks of the mesh's "tp" dimension.

torch's own machinery does the work (`torch.distributed.tensor.parallel.parallelize_module`
with `ColwiseParallel` and `RowwiseParallel`, Megatron-LM's split): in each transformer block
the q, k and v projections and the MLP's first linear are split by output features (each rank
holds heads / T attention heads and a quarter of the MLP), the attention output and the MLP's
second linear by input features, whose partial results one all-reduce sums. Everything else
(embeddings, norms, the head) is replicated, and its gradients agree on every rank of a group
because the sharded layers' backward all-reduces their input gradients.

A model brings its plan as a method, `tp_plan(self, tp) -> dict[str, ParallelStyle]` (module
names to styles, as `parallelize_module` takes them; BadInput where `tp` cannot split it): the
built-in gpt has one (engine/model/gpt.py), and a user's factory can return a model with its own.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from contracts.errors import BadInput


def plan_for(model: nn.Module, tp: int) -> dict[str, Any]:
    """The tensor-parallel plan of `model` over `tp` ranks: its own `tp_plan(tp)` (BadInput when it has none)."""
    own = getattr(model, "tp_plan", None)
    if not callable(own):
        raise BadInput(f"distributed.tensor_parallel = {tp}: {type(model).__name__} has no tensor-parallel plan "
                       "(the built-in 'gpt' has one; a model of your own can define tp_plan(tp))")
    return own(tp)


def parallelize(model: nn.Module, mesh: Any, tp: int) -> nn.Module:
    """Shard `model` in place over the 1-D "tp" `mesh`."""
    from torch.distributed.tensor.parallel import parallelize_module

    return parallelize_module(model, mesh, plan_for(model, tp))
