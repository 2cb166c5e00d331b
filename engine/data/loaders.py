"""Loaders that can stop at any batch and resume exactly: DataLoader over Prepared samples, or the device-resident path."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from engine.config.schema import AugmentConfig, Config
from engine.data.augment import Normalizer, augment, batch_augment
from engine.data.sampler import EpochSampler, batches_per_epoch
from engine.data.sources import DataSpec, TensorImages, as_tensor
from contracts.errors import BadInput


class Prepared(Dataset):
    """Indexes a base dataset by (epoch, index) and augments (train). Normalization is done
    per batch by `Normalizer`, on the device, which is cheaper than per sample."""

    def __init__(self, base: Dataset, spec: DataSpec, aug: AugmentConfig, seed: int, train: bool):
        self.base, self.aug, self.seed, self.train = base, aug, seed, train
        self.random = train and (aug.random_crop_padding > 0 or aug.horizontal_flip)
        self.tokens = spec.kind == "tokens"

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, i = key
        x, y = self.base[i]
        if self.tokens:  # token windows and their targets, as they are
            return x, y
        x = as_tensor(x)
        if self.random:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 2**24 + i)
            x = augment(x, g, self.aug.random_crop_padding, self.aug.horizontal_flip)
        return x, int(y)


def make_loader(ds: Dataset, cfg: Config, batch_size: int, sampler: EpochSampler,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader over (epoch, index) keys with the configured worker settings."""
    d = cfg.data
    extra: dict[str, Any] = {}
    if d.num_workers > 0:
        extra["persistent_workers"] = d.persistent_workers
        if d.prefetch_factor is not None:
            extra["prefetch_factor"] = d.prefetch_factor
    # A private generator: otherwise each new iterator draws its worker seed from the global
    # RNG, and a resumed run (which starts its iterator mid-epoch) would drift from the
    # uninterrupted one.
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=d.num_workers,
                      pin_memory=d.pin_memory, generator=torch.Generator(), drop_last=drop_last, **extra)


class DeviceLoader:
    """The whole (in-memory) dataset on the device, batches drawn by index, augmented there.

    The trick behind the CIFAR-10 speed records: no workers, no collation, no host-to-device
    copies per step. Images are scaled and normalized once, stored in the training dtype,
    and each batch is cropped and flipped on the device with a generator seeded by
    (seed, epoch, batch), so a resumed run continues exactly.
    """

    def __init__(self, base: Dataset, spec: DataSpec, cfg: Config, sampler: EpochSampler,
                 device: torch.device, dtype: torch.dtype):
        if not isinstance(base, TensorImages):
            raise BadInput(
                f"data.device_resident = true: data.name = {cfg.data.name!r} is not an in-memory "
                "tensor dataset (digits, mnist, fashion_mnist, cifar10, cifar100, synthetic are)")
        x = base.images.float() / base.scale
        if cfg.data.augment.normalize:
            x = (x - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)
        self.images = x.to(device=device, dtype=dtype)
        self.labels = base.labels.to(device)
        self.sampler, self.batch_size, self.device = sampler, cfg.train.batch_size, device
        self.pad, self.flip, self.seed = cfg.data.augment.random_crop_padding, cfg.data.augment.horizontal_flip, cfg.train.seed

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s = self.sampler
        order = torch.tensor([i for _, i in s], dtype=torch.long, device=self.device)
        first = s.offset // self.batch_size
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            x = self.images[idx]
            if self.pad or self.flip:
                g = torch.Generator(device=self.device)
                batch = first + b // self.batch_size
                g.manual_seed((self.seed * 1_000_003 + s.epoch) * 2**24 + batch + s.rank * 2**20)
                x = batch_augment(x, g, self.pad, self.flip)
            yield x, self.labels[idx]


@dataclass
class Loaders:
    """Everything the loop reads data through, for this rank."""

    sampler: EpochSampler     # the training sampler: set_position(epoch, offset) before each epoch
    train: Any                # a DataLoader, or a DeviceLoader
    val: DataLoader
    val_valid: int            # this rank's real validation samples (the rest is padding)
    normalize: Normalizer     # validation batches, on the device
    normalize_train: Normalizer  # training batches (the device-resident set is normalized once, up front)
    batches: int              # micro-batches per epoch, per rank


def build_loaders(cfg: Config, spec: DataSpec, rank: int, world: int, device: torch.device) -> Loaders:
    """The training and validation loaders of one rank, sharded like DistributedSampler."""
    train = Prepared(spec.train, spec, cfg.data.augment, cfg.train.seed, train=True)
    pipeline = cfg.distributed.pipeline_stages > 1
    val = Prepared(spec.val, spec, cfg.data.augment, cfg.train.seed, train=False)
    sampler = EpochSampler(len(train), cfg.train.seed, shuffle=True, rank=rank, world=world)
    if cfg.data.device_resident:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
        loader: Any = DeviceLoader(spec.train, spec, cfg, sampler, device, dtype)
    else:
        # A pipeline's stages exchange activations of one fixed shape: every training batch is full.
        loader = make_loader(train, cfg, cfg.train.batch_size, sampler, drop_last=pipeline)
    eval_bs = cfg.train.eval_batch_size or cfg.train.batch_size
    # Validation is sharded too, padded so that every rank runs as many batches (FSDP
    # gathers weights in each forward); the padding is masked out of the metrics.
    val_sampler = EpochSampler(len(val), 0, shuffle=False, rank=rank, world=world)
    normalize = cfg.data.augment.normalize
    return Loaders(sampler, loader, make_loader(val, cfg, eval_bs, val_sampler), len(range(rank, len(val), world)),
                   Normalizer(spec, normalize, device),
                   Normalizer(spec, normalize and not cfg.data.device_resident, device),
                   (sampler.per_rank() // cfg.train.batch_size if pipeline
                    else batches_per_epoch(sampler.per_rank(), cfg.train.batch_size)))
