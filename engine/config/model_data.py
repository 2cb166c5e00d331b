"""The [model] and [data] sections (with [data.augment]): which network, which samples, how they are loaded."""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import Field, model_validator

from engine.config.base import Int, Section, suggest
from engine.config.importing import is_import_path

BUILTIN_DATASETS = (
    "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic", "text",
)
DATASETS_WITH_ROOT = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "text")


class ModelConfig(Section):
    """Which network to train."""

    name: str = Field(
        "small_cnn",
        description="'small_cnn' (a compact CNN for tiny images; factory_args width, norm, dropout), "
        "'mlp' (Linear layers; factory_args hidden = [256, 256], dropout), 'gpt' (a decoder-only "
        "transformer over bytes, for data.name = 'text'; factory_args layers = 4, dim = 128, heads = 4, "
        "context = 128, dropout = 0), any torchvision "
        "classification model ('resnet18', 'mobilenet_v3_small', ...), or your own "
        "'package.module:factory' called as factory(num_classes=, in_channels=, **factory_args)",
    )
    num_classes: Optional[Int] = Field(
        None, ge=2, description="Output classes; default: taken from the dataset"
    )
    in_channels: Optional[Int] = Field(
        None, ge=1, description="Input channels; default: taken from the dataset"
    )
    weights_path: Optional[str] = Field(
        None, description="Weights to start from: a local state_dict file, a checkpoint of ours, or a "
        "run directory of ours (its best checkpoint, else its latest)"
    )
    pretrained: Optional[Union[bool, str]] = Field(
        None, description="Hub weights are never downloaded: set weights_path to a local file"
    )
    factory_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for a model factory"
    )

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.pretrained not in (None, False):
            raise ValueError(
                f"pretrained={self.pretrained!r}: weights are never downloaded from a hub; "
                "download them yourself and set model.weights_path to the local file"
            )
        return self


class AugmentConfig(Section):
    """Training-time augmentation, applied per sample with a seed derived from (seed, epoch, index)."""

    random_crop_padding: Int = Field(
        0, ge=0, description="Pad by this many pixels, then crop back at a random offset (0: off)"
    )
    horizontal_flip: bool = Field(False, description="Flip left-right with probability 0.5")
    normalize: bool = Field(True, description="Subtract mean and divide by std per channel")
    mean: Optional[list[float]] = Field(
        None, description="Per-channel mean for normalization; default: the dataset's own"
    )
    std: Optional[list[float]] = Field(
        None, description="Per-channel std for normalization; default: the dataset's own"
    )


class DataConfig(Section):
    """Where the samples come from and how they are loaded."""

    name: str = Field(
        "digits",
        description="'digits' (scikit-learn's bundled 8x8 handwritten digits, no download), "
        "'mnist', 'fashion_mnist', 'cifar10', 'cifar100' (torchvision's on-disk layout under "
        "root), 'imagefolder' (root/train/<class>/*, root/val/<class>/*), 'synthetic' "
        "(random tensors, for benchmarks), 'text' (next-byte prediction over every text file under "
        "root; the held-out tail validates), or 'package.module:factory' returning "
        "(train_dataset, val_dataset)",
    )
    root: Optional[str] = Field(None, description="Directory of an on-disk dataset")
    max_bytes: Optional[Int] = Field(
        None, ge=1, description="text: read at most this many bytes of the corpus (files in path order)")
    download: bool = Field(
        False, description="Let torchvision download a missing dataset into root (off: never)"
    )
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share held out for validation where the set has no split"
    )
    image_size: Optional[Int] = Field(
        None, ge=1, description="Resize imagefolder images to this square size"
    )
    synthetic_samples: Int = Field(2048, ge=1, description="Synthetic: training samples")
    synthetic_shape: list[Int] = Field(
        [3, 32, 32], min_length=3, max_length=3, description="Synthetic: [channels, height, width]"
    )
    synthetic_classes: Int = Field(10, ge=2, description="Synthetic: number of classes")
    factory_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for a dataset factory"
    )
    num_workers: Int = Field(
        0, ge=0, description="DataLoader worker processes per training process (0: load in the trainer); "
        "the machine that trains refuses more than 4 per CPU in all (past that they only contend, and "
        "thousands bring it down) and warns above 1 per CPU")
    pin_memory: bool = Field(False, description="Page-locked host batches for faster GPU copies")
    persistent_workers: bool = Field(
        False, description="Keep workers alive between epochs (needs num_workers > 0)"
    )
    prefetch_factor: Optional[Int] = Field(
        None, ge=1, description="Batches each worker loads ahead (needs num_workers > 0)"
    )
    device_resident: bool = Field(
        False, description="Keep the whole in-memory dataset on the device in the training dtype; "
        "batches by index, crops and flips on the device (no workers)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.name not in BUILTIN_DATASETS and not is_import_path(self.name):
            raise ValueError(
                f"name={self.name!r}: expected one of {', '.join(BUILTIN_DATASETS)} "
                f"or 'package.module:factory'{suggest(self.name, BUILTIN_DATASETS)}"
            )
        if self.name in DATASETS_WITH_ROOT and not self.root:
            raise ValueError(f"root: data.name={self.name!r} reads from disk; set data.root")
        if self.device_resident and self.name in ("imagefolder",) or (self.device_resident and ":" in self.name):
            raise ValueError(f"device_resident=true needs an in-memory dataset (digits, mnist, fashion_mnist, "
                             f"cifar10, cifar100, synthetic), not {self.name!r}")
        if self.name == "text" and (self.augment.random_crop_padding or self.augment.horizontal_flip):
            raise ValueError("augment: crops and flips are for images; data.name='text' takes neither")
        if self.name == "text" and self.device_resident:
            raise ValueError("device_resident=true is for in-memory image sets, not data.name='text'")
        if self.num_workers == 0 and self.persistent_workers:
            raise ValueError("persistent_workers=true needs num_workers > 0: raise data.num_workers")
        if self.num_workers == 0 and self.prefetch_factor is not None:
            raise ValueError("prefetch_factor needs num_workers > 0: raise data.num_workers")
        return self
