"""The device-resident data path: the set lives on the device, batches are cropped and flipped there."""

from __future__ import annotations

import signal
from pathlib import Path

import torch

from conftest import TINY, only_run, run_engine, start_engine, status_of, wait_for
from engine.data.augment import batch_augment
from contracts.control import send_command
from test_resume import final_state, step_losses

RESIDENT = TINY.replace("num_workers = 2", "device_resident = true").replace("epochs = 3", "epochs = 12")


def test_batch_augment_crops_windows_of_the_padded_image_and_flips():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(3)
    out = batch_augment(x, g, pad=1, flip=True)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for n in range(2):
        windows = [padded[n, :, i:i + 4, j:j + 4] for i in range(3) for j in range(3)]
        assert any(torch.equal(out[n], w) or torch.equal(out[n], w.flip(-1)) for w in windows)
    again = batch_augment(x, torch.Generator().manual_seed(3), pad=1, flip=True)
    assert torch.equal(out, again), "the same (seed, epoch, batch) gives the same batch"


def test_device_resident_run_resumes_exactly(tmp_path: Path):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    for d in (ref_dir, cut_dir):
        d.mkdir()
        (d / "run.toml").write_text(RESIDENT)
    proc = start_engine("run", str(cut_dir / "run.toml"), "--runs-dir", str(cut_dir / "runs"))
    runs = cut_dir / "runs"
    run = wait_for(lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), what="run dir")
    sock = wait_for(lambda: status_of(run).get("socket"), what="the control socket")
    wait_for(lambda: Path(sock).exists(), what="the socket file")
    paused = send_command(sock, "pause")  # this path is too fast to catch with a timer
    assert paused["ok"] and 0 < paused["step"] < 540
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 3, "the run must have been interrupted mid-way"
    resumed = run_engine("resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    done = run_engine("run", str(ref_dir / "run.toml"), "--runs-dir", str(ref_dir / "runs"))
    assert done.returncode == 0, done.stderr
    ref, ours = final_state(only_run(ref_dir / "runs")), final_state(run)
    assert ours["step"] == ref["step"]
    for key, tensor in ref["model"].items():
        assert torch.equal(ours["model"][key], tensor), key
    assert step_losses(run) == step_losses(only_run(ref_dir / "runs"))
    losses = list(step_losses(run).values())
    assert losses[-1] < losses[0], "it trains"
