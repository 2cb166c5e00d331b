"""Optimizers from the config."""

from __future__ import annotations

import torch
from torch import nn

from engine.config.schema import OptimConfig
from contracts.errors import BadInput


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam, AdamW or LAMB over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "lamb":
        return _lamb(params, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
               weight_decay=cfg.weight_decay)


def _lamb(params: list, cfg: OptimConfig) -> torch.optim.Optimizer:
    """LAMB (layer-wise adaptive rates, for large batches) from timm, a maintained library."""
    try:
        from timm.optim import Lamb
    except ImportError:
        raise BadInput("optim.name = 'lamb': needs the timm package (pip install 'training-cockpit[lamb]' "
                       "or pip install timm)") from None
    return Lamb(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
