"""Datasets and loaders, built so that a run can stop at any batch and resume exactly.

Two things make resume exact with workers and random augmentation:

* the sampler yields ``(epoch, index)`` pairs from a permutation that depends only on
  (seed, epoch), and can start at any offset inside the epoch;
* augmentation draws from a generator seeded by (seed, epoch, index), so a sample's crop
  and flip do not depend on which worker loads it or on what ran before.
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from engine.config.importing import import_factory
from engine.config.schema import Config
from contracts.errors import BadInput

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
    #: "images" (float CHW samples, class labels) or "tokens" (token windows and their next tokens)
    kind: str = "images"


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


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits: images (float64, 0..16) and targets, as `load_digits` gives them.

    They are read from the CSV file scikit-learn ships, found without importing scikit-learn:
    `import sklearn.datasets` pulls in SciPy and takes 1.5 s of every run's start on a small
    machine, for a 1797-row file. Where that file is not where it has been since scikit-learn
    0.18, `load_digits` reads it.
    """
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is None or not csv.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    data = np.loadtxt(csv, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def _digits(cfg: Config) -> tuple[Dataset, Dataset, int]:
    images, target = digits_arrays()
    images = torch.tensor(images, dtype=torch.float32).unsqueeze(1)
    full = TensorImages(images, torch.tensor(target), scale=16.0)
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
        for folder in (raw, root):  # torchvision's layout, or the IDX files right in data.root
            img, lab = _find(folder, f"{split}-images-idx3-ubyte"), _find(folder, f"{split}-labels-idx1-ubyte")
            if img and lab:
                break
        if img and lab:
            parts[split] = TensorImages(_read_idx(img).unsqueeze(1), _read_idx(lab))
    if not parts:
        raise BadInput(
            f"data.root = {str(root)!r}: no {name} files found. Expected torchvision's layout:\n"
            f"  {raw}/train-images-idx3-ubyte[.gz]\n  {raw}/train-labels-idx1-ubyte[.gz]\n"
            f"  {raw}/t10k-images-idx3-ubyte[.gz]\n  {raw}/t10k-labels-idx1-ubyte[.gz]\n"
            f"or the same files directly in {root}/ (either split alone is enough: it is split for "
            "validation), or set data.download = true to let torchvision fetch them"
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
    if cfg.data.name == "text":
        from engine.data.text import VOCAB, context_of, text_sets

        train, val = text_sets(cfg, context_of(cfg))
        return DataSpec(train, val, VOCAB, 1, [0.0], [1.0], kind="tokens")
    source = SOURCES.get(cfg.data.name, _factory)
    train, val, num_classes = source(cfg)
    if len(train) == 0 or len(val) == 0:
        raise BadInput(f"data.name = {cfg.data.name!r}: the train or validation set is empty")
    channels = as_tensor(train[0][0]).shape[0]
    mean, std = normalization(cfg, channels)
    if cfg.data.augment.normalize and (len(mean) != channels or len(std) != channels):
        raise BadInput(
            f"data.augment.mean/std: {len(mean)}/{len(std)} values for {channels}-channel images"
        )
    return DataSpec(train, val, num_classes, channels, list(mean), list(std))


def normalization(cfg: Config, channels: int) -> tuple[list[float], list[float]]:
    """The per-channel mean and std a config normalizes with (whether it normalizes at all is
    cfg.data.augment.normalize): data.augment.mean/std, else the data set's own statistics."""
    mean, std = STATS.get(cfg.data.name, ([0.5] * channels, [0.25] * channels))
    aug = cfg.data.augment
    return list(aug.mean or mean), list(aug.std or std)


# ---- exact-resume sampling and augmentation ---------------------------------------------


# ---- the device-resident path -----------------------------------------------------------


