"""Quantization: static, dynamic and QAT int8 artifacts that load in a fresh process, are smaller
than the float model and score about as well; QAT resumes exactly; bad input is refused with
exit 2 and nothing written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import engine_env, events_of, only_run, run_engine, run_engines, start_engine, status_of, wait_for
from engine.checkpoint.store import load
from contracts.errors import BadInput
from contracts.events import EXIT_BAD_INPUT, EXIT_FINISHED, EXIT_STOPPED
from engine.quantize.support import check_versions, require_torchao

try:
    require_torchao("the quantization tests")
    USABLE = None
except BadInput as exc:
    USABLE = str(exc)
needs_torchao = pytest.mark.skipif(USABLE is not None, reason=USABLE or "")

# Within this many points of the float model's validation accuracy (359 digit images: one
# image is 0.28 points). int8 rounding legitimately moves a few borderline images.
MARGIN = 0.02

COMMON = """
[data]
name = "digits"
[train]
epochs = 3
batch_size = 32
[logging]
tensorboard = false
"""
CNN = '[model]\nname = "small_cnn"\nfactory_args = { width = 32 }\n' + COMMON
MLP = '[model]\nname = "mlp"\nfactory_args = { hidden = [256, 256] }\n' + COMMON
CONV_ONLY = '[model]\nname = "qmodels:conv_only"\n' + COMMON
BRANCHY = '[model]\nname = "qmodels:branchy"\n' + COMMON
QAT = """
[model]
name = "small_cnn"
factory_args = { width = 32 }
weights_path = "{float_run}"
[data]
name = "digits"
[optim]
lr = 0.01
[quantize]
qat = true
[train]
epochs = 1
batch_size = 32
[checkpoint]
every_steps = 5
[logging]
every_steps = 1
max_step_events_per_s = 100000
status_every_s = 0.2
tensorboard = false
"""

USER_MODELS = '''
import torch
from torch import nn

def conv_only(num_classes, in_channels):
    """Convolutions only: nothing for dynamic int8 to quantize."""
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, num_classes, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

class Branchy(nn.Module):
    """Data-dependent Python control flow: trains in eager mode, torch.export cannot trace it."""
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.a = nn.Linear(64 * in_channels, num_classes)
        self.b = nn.Linear(64 * in_channels, num_classes)
        self.conv = nn.Conv2d(in_channels, in_channels, 1)
    def forward(self, x):
        x = self.conv(x).flatten(1)
        return self.a(x) if x.sum() > 0 else self.b(x)

def branchy(num_classes, in_channels):
    return Branchy(num_classes, in_channels)
'''


def test_versions_are_checked_with_an_install_hint():
    with pytest.raises(BadInput, match=r"quantize --mode static: needs torchao, which is not installed; "
                                       r"pip install 'training-cockpit\[quantize\]'"):
        check_versions("2.11.0", None, "quantize --mode static")
    with pytest.raises(BadInput, match="torchao 0.12.0 is too old"):
        check_versions("2.11.0", "0.12.0", "quantize.qat = true")
    with pytest.raises(BadInput, match=r"torchao 0.18.0 needs torch 2.11 or later, this is torch 2.4.1"):
        check_versions("2.4.1+cpu", "0.18.0", "quantize.qat = true")
    check_versions("2.11.0+cu128", "0.18.0", "x")
    check_versions("2.10.0", "0.17.0", "x")
    check_versions("2.14.1", "0.19.0.dev20261120", "x")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Finished float runs (a CNN, an MLP, two user models), a QAT fine-tune of the CNN and a
    run directory that has no checkpoint."""
    if USABLE is not None:
        pytest.skip(USABLE)
    base = tmp_path_factory.mktemp("quantize")
    (base / "code").mkdir()
    (base / "code" / "qmodels.py").write_text(USER_MODELS)
    env = engine_env()
    env["PYTHONPATH"] = str(base / "code") + os.pathsep + env["PYTHONPATH"]
    jobs = {}
    for name, text in (("cnn", CNN), ("mlp", MLP), ("conv_only", CONV_ONLY), ("branchy", BRANCHY)):
        (base / f"{name}.toml").write_text(text)
        jobs[name] = {"args": ["run", str(base / f"{name}.toml"), "--runs-dir", str(base / "runs"),
                               "--run-id", name], "env": env}
    done = run_engines(jobs)
    for name, proc in done.items():
        assert proc.returncode == EXIT_FINISHED, f"{name}: {proc.stderr[-2000:]}"
    (base / "qat.toml").write_text(QAT.replace("{float_run}", str(base / "runs" / "cnn")))
    done = run_engine("run", str(base / "qat.toml"), "--runs-dir", str(base / "runs"), "--run-id", "qat")
    assert done.returncode == EXIT_FINISHED, done.stderr[-2000:]
    empty = base / "runs" / "empty"
    empty.mkdir()
    shutil.copy(base / "runs" / "cnn" / "config.toml", empty / "config.toml")
    out = {p.name: p for p in (base / "runs").iterdir()}
    out["qat.toml"], out["env"] = base / "qat.toml", env  # type: ignore[assignment]
    return out


def quantize(run: Path, mode: str, *extra: str, env=None) -> subprocess.CompletedProcess:
    return run_engine("quantize", str(run), "--mode", mode, "--repeats", "3", *extra, env=env, timeout=600)


FRESH = """
import sys, torch
import torchao  # registers the int8 operators the graph calls
images, labels = torch.load(sys.argv[2], weights_only=True)
model = torch.export.load(sys.argv[1]).module()
if len(sys.argv) > 3:
    model = torch.compile(model)
with torch.no_grad():
    print((model(images).argmax(1) == labels).float().mean().item())
"""


def fresh_accuracy(artifact: Path, val: Path, compiled: bool = False) -> float:
    """Load an artifact the way the README says, in a new process, and score it."""
    args = [sys.executable, "-c", FRESH, str(artifact), str(val)] + (["compile"] if compiled else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=engine_env())
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split()[-1])


@pytest.fixture(scope="module")
def val_images(runs, tmp_path_factory) -> Path:
    """The digits validation split as plain tensors, images in [0, 1]."""
    from engine.config.schema import Config
    from engine.data.sources import build_spec

    spec = build_spec(Config.model_validate({"data": {"name": "digits"}}))
    xs, ys = zip(*(spec.val[i] for i in range(len(spec.val))))
    path = tmp_path_factory.mktemp("val") / "val.pt"
    torch.save((torch.stack(xs), torch.tensor(ys)), path)
    return path


def check_report(run: Path, mode: str, quantized: int, layers: int) -> dict:
    report = json.loads((run / "quantized" / "quantize.json").read_text())
    float_, q = report["float"], report[mode]
    assert len(q["layers_quantized"]) == quantized and len(q["layers_quantized"]) + len(q["layers_float"]) == layers
    assert (run / "quantized" / q["file"]).stat().st_size == q["bytes"] < float_["bytes"]
    assert q["weights_bytes"] < float_["weights_bytes"] / 2
    assert abs(q["val_accuracy"] - float_["val_accuracy"]) <= MARGIN, report
    assert float_["val_accuracy"] > 0.9, "the float model should have learned the digits"
    assert q["eager_ms"] > 0 and float_["eager_ms"] > 0
    table = (run / "quantized" / "quantize.txt").read_text()
    assert f"{mode} int8" in table and "float" in table and "latency: median of 3 runs" in table
    return report


@needs_torchao
@pytest.mark.slow
def test_static_int8_is_smaller_compiles_and_scores_like_the_float_model(runs, val_images):
    done = quantize(runs["cnn"], "static", "--calibration-batches", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "calibrating on 8 batches of 32" in done.stderr and "static int8" in done.stdout
    report = check_report(runs["cnn"], "static", 4, 4)
    q = report["static"]
    assert q["accuracy_measured"] == "compiled" and q["compiled_ms"] > 0 and report["float"]["compiled_ms"] > 0
    artifact = runs["cnn"] / "quantized" / "static-int8.pt2"
    assert abs(fresh_accuracy(artifact, val_images, compiled=True) - report["float"]["val_accuracy"]) <= MARGIN
    assert abs(fresh_accuracy(artifact, val_images) - report["float"]["val_accuracy"]) <= MARGIN


@needs_torchao
def test_dynamic_int8_quantizes_every_linear_layer_of_an_mlp(runs, val_images):
    done = quantize(runs["mlp"], "dynamic", "--no-compile")
    assert done.returncode == 0, done.stderr[-3000:]
    report = check_report(runs["mlp"], "dynamic", 3, 3)
    assert "compiled_ms" not in report["dynamic"] and report["dynamic"]["accuracy_measured"] == "eager"
    artifact = runs["mlp"] / "quantized" / "dynamic-int8.pt2"
    assert abs(fresh_accuracy(artifact, val_images) - report["float"]["val_accuracy"]) <= MARGIN
    # the archive holds plain tensors only: our loader (which refuses pickled entries) takes it
    from engine.quantize.artifact import load as load_artifact

    images, _ = torch.load(val_images, weights_only=True)
    assert load_artifact(artifact)(images[:5]).shape == (5, 10)


@needs_torchao
def test_dynamic_int8_on_a_cnn_names_the_layers_it_leaves_in_float(runs):
    from engine.quantize.methods import dynamic
    from engine.model.zoo import SmallCNN

    result = dynamic(SmallCNN(10, 1, 8).eval(), (None, None), torch.rand(2, 1, 8, 8), "test")
    assert result.quantized == ["head.1"]
    assert result.float == ["features.0.0", "features.1.0", "features.3.0"]


@needs_torchao
def test_a_qat_run_converts_to_int8(runs, val_images):
    events = events_of(runs["qat"])
    assert any(e["type"] == "eval" for e in events)
    state = load(sorted((runs["qat"] / "checkpoints").glob("step-*.pt"))[-1])
    assert any("activation_post_process" in k for k in state["model"]), "fake quantization is in the checkpoint"
    done = quantize(runs["qat"], "qat-convert", "--no-compile")
    assert done.returncode == 0, done.stderr[-3000:]
    report = check_report(runs["qat"], "qat-convert", 4, 4)
    artifact = runs["qat"] / "quantized" / "qat-int8.pt2"
    assert abs(fresh_accuracy(artifact, val_images) - report["qat-convert"]["val_accuracy"]) <= MARGIN


@needs_torchao
def test_a_qat_run_stopped_mid_epoch_resumes_bit_exactly(runs, tmp_path: Path):
    proc = start_engine("run", str(runs["qat.toml"]), "--runs-dir", str(tmp_path / "runs"))
    folder = tmp_path / "runs"
    run = wait_for(lambda: folder.is_dir() and any(folder.iterdir()) and only_run(folder), what="run dir")
    wait_for(lambda: status_of(run).get("step", 0) >= 20, what="step 20")
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED
    assert 0 < status_of(run)["step"] < 45, "the stop should land mid-epoch"
    resumed = run_engine("resume", str(run))
    assert resumed.returncode == EXIT_FINISHED, resumed.stderr[-2000:]
    ours, ref = (load(sorted((r / "checkpoints").glob("step-*.pt"))[-1]) for r in (run, runs["qat"]))
    assert ours["step"] == ref["step"] == 45
    assert set(ours["model"]) == set(ref["model"])
    for key, tensor in ref["model"].items():
        assert torch.equal(ours["model"][key], tensor), f"state differs at {key}"


@needs_torchao
def test_bad_quantize_requests_exit_2_and_write_nothing(runs):
    env = runs["env"]
    cases = {
        "no-checkpoint": (["empty", "--mode", "static"], "no checkpoint to quantize"),
        "dynamic-no-linear": (["conv_only", "--mode", "dynamic"], "has no Linear layer"),
        "untraceable": (["branchy", "--mode", "static"], "torch.export cannot trace this model"),
        "qat-convert-float-run": (["cnn", "--mode", "qat-convert"], "was not trained with quantize.qat = true"),
        "static-on-qat-run": (["qat", "--mode", "static"], "convert it with --mode qat-convert"),
        "calibration-zero": (["cnn", "--mode", "static", "--calibration-batches", "0"],
                             "argument --calibration-batches: '0': expected a whole number, 1 or more"),
        "bad-mode": (["cnn", "--mode", "int4"], "invalid choice: 'int4'"),
        "no-such-run": (["nope", "--mode", "static"], "no run directory"),
    }
    before = {name: sorted(p.name for p in (runs[name]).rglob("*")) for name in ("empty", "conv_only", "branchy")}
    root = runs["cnn"].parent
    done = run_engines({name: {"args": ["quantize", *[str(root / a) if i == 0 else a for i, a in enumerate(args)],
                                        "--no-compile"], "env": env}
                        for name, (args, _) in cases.items()})
    for name, (_, message) in cases.items():
        assert done[name].returncode == EXIT_BAD_INPUT, (name, done[name].stderr[-2000:])
        assert message in done[name].stderr, (name, done[name].stderr[-2000:])
    for name, listing in before.items():
        assert sorted(p.name for p in runs[name].rglob("*")) == listing, f"{name} changed"
        assert not (runs[name] / "quantized").exists()


@needs_torchao
def test_bad_quantized_training_configs_exit_2_before_a_run_directory_exists(runs, tmp_path: Path):
    env = runs["env"]
    cases = {
        "float8-no-eligible-layer": (CNN + "[quantize]\nfloat8 = true\n",
                                     "no Linear layer has both dimensions divisible by 16"),
        "float8-on-cpu": (MLP + "[quantize]\nfloat8 = true\n", "float8 matmuls need a CUDA GPU"),
        "qat-untraceable": (BRANCHY + "[quantize]\nqat = true\n", "torch.export cannot trace this model"),
        "qat-ddp": (CNN + "[quantize]\nqat = true\n[distributed]\nnproc = 2\n", "runs in one process for now"),
        "qat-and-float8": (MLP + "[quantize]\nqat = true\nfloat8 = true\n", "pick one"),
        "qat-compiled": (CNN.replace("[train]", "[train]\ncompile = true") + "[quantize]\nqat = true\n",
                         "torch.compile fails on PT2E's fused fake-quantization op"),
    }
    if torch.cuda.is_available():
        del cases["float8-on-cpu"]
    jobs = {}
    for name, (text, _) in cases.items():
        (tmp_path / f"{name}.toml").write_text(text)
        jobs[name] = {"args": ["run", str(tmp_path / f"{name}.toml"), "--runs-dir", str(tmp_path / name)], "env": env}
    done = run_engines(jobs)
    for name, (_, message) in cases.items():
        assert done[name].returncode == EXIT_BAD_INPUT, (name, done[name].stderr[-2000:])
        assert message in done[name].stderr, (name, done[name].stderr[-2000:])
        assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir()), f"{name} wrote a run"


@needs_torchao
def test_an_archive_that_would_unpickle_is_refused(tmp_path: Path):
    """torch.export.load unpickles tensor-subclass weights without weights_only; ours refuses."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    from engine.quantize.artifact import load as load_artifact

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32)).eval()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())  # subclass weights, not unwrapped
    path = tmp_path / "pickled.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 8, 8),)), str(path))
    with pytest.raises(BadInput, match="would be unpickled on load; refusing"):
        load_artifact(path)
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(BadInput, match="not a readable torch.export archive"):
        load_artifact(tmp_path / "junk.pt2")


@needs_torchao
async def test_the_cockpit_quantizes_a_finished_run_from_the_runs_list(runs, monkeypatch):
    from cockpit import launcher
    from cockpit.app import CockpitApp
    from cockpit.screens.modals import QuantizeScreen, ReportScreen
    from cockpit.settings import Settings
    from cockpit.widgets.runs_list import RunsList
    from cockpit_helpers import until

    monkeypatch.setattr(launcher, "QUANTIZE_ARGS", ["--repeats", "2", "--no-compile"])
    shutil.rmtree(runs["mlp"] / "quantized", ignore_errors=True)
    app = CockpitApp(runs["mlp"].parent, user=Settings(), poll_gpu=False)
    async with app.run_test(size=(140, 45)) as pilot:
        table = app.screen.query_one(RunsList)
        while not table.row_count:
            await pilot.pause(0.05)
        table.move_cursor(row=table.get_row_index(str(runs["mlp"])))
        await pilot.press("z")
        await until(pilot, lambda: isinstance(app.screen, QuantizeScreen), what="the quantize form")
        assert app.screen.suggested == "dynamic"
        await pilot.press("d")
        for _ in range(1200):
            if isinstance(app.screen, ReportScreen):
                break
            await pilot.pause(0.1)
        assert isinstance(app.screen, ReportScreen), "no report came back"
        text = app.screen.text
        assert "dynamic int8" in text and "float" in text and "3 of 3" in text
        await pilot.press("escape")
        # a run with no state (never started) is not offered
        table.move_cursor(row=table.get_row_index(str(runs["empty"])))
        await pilot.press("z")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, QuantizeScreen)
    assert (runs["mlp"] / "quantized" / "dynamic-int8.pt2").is_file()


@needs_torchao
def test_static_int8_takes_a_resnet_block_that_calls_one_relu_twice():
    """torchvision's BasicBlock reuses self.relu; unseparated, the x86 quantizer's conv-add-relu
    matching fails with 'Input partition has more than one output node'."""
    from torchvision.models.resnet import BasicBlock

    from engine.quantize.methods import static

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), BasicBlock(8, 8),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    calibration = [torch.rand(16, 1, 8, 8) for _ in range(4)]
    result = static(model, (None, None), torch.rand(2, 1, 8, 8), calibration, "test")
    assert result.quantized == ["0", "1.conv1", "1.conv2", "4"] and result.float == []
    with torch.no_grad():
        out = result.program.module()(torch.rand(5, 1, 8, 8))
    assert out.shape == (5, 10) and torch.isfinite(out).all()  # trained accuracy is checked above


@needs_torchao
def test_float8_says_which_linear_layers_it_converted():
    """The module swap itself runs anywhere (the float8 matmuls need an H100-class GPU): the
    converter's summary, which the run logs, names what its filter took and what it left."""
    from torch import nn

    from engine.model.convert import convert, summaries
    from engine.quantize.training import Float8

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    converters = [Float8()]
    converted = convert(model, converters)
    assert [type(converted[i]).__name__ for i in (1, 3, 5)] == ["Float8Linear", "Float8Linear", "Linear"]
    assert summaries(converters) == [
        "float8 training: 2 of 3 Linear layers converted (1 (64->256), 3 (256->256)); "
        "left in high precision (a dimension not divisible by 16): 5 (256->10)"]
    assert summaries([]) == [] and summaries([object()]) == []
