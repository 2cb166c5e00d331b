"""FSDP2 (fully_shard) on two CPU ranks with Gloo: same training as DDP, sharded checkpoints
that resume exactly, and the checks that refuse a resume that could not be exact."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import popen_engine, events_of, run_engine, wait_for
from contracts.control import send_command

CONFIG = """
[model]
name = "small_cnn"
factory_args = { width = 8, norm = "group", dropout = 0.0 }
[data]
name = "synthetic"
synthetic_samples = 192
synthetic_shape = [3, 12, 12]
val_fraction = 0.25
[optim]
name = "adamw"
lr = 0.01
[train]
epochs = 6
batch_size = 8
[checkpoint]
every_steps = 10
[logging]
every_steps = 1  # a logged loss averages the steps since the last one: stop and resume split that
max_step_events_per_s = 100000
status_every_s = 0.2
"""

FSDP = "--set=distributed.strategy='fsdp'"


def full_weights(shards: Path) -> dict[str, torch.Tensor]:
    """Reassemble the model from the ranks' dim-0 shards (FSDP2 shards parameters on dim 0)."""
    parts = [torch.load(shards / f"rank-{r:05d}.pt", weights_only=True)["model"] for r in range(2)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An FSDP run, the same run with DDP, and an FSDP run stopped mid-way and resumed."""
    root = tmp_path_factory.mktemp("fsdp")
    cfg = root / "run.toml"
    cfg.write_text(CONFIG)
    base = ("run", str(cfg), "--nproc", "2", "--runs-dir", str(root / "runs"))
    for name, extra in (("fsdp", (FSDP,)), ("ddp", ())):
        done = run_engine(*base, "--run-id", name, *extra, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    cut = root / "runs" / "cut"
    proc = popen_engine([*base, "--run-id", "cut", FSDP],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def status() -> dict:
            try:
                return json.loads((cut / "status.json").read_text())
            except (OSError, ValueError):
                return {}

        wait_for(lambda: status().get("step", 0) >= 25 or proc.poll() is not None, 240, "step 25")
        # straight to the socket: a `cockpit-engine send` process takes long enough to start on a
        # loaded machine for the run's last 29 steps to go by first
        stop = send_command(status()["socket"], "stop") if proc.poll() is None else {"ok": False}
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stop["ok"], (stop, out[-3000:])
    assert proc.returncode == 3, out[-3000:]
    resumed = run_engine("resume", str(cut), timeout=300)  # nproc=2 and fsdp come from config.toml
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"fsdp": root / "runs" / "fsdp", "ddp": root / "runs" / "ddp", "cut": cut}


def test_fsdp_trains_like_ddp(runs):
    last = max(p for p in (runs["fsdp"] / "checkpoints").iterdir() if p.suffix == ".shards")
    assert sorted(f.name for f in last.iterdir()) == ["rank-00000.pt", "rank-00001.pt"]
    shard = torch.load(last / "rank-00001.pt", weights_only=True)
    assert shard["world_size"] == 2 and shard["strategy"] == "fsdp" and shard["rank"] == 1
    ddp = torch.load(runs["ddp"] / "checkpoints" / f"step-{shard['step']:08d}.pt", weights_only=True)
    full = full_weights(last)
    assert full.keys() == ddp["model"].keys()
    for k, v in ddp["model"].items():
        assert full[k].shape == v.shape
        assert torch.allclose(full[k], v, atol=1e-5), k
    pointer = json.loads((runs["fsdp"] / "checkpoints" / "latest").read_text())
    assert pointer["file"] == last.name


def test_sharded_checkpoint_resumes_exactly(runs):
    events = events_of(runs["cut"])
    assert any(e["type"] == "resume" for e in events)
    states = [e["state"] for e in events if e["type"] == "state"]
    assert "stopped" in states and states[-1] == "finished"
    final = max(p for p in (runs["fsdp"] / "checkpoints").iterdir() if p.suffix == ".shards")
    for r in range(2):
        a = torch.load(final / f"rank-{r:05d}.pt", weights_only=True)
        b = torch.load(runs["cut"] / "checkpoints" / final.name / f"rank-{r:05d}.pt", weights_only=True)
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (r, k)
    # the same per-step losses, before and after the stop
    def losses(run: Path) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in events_of(run) if e["type"] == "step"}
    assert losses(runs["cut"]) == losses(runs["fsdp"])


def test_resume_with_another_strategy_or_size_is_refused(runs):
    run = runs["fsdp"]
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    events_before = (run / "events.jsonl").read_bytes()
    ddp = run_engine("resume", str(run), "--set=distributed.strategy='ddp'", timeout=240)
    assert ddp.returncode == 2, ddp.stderr[-2000:]
    assert "distributed.strategy = 'fsdp'" in ddp.stderr
    one = run_engine("resume", str(run), "--nproc", "1")
    assert one.returncode == 2
    assert "written by 2 process(es) and this resume has 1" in one.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert (run / "events.jsonl").read_bytes() == events_before
