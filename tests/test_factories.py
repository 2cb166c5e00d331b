"""Your own code and your own files: model and dataset factories from a module outside the
project, MNIST from torchvision's on-disk IDX layout, and an image folder of PNGs."""

from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import engine_env, events_of, only_run, run_engines
from engine.checkpoint.store import load

USER_MODULE = '''
"""A user's own factories, living outside the project."""
import torch
from torch import nn
from torch.utils.data import Dataset


class Blobs(Dataset):
    """Images whose brightness encodes the class."""

    classes = ["dark", "mid", "bright"]

    def __init__(self, n, channels, size, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        noise = torch.rand(n, channels, size, size, generator=g) * 0.2
        self.images = noise + self.labels.view(-1, 1, 1, 1) * 0.4

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def make_data(n_train=64, n_val=24, channels=1, size=6):
    return Blobs(n_train, channels, size, 1), Blobs(n_val, channels, size, 2)


def make_model(num_classes, in_channels, hidden=8, size=6):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * size * size, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))
'''

FACTORY_RUN = """
[model]
name = "mymod:make_model"
factory_args = { hidden = 12, size = 6 }
[data]
name = "mymod:make_data"
factory_args = { n_train = 48, n_val = 24, channels = 2, size = 6 }
[train]
epochs = 2
batch_size = 16
deterministic = false  # saves ~2.5 s of start-up (torch imports its compiler for it)
[logging]
every_steps = 1
max_step_events_per_s = 100000
"""

MNIST_RUN = """
[model]
factory_args = { width = 8 }
[data]
name = "mnist"
root = "%(root)s"
[train]
epochs = 1
batch_size = 4
deterministic = false
[logging]
every_steps = 1
max_step_events_per_s = 100000
"""

IMAGEFOLDER_RUN = """
[model]
factory_args = { width = 8 }
[data]
name = "imagefolder"
root = "%(root)s"
image_size = 6
val_fraction = 0.25
[train]
epochs = 1
batch_size = 4
deterministic = false
[logging]
every_steps = 1
max_step_events_per_s = 100000
"""


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as MNIST ships it: magic (0, 0x08 for ubyte, ndim), big-endian dims, bytes."""
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_mnist(root: Path, n_train: int, n_test: int) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    # The training split gzipped (as downloaded), the test split extracted: both are read.
    write_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10)


def make_image_folder(root: Path, per_class: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for cls, base in (("cat", 40), ("dog", 200)):
        folder = root / "train" / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            size = (8, 8) if i % 2 else (10, 7)  # mixed sizes: image_size makes them stackable
            pixels = np.clip(base + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{cls}{i}.png")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Start every run at once (they are independent), then collect them."""
    base = tmp_path_factory.mktemp("factories")
    modules = base / "user_code"
    modules.mkdir()
    (modules / "mymod.py").write_text(USER_MODULE)
    env = engine_env()
    env["PYTHONPATH"] = str(modules) + os.pathsep + env["PYTHONPATH"]

    make_mnist(base / "data" / "mnist", n_train=20, n_test=12)
    make_image_folder(base / "data" / "images", per_class=6)
    configs = {
        "factories": FACTORY_RUN,
        "mnist": MNIST_RUN % {"root": base / "data" / "mnist"},
        "imagefolder": IMAGEFOLDER_RUN % {"root": base / "data" / "images"},
        "missing-data-module": FACTORY_RUN.replace("mymod:make_data", "not_installed_pkg.data:make"),
    }
    jobs, out = {}, {}
    for name, text in configs.items():
        folder = base / name
        folder.mkdir()
        (folder / "run.toml").write_text(text)
        jobs[name] = {"args": ["run", str(folder / "run.toml"), "--runs-dir", str(folder / "runs")],
                      "cwd": folder, "env": env}
        out[name] = {"runs": folder / "runs"}
    for name, done in run_engines(jobs).items():
        out[name].update(code=done.returncode, stdout=done.stdout, stderr=done.stderr)
    return out


def finished_run(job: dict) -> Path:
    assert job["code"] == 0, job["stderr"]
    run = only_run(job["runs"])
    assert events_of(run)[-1]["state"] == "finished"
    return run


def evals(run: Path) -> list[dict]:
    out = [e for e in events_of(run) if e["type"] == "eval"]
    for e in out:
        assert set(e["metrics"]) >= {"loss", "accuracy"}
        assert math.isfinite(e["metrics"]["loss"]) and 0.0 <= e["metrics"]["accuracy"] <= 1.0
    return out


def final_weights(run: Path) -> dict:
    return load(sorted((run / "checkpoints").glob("step-*.pt"))[-1])["model"]


def batches_per_epoch(run: Path) -> int:
    return {e["batches_per_epoch"] for e in events_of(run) if e["type"] == "step"}.pop()


def test_user_model_and_dataset_factories_train(runs):
    run = finished_run(runs["factories"])
    # 48 samples from the factory's arguments, 16 a batch: 3 steps an epoch, 2 epochs.
    assert batches_per_epoch(run) == 3
    assert [(e["step"], e["epoch"]) for e in evals(run)] == [(3, 0), (6, 1)]
    weights = final_weights(run)
    # The model factory got in_channels=2 (from the data), num_classes=3 (the dataset's
    # .classes) and hidden=12 (its factory_args).
    assert tuple(weights["1.weight"].shape) == (12, 2 * 6 * 6)
    assert tuple(weights["3.weight"].shape) == (3, 12)


def test_a_factory_that_does_not_import_is_bad_input(runs):
    job = runs["missing-data-module"]
    assert job["code"] == 2, job["stderr"]
    assert "data.name = 'not_installed_pkg.data:make'" in job["stderr"]
    assert "cannot import module 'not_installed_pkg.data'" in job["stderr"]
    assert "Traceback" not in job["stderr"]
    assert not job["runs"].exists() or not any(job["runs"].iterdir())


def test_mnist_from_torchvisions_idx_layout_trains(runs):
    run = finished_run(runs["mnist"])
    # All 20 training images (the t10k files are the validation set, nothing is split off).
    assert batches_per_epoch(run) == 5
    assert [e["step"] for e in evals(run)] == [5]
    weights = final_weights(run)
    assert tuple(weights["features.0.0.weight"].shape) == (8, 1, 3, 3), "grayscale input"
    assert tuple(weights["head.1.weight"].shape) == (10, 16), "ten digit classes"


def test_image_folder_of_pngs_trains(runs):
    run = finished_run(runs["imagefolder"])
    # 12 images, a quarter held out for validation: 9 to train on, 4 a batch.
    assert batches_per_epoch(run) == 3
    assert [e["step"] for e in evals(run)] == [3]
    weights = final_weights(run)
    assert tuple(weights["features.0.0.weight"].shape) == (8, 3, 3, 3), "RGB input"
    assert tuple(weights["head.1.weight"].shape) == (2, 16), "one class per folder"


def test_mnist_idx_files_directly_in_data_root_are_read(tmp_path: Path):
    """A flat folder of IDX files (as ../shared/data/mnist10k ships t10k alone) is read too,
    and a lone t10k split is split for validation."""
    from engine.config.loading import validate
    from engine.data.sources import build_spec

    rng = np.random.default_rng(0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(50) % 10)
    spec = build_spec(validate({"data": {"name": "mnist", "root": str(tmp_path), "val_fraction": 0.2}}))
    assert (len(spec.train), len(spec.val), spec.num_classes, spec.in_channels) == (40, 10, 10, 1)


def test_digits_are_read_without_importing_sklearn_exactly_as_load_digits_gives_them():
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from engine.data.sources import digits_arrays

    images, target = digits_arrays()
    bunch = load_digits()
    assert images.dtype == bunch.images.dtype and np.array_equal(images, bunch.images)
    assert target.dtype == bunch.target.dtype and np.array_equal(target, bunch.target)
    probe = ("import sys; from engine.data.sources import digits_arrays; i, t = digits_arrays(); "
             "print(i.shape, len(t), 'sklearn.datasets' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=engine_env(), timeout=120)
    assert done.stdout.split() == ["(1797,", "8,", "8)", "1797", "False"], done.stderr[-2000:]
