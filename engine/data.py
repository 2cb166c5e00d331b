"""Datasets and loaders, built so that a run can stop at any batch and resume exactly.

Two things make resume exact with workers and random augmentation:

* the sampler yields ``(epoch, index)`` pairs from a permutation that depends only on
  (seed, epoch), and can start at any offset inside the epoch;
* augmentation draws from a generator seeded by (seed, epoch, index), so a sample's crop
  and flip do not depend on which worker loads it or on what ran before.
"""

from __future__ import annotations

import gzip
import importlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from engine.config import AugmentConfig, Config
from engine.errors import BadInput

# Per-channel statistics of the built-in sets (for normalization).
STATS = {
    "digits": ([0.3063], [0.3755]),
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2860], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}


@dataclass
class DataSpec:
    """What the model and loaders need to know about a dataset."""

    train: Dataset
    val: Dataset
    num_classes: int
    in_channels: int
    mean: list[float]
    std: list[float]


class TensorImages(Dataset):
    """Images held in memory as one uint8 or float tensor (N, C, H, W) with labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, scale: float = 255.0):
        self.images, self.labels, self.scale = images, labels.long(), scale

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float()
        return (x / self.scale if self.scale != 1.0 else x), int(self.labels[i])

    def split(self, val_fraction: float) -> tuple["TensorImages", "TensorImages"]:
        """A fixed split (independent of the training seed, so validation never moves)."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(12345))
        n_val = max(1, int(len(self) * val_fraction))
        val, train = order[:n_val], order[n_val:]
        return (TensorImages(self.images[train], self.labels[train], self.scale),
                TensorImages(self.images[val], self.labels[val], self.scale))


# ---- the built-in sources ---------------------------------------------------------------


def _digits(cfg: Config) -> tuple[Dataset, Dataset, int]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    full = TensorImages(images, torch.tensor(bunch.target), scale=16.0)
    train, val = full.split(cfg.data.val_fraction)
    return train, val, 10


MNIST_DIRS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (MNIST's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    _zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if dtype != 0x08:
        raise BadInput(f"{path}: IDX element type {dtype:#x}, expected unsigned bytes (0x08)")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def _find(raw: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (raw / name).is_file():
            return raw / name
    return None


def _mnist(cfg: Config) -> tuple[Dataset, Dataset, int]:
    name, root = cfg.data.name, Path(cfg.data.root or "")
    raw = root / MNIST_DIRS[name] / "raw"
    if cfg.data.download:
        import torchvision

        cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
        cls(str(root), train=True, download=True)
    parts = {}
    for split in ("train", "t10k"):
        img, lab = _find(raw, f"{split}-images-idx3-ubyte"), _find(raw, f"{split}-labels-idx1-ubyte")
        if img and lab:
            parts[split] = TensorImages(_read_idx(img).unsqueeze(1), _read_idx(lab))
    if not parts:
        raise BadInput(
            f"data.root = {str(root)!r}: no {name} files found. Expected torchvision's layout:\n"
            f"  {raw}/train-images-idx3-ubyte[.gz]\n  {raw}/train-labels-idx1-ubyte[.gz]\n"
            f"  {raw}/t10k-images-idx3-ubyte[.gz]\n  {raw}/t10k-labels-idx1-ubyte[.gz]\n"
            "(or set data.download = true to let torchvision fetch them)"
        )
    if "train" in parts and "t10k" in parts:
        return parts["train"], parts["t10k"], 10
    only = next(iter(parts.values()))
    train, val = only.split(cfg.data.val_fraction)
    return train, val, 10


def _cifar(cfg: Config) -> tuple[Dataset, Dataset, int]:
    import torchvision

    name, root = cfg.data.name, cfg.data.root or ""
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        sets = [cls(root, train=t, download=cfg.data.download) for t in (True, False)]
    except RuntimeError as exc:
        folder = cls.base_folder
        raise BadInput(
            f"data.root = {root!r}: {name} not found or corrupt ({exc}). Expected torchvision's "
            f"layout: {root}/{folder}/ with the python-pickle batches "
            f"({'data_batch_1..5, test_batch' if name == 'cifar10' else 'train, test'}, meta). "
            "Or set data.download = true."
        ) from None
    out = [TensorImages(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(),
                        torch.tensor(s.targets)) for s in sets]
    return out[0], out[1], len(sets[0].classes)


def _imagefolder(cfg: Config) -> tuple[Dataset, Dataset, int]:
    from torchvision import datasets, transforms

    root = Path(cfg.data.root or "")
    steps = [transforms.Resize((cfg.data.image_size,) * 2)] if cfg.data.image_size else []
    tf = transforms.Compose(steps + [transforms.ToTensor()])
    if not (root / "train").is_dir():
        raise BadInput(
            f"data.root = {str(root)!r}: no train/ folder. Expected:\n"
            f"  {root}/train/<class>/<image>   {root}/val/<class>/<image> (val optional)"
        )
    try:
        train = datasets.ImageFolder(str(root / "train"), transform=tf)
        if (root / "val").is_dir():
            val = datasets.ImageFolder(str(root / "val"), transform=tf)
            return train, val, len(train.classes)
    except (FileNotFoundError, RuntimeError) as exc:
        raise BadInput(f"data.root = {str(root)!r}: {exc}") from None
    n_val = max(1, int(len(train) * cfg.data.val_fraction))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(12345)).tolist()
    subset = torch.utils.data.Subset
    return subset(train, order[n_val:]), subset(train, order[:n_val]), len(train.classes)


def _synthetic(cfg: Config) -> tuple[Dataset, Dataset, int]:
    d = cfg.data
    k = d.synthetic_classes
    g = torch.Generator().manual_seed(777)
    n_val = max(1, int(d.synthetic_samples * d.val_fraction))
    protos = torch.rand(k, *d.synthetic_shape, generator=g)

    def make(n: int) -> TensorImages:
        labels = torch.randint(0, k, (n,), generator=g)
        noise = torch.rand(n, *d.synthetic_shape, generator=g)
        return TensorImages((0.5 * protos[labels] + 0.5 * noise), labels, scale=1.0)

    return make(d.synthetic_samples), make(n_val), k


def import_factory(path: str, field: str) -> Any:
    """Import 'package.module:attr', with an error that names the config field."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInput(f"{field} = {path!r}: cannot import module {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise BadInput(f"{field} = {path!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def _factory(cfg: Config) -> tuple[Dataset, Dataset, int]:
    fn = import_factory(cfg.data.name, "data.name")
    result = fn(**cfg.data.factory_args)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise BadInput(f"data.name = {cfg.data.name!r}: factory must return (train, val) datasets")
    train, val = result
    classes = getattr(train, "classes", None)
    num = cfg.model.num_classes or (len(classes) if classes is not None else None)
    if num is None:
        raise BadInput(
            f"model.num_classes: the dataset from {cfg.data.name!r} has no .classes; set it"
        )
    return train, val, num


SOURCES = {"digits": _digits, "mnist": _mnist, "fashion_mnist": _mnist, "cifar10": _cifar,
           "cifar100": _cifar, "imagefolder": _imagefolder, "synthetic": _synthetic}


def as_tensor(x: Any) -> torch.Tensor:
    """A sample as a float CHW tensor (PIL images are converted)."""
    if isinstance(x, torch.Tensor):
        return x.float()
    from torchvision.transforms.functional import to_tensor

    return to_tensor(x)


def build_spec(cfg: Config) -> DataSpec:
    """Load the configured dataset (BadInput for missing paths or broken factories)."""
    source = SOURCES.get(cfg.data.name, _factory)
    train, val, num_classes = source(cfg)
    if len(train) == 0 or len(val) == 0:
        raise BadInput(f"data.name = {cfg.data.name!r}: the train or validation set is empty")
    channels = as_tensor(train[0][0]).shape[0]
    mean, std = STATS.get(cfg.data.name, ([0.5] * channels, [0.25] * channels))
    aug = cfg.data.augment
    mean, std = aug.mean or mean, aug.std or std
    if aug.normalize and (len(mean) != channels or len(std) != channels):
        raise BadInput(
            f"data.augment.mean/std: {len(mean)}/{len(std)} values for {channels}-channel images"
        )
    return DataSpec(train, val, num_classes, channels, list(mean), list(std))


# ---- exact-resume sampling and augmentation ---------------------------------------------


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


class Prepared(Dataset):
    """Indexes a base dataset by (epoch, index) and augments (train). Normalization is done
    per batch by `Normalizer`, on the device, which is cheaper than per sample."""

    def __init__(self, base: Dataset, spec: DataSpec, aug: AugmentConfig, seed: int, train: bool):
        self.base, self.aug, self.seed, self.train = base, aug, seed, train
        self.random = train and (aug.random_crop_padding > 0 or aug.horizontal_flip)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, i = key
        x, y = self.base[i]
        x = as_tensor(x)
        if self.random:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 2**24 + i)
            x = augment(x, g, self.aug.random_crop_padding, self.aug.horizontal_flip)
        return x, int(y)


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


def make_loader(ds: Dataset, cfg: Config, batch_size: int, sampler: EpochSampler) -> DataLoader:
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
                      pin_memory=d.pin_memory, generator=torch.Generator(), **extra)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Micro-batches in one epoch (the last one may be short)."""
    return math.ceil(n / batch_size)


# ---- the device-resident path -----------------------------------------------------------


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
