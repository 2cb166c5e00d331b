"""Augmentation seeded per sample (seed, epoch, index), on the host or on the device, and normalization."""

from __future__ import annotations

import torch

from engine.data.sources import DataSpec


def augment(x: torch.Tensor, g: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Random crop after zero padding, then a coin-flip horizontal flip."""
    if pad:
        h, w = x.shape[-2:]
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        top, left = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
        x = padded[..., top:top + h, left:left + w]
    if flip and torch.rand((), generator=g).item() < 0.5:
        x = x.flip(-1)
    return x


class Normalizer:
    """Per-channel normalization of whole batches (bit-identical to doing it per sample)."""

    def __init__(self, spec: DataSpec, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.enabled and x.dim() == 4 else x


def batch_augment(x: torch.Tensor, g: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Per-sample random crops (after zero padding) and flips of a whole batch, on its device."""
    n, _, h, w = x.shape
    if pad:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=g, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]   # (n, h, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]   # (n, 1, w)
        batch = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if flip:
        coins = torch.rand(n, generator=g, device=x.device) < 0.5
        x = torch.where(coins[:, None, None, None], x.flip(-1), x)
    return x.contiguous()
