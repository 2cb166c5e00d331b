"""Exact-resume sampling: (epoch, index) pairs from a (seed, epoch) permutation, from any offset."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs: a (seed, epoch) permutation, from any offset within it.

    With several ranks, each takes every world-th index of the permutation, starting at its
    rank (as torch's DistributedSampler does). The training sampler pads the permutation by
    wrapping around, so every rank gets the same number of samples (and the same number of
    steps); the validation sampler does not pad, so no sample is counted twice. Offsets are
    per rank. Rank r of W sees, in its k-th batch of b, permutation entries k*b*W + r + j*W:
    together the ranks' k-th batches are the single-process run's k-th batch of b*W.
    """

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1, pad: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world, self.pad = rank, world, pad
        self.epoch, self.offset = 0, 0

    def set_position(self, epoch: int, offset: int) -> None:
        """Start the next iteration at sample `offset` (of this rank's share) of epoch `epoch`."""
        self.epoch, self.offset = epoch, offset

    def per_rank(self) -> int:
        """Samples in this rank's share of one epoch."""
        if self.pad:
            return math.ceil(self.n / self.world)
        return len(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return self.per_rank() - self.offset

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world > 1:
            if self.pad:
                total = math.ceil(self.n / self.world) * self.world
                order = (order * math.ceil(total / self.n))[:total]
            order = order[self.rank::self.world]
        epoch = self.epoch
        for i in order[self.offset:]:
            yield epoch, i


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Micro-batches in one epoch (the last one may be short)."""
    return math.ceil(n / batch_size)
