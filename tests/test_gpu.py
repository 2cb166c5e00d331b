"""On a machine with a CUDA GPU: the CUDA paths that the CPU suite cannot reach.

Skipped where torch sees no GPU (CI, the development machine). Run them on a GPU box with
`python -m pytest tests/test_gpu.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import events_of, only_run, run_engine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CONFIG = """
[model]
name = "resnet18"
[data]
name = "synthetic"
synthetic_samples = 512
synthetic_shape = [3, 32, 32]
pin_memory = true
num_workers = 2
[train]
epochs = 1
max_steps = 12
batch_size = 64
device = "cuda"
precision = "{precision}"
channels_last = true
[checkpoint]
every_steps = 5
[logging]
every_steps = 2
max_step_events_per_s = 100000
"""


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_a_gpu_run_times_each_phase_with_cuda_events_and_reports_memory(tmp_path: Path, precision: str):
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG.format(precision=precision))
    done = run_engine("run", str(cfg), "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr[-3000:]
    run = only_run(tmp_path / "runs")
    steps = [e for e in events_of(run) if e["type"] == "step"]
    assert steps
    for e in steps:
        assert e["time_h2d_s"] > 0 and e["time_compute_s"] > 0 and e["time_optim_s"] > 0
        assert e["mem_peak_bytes"] > 0 and e["tflops"] > 0
    saved = torch.load(sorted((run / "checkpoints").glob("step-*.pt"))[-1], weights_only=True)
    assert "cuda" in saved["rng"]

