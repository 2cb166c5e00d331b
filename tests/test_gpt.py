"""The language-model task (#19 part 1): the gpt transformer, the text data, their metrics."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, events_of, only_run, run_engine, start_engine, status_of, wait_for
from contracts.errors import BadInput
from contracts.events import EXIT_BAD_INPUT, EXIT_STOPPED
from engine.data.text import TokenWindows, read_corpus, text_sets
from engine.model.gpt import GPT, build_gpt
from test_resume import final_state, step_losses

# A small transformer on the engine's own source (in every clone): 2 epochs of about 40 steps.
GPT_RUN = f"""
[model]
name = "gpt"
factory_args = {{ layers = 2, dim = 32, heads = 4, context = 32 }}
[data]
name = "text"
root = "{ROOT / 'engine'}"
max_bytes = 60000
[optim]
name = "adamw"
lr = 0.005
[train]
epochs = 2
batch_size = 32
[checkpoint]
every_steps = 10
[logging]
every_steps = 1
max_step_events_per_s = 100000
status_every_s = 0.2
"""


def test_the_transformer_is_causal_and_shaped_by_its_arguments():
    torch.manual_seed(0)
    model = GPT(vocab=256, layers=2, dim=32, heads=4, context=16).eval()
    tokens = torch.randint(0, 256, (2, 16))
    logits = model(tokens)
    assert logits.shape == (2, 16, 256)
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    after = model(changed)
    assert torch.equal(after[:, :10], logits[:, :10])  # no position sees a later token
    assert not torch.equal(after[:, 10:], logits[:, 10:])
    assert sorted(model.blocks) == ["0", "1"]  # named by index: a pipeline stage keeps its names


@pytest.mark.parametrize("args, field", [
    ({"heads": 3}, "heads"), ({"layers": 0}, "layers"), ({"dim": 2.5}, "dim"), ({"dropout": 1.0}, "dropout"),
    ({"width": 8}, "width"),
])
def test_a_transformer_that_cannot_be_built_names_its_argument(args, field):
    with pytest.raises(BadInput, match=field):
        build_gpt(256, args)


def test_text_is_every_text_file_in_path_order_windows_shift_by_one_and_the_tail_validates(tmp_path: Path):
    (tmp_path / "b.txt").write_bytes(b"world " * 40)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_bytes(b"hello " * 40)
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2" * 100)  # binary: skipped
    corpus = read_corpus(str(tmp_path))
    assert corpus == b"hello " * 40 + b"world " * 40
    assert read_corpus(str(tmp_path), max_bytes=9) == b"hello hel"
    cfg = SimpleNamespace(data=SimpleNamespace(root=str(tmp_path), max_bytes=None, val_fraction=0.25))
    train, val = text_sets(cfg, context=8)
    assert len(train) == (360 - 1) // 8 and len(val) == (120 - 1) // 8
    x, y = train[3]
    assert x.dtype == torch.long and torch.equal(x[1:], y[:-1])
    assert bytes(x.tolist()) == corpus[24:32] and bytes(y.tolist()) == corpus[25:33]
    assert bytes(val[0][0].tolist()) == corpus[360:368]  # validation is the held-out tail
    assert len(TokenWindows(torch.zeros(8, dtype=torch.uint8), 8)) == 0
    with pytest.raises(BadInput, match="data.root"):
        text_sets(SimpleNamespace(data=SimpleNamespace(root=str(tmp_path), max_bytes=20, val_fraction=0.25)), 8)


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("gpt")
    (base / "gpt.toml").write_text(GPT_RUN)
    done = run_engine("run", str(base / "gpt.toml"), "--runs-dir", str(base / "runs"))
    assert done.returncode == 0, done.stderr
    assert "perplexity" in done.stdout
    return only_run(base / "runs")


def test_a_gpt_run_learns_and_reports_loss_token_accuracy_and_perplexity(gpt_run: Path):
    evals = [e for e in events_of(gpt_run) if e["type"] == "eval"]
    assert len(evals) == 2
    for e in evals:
        m = e["metrics"]
        assert set(m) == {"loss", "accuracy", "perplexity"}
        assert m["perplexity"] == pytest.approx(math.exp(m["loss"]), rel=1e-12)
        assert 0 <= m["accuracy"] <= 1
    assert evals[-1]["metrics"]["loss"] < math.log(256) - 1.5  # far better than a uniform guess
    steps = [e for e in events_of(gpt_run) if e["type"] == "step"]
    assert all(0 <= e["accuracy"] <= 1 for e in steps)  # token accuracy on training batches
    assert steps[-1]["tflops"] > 0  # torch's FLOP counter traced the transformer on token input


def test_a_gpt_run_stopped_mid_epoch_resumes_bit_exactly(tmp_path: Path, gpt_run: Path):
    (tmp_path / "gpt.toml").write_text(GPT_RUN)
    runs = tmp_path / "runs"
    proc = start_engine("run", str(tmp_path / "gpt.toml"), "--runs-dir", str(runs))
    run = wait_for(lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), what="the run directory")
    wait_for(lambda: status_of(run).get("step", 0) >= random.randint(12, 30), what="a step mid-run")
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED
    done = run_engine("resume", run.name, "--runs-dir", str(runs))
    assert done.returncode == 0, done.stderr
    ours, ref = final_state(run), final_state(gpt_run)
    assert ours["step"] == ref["step"]
    for key, tensor in ref["model"].items():
        assert torch.equal(ours["model"][key], tensor), f"weights differ at {key}"
    assert step_losses(run) == step_losses(gpt_run)


@pytest.mark.parametrize("sets, field", [
    (["model.name='small_cnn'"], "model.name"),
    (["data.name='digits'"], "model.name"),
    (["model.factory_args={heads=3, dim=32}"], "model.factory_args.heads"),
    (["data.augment.horizontal_flip=true"], "augment"),
    (["data.root='/nonexistent/corpus'"], "data.root"),
    (["distill.enabled=true", "distill.teacher='resnet18'"], "distill"),
])
def test_bad_language_model_configs_exit_2_naming_the_field_and_write_nothing(tmp_path: Path, sets, field):
    (tmp_path / "gpt.toml").write_text(GPT_RUN)
    args = [a for s in sets for a in ("--set", s)]
    done = run_engine("run", str(tmp_path / "gpt.toml"), "--runs-dir", str(tmp_path / "runs"), *args, timeout=120)
    assert done.returncode == EXIT_BAD_INPUT, done.stdout + done.stderr
    assert field in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


async def test_the_accuracy_pane_shows_a_language_models_perplexity(tmp_path: Path, monkeypatch):
    from cockpit.app import CockpitApp
    from cockpit.settings import Settings
    from cockpit.widgets.accuracy_pane import AccuracyPane
    from cockpit_helpers import until

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    run = tmp_path / "runs" / "lm"
    run.mkdir(parents=True)
    (run / "config.toml").write_text('[model]\nname = "gpt"\n')
    (run / "status.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "state": "running", "step": 20}))
    t = 1767268800.0
    lines = [{"type": "state", "state": "running", "step": 0},
             {"type": "step", "step": 10, "epoch": 0, "batch": 10, "batches_per_epoch": 20, "loss": 3.1, "lr": 0.01,
              "accuracy": 0.2},
             {"type": "eval", "step": 20, "epoch": 0, "metrics": {"loss": 2.5, "accuracy": 0.31,
                                                                  "perplexity": math.exp(2.5)}}]
    (run / "events.jsonl").write_text("".join(json.dumps({"v": 1, "t": t + i, **e}) + "\n"
                                              for i, e in enumerate(lines)))
    app = CockpitApp(run.parent, run=run, user=Settings(), poll_gpu=False)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = app.query_one(AccuracyPane)
        await until(pilot, lambda: "perplexity" in str(pane.border_title), what="the perplexity in the title")
        assert str(pane.border_title) == "accuracy · val perplexity 12.18"
