"""Tensor parallel: a model's linears sharded over the ranks of the mesh's "tp" dimension.

torch's own machinery does the work (`torch.distributed.tensor.parallel.parallelize_module`
with `ColwiseParallel` and `RowwiseParallel`, Megatron-LM's split): in each transformer block
the q, k and v projections and the MLP's first linear are split by output features (each rank
holds heads / T attention heads and a quarter of the MLP), the attention output and the MLP's
second linear by input features, whose partial results one all-reduce sums. Everything else
(embeddings, norms, the head) is replicated, and its gradients agree on every rank of a group
because the sharded layers' backward all-reduces their input gradients.

The built-in gpt has a plan; a user's model can bring its own by defining
`tp_plan(self) -> dict[str, ParallelStyle]` (module names to styles, as `parallelize_module`
takes them).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from contracts.errors import BadInput


def plan_for(model: nn.Module, tp: int) -> dict[str, Any]:
    """The tensor-parallel plan of `model` over `tp` ranks (BadInput when it has none or cannot split)."""
    own = getattr(model, "tp_plan", None)
    if callable(own):
        return own()
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    from engine.model.gpt import GPT

    if not isinstance(model, GPT):
        raise BadInput(f"distributed.tensor_parallel = {tp}: {type(model).__name__} has no tensor-parallel plan "
                       "(the built-in 'gpt' has one; a model of your own can define tp_plan())")
    first = next(iter(model.blocks.values()))
    heads = first.attn.q.out_features // first.attn.head_dim
    if heads % tp:
        raise BadInput(f"distributed.tensor_parallel = {tp}: must divide model.factory_args.heads = {heads} "
                       "(each rank holds whole attention heads)")
    plan: dict[str, Any] = {}
    for name in model.blocks:
        block = f"blocks.{name}"
        plan.update({f"{block}.attn.q": ColwiseParallel(), f"{block}.attn.k": ColwiseParallel(),
                     f"{block}.attn.v": ColwiseParallel(), f"{block}.attn.out": RowwiseParallel(),
                     f"{block}.mlp.up": ColwiseParallel(), f"{block}.mlp.down": RowwiseParallel()})
    return plan


def parallelize(model: nn.Module, mesh: Any, tp: int) -> nn.Module:
    """Shard `model` in place over the 1-D "tp" `mesh`."""
    from torch.distributed.tensor.parallel import parallelize_module

    return parallelize_module(model, mesh, plan_for(model, tp))
