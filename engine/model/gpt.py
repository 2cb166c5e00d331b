"""A decoder-only transformer over bytes (`model.name = "gpt"`), laid out to be split.

Pre-norm blocks (LayerNorm, causal self-attention, LayerNorm, MLP), learned positions, a linear
head over the vocabulary. The layout follows torchtitan's so that model parallelism can cut it
without rewriting it: the blocks live in a `ModuleDict` keyed by their index (a pipeline stage
keeps its own keys, so checkpoint names stay the same), the embedding, final norm and head may
be None on a stage that does not hold them, and attention works on however many heads its
projections produce (a tensor-parallel shard holds heads / T of them).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from contracts.errors import BadInput
from engine.data.text import DEFAULT_CONTEXT

DEFAULTS = {"layers": 4, "dim": 128, "heads": 4, "context": DEFAULT_CONTEXT, "dropout": 0.0}


class Attention(nn.Module):
    """Causal multi-head self-attention: separate q, k, v and output projections."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.head_dim, self.dropout = dim // heads, dropout
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, -1, self.head_dim).transpose(1, 2) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """Linear, GELU, linear: four times the width inside."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, dropout)
        self.norm2, self.mlp = nn.LayerNorm(dim), FeedForward(dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Tokens (B, T) in, next-token logits (B, T, vocab) out."""

    def __init__(self, vocab: int = 256, layers: int = 4, dim: int = 128, heads: int = 4, context: int = 128,
                 dropout: float = 0.0):
        super().__init__()
        check_shape(layers=layers, dim=dim, heads=heads, context=context, dropout=dropout)
        self.context = context
        self.embed: nn.Module | None = nn.Embedding(vocab, dim)
        self.pos: nn.Module | None = nn.Embedding(context, dim)
        self.blocks = nn.ModuleDict({str(i): Block(dim, heads, dropout) for i in range(layers)})
        self.norm: nn.Module | None = nn.LayerNorm(dim)
        self.head: nn.Module | None = nn.Linear(dim, vocab, bias=False)
        for module in self.modules():  # GPT-2's initialisation
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def tp_plan(self, tp: int) -> dict:
        """Megatron's split for `tp` ranks (engine/parallel/tensor.py applies it): q, k, v and the
        MLP's first linear by output features, the attention output and the MLP's second by input."""
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

        first = next(iter(self.blocks.values()))
        heads = first.attn.q.out_features // first.attn.head_dim
        if heads % tp:
            raise BadInput(f"distributed.tensor_parallel = {tp}: must divide model.factory_args.heads = {heads} "
                           "(each rank holds whole attention heads)")
        plan: dict = {}
        for name in self.blocks:
            block = f"blocks.{name}"
            plan.update({f"{block}.attn.q": ColwiseParallel(), f"{block}.attn.k": ColwiseParallel(),
                         f"{block}.attn.v": ColwiseParallel(), f"{block}.attn.out": RowwiseParallel(),
                         f"{block}.mlp.up": ColwiseParallel(), f"{block}.mlp.down": RowwiseParallel()})
        return plan

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens
        if self.embed is not None:
            x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks.values():
            x = block(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.head(x) if self.head is not None else x


def check_shape(**args) -> None:
    """BadInput naming the factory argument for a transformer that cannot be built."""
    for name in ("layers", "dim", "heads", "context"):
        value = args[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadInput(f"model.factory_args.{name} = {value!r}: expected a whole number, 1 or more")
    if args["dim"] % args["heads"]:
        raise BadInput(f"model.factory_args.heads = {args['heads']!r}: must divide dim = {args['dim']} "
                       f"(each head gets dim / heads features)")
    if not 0 <= args["dropout"] < 1:
        raise BadInput(f"model.factory_args.dropout = {args['dropout']!r}: expected a number in [0, 1)")


def build_gpt(vocab: int, factory_args: dict) -> GPT:
    unknown = sorted(set(factory_args) - set(DEFAULTS))
    if unknown:
        raise BadInput(f"model.factory_args = {factory_args!r}: gpt takes {', '.join(DEFAULTS)}; "
                       f"not {', '.join(unknown)}")
    return GPT(vocab, **{**DEFAULTS, **factory_args})

