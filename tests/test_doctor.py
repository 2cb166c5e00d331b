"""The bottleneck doctor: a slow dataset is input-bound, a big model on tiny data compute-bound."""

from __future__ import annotations

from pathlib import Path

from conftest import engine_env, events_of, only_run, run_engines
from engine.telemetry.doctor import Doctor
from engine.telemetry.flops import flops_per_sample, peak_tflops

SLOW_DATA = '''
import time
import torch
from torch.utils.data import Dataset

class Slow(Dataset):
    """Tiny images that take a while to load."""

    classes = list(range(4))

    def __init__(self, n, delay):
        self.n, self.delay = n, delay

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        time.sleep(self.delay)
        return torch.full((1, 8, 8), float(i % 4)), i % 4

def make(delay):
    return Slow(256, delay), Slow(32, 0.0)
'''


def config(data: str, model: str) -> str:
    return f"""
[model]
{model}
[data]
{data}
[train]
max_steps = 12
batch_size = 16
deterministic = false
[checkpoint]
on_epoch_end = false
best_metric = "val_loss"
[logging]
every_steps = 2
max_step_events_per_s = 100000
tensorboard = false
"""


def test_slow_data_is_input_bound_and_a_big_model_compute_bound(tmp_path: Path):
    (tmp_path / "slowdata.py").write_text(SLOW_DATA)
    env = engine_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    (tmp_path / "slow.toml").write_text(config('name = "slowdata:make"\nfactory_args = { delay = 0.005 }',
                                               'name = "small_cnn"\nfactory_args = { width = 4 }'))
    (tmp_path / "big.toml").write_text(config('name = "synthetic"\nsynthetic_samples = 64\nsynthetic_shape = [3, 64, 64]',
                                              'name = "resnet18"'))
    done = run_engines({
        name: {"args": ["run", str(tmp_path / f"{name}.toml"), "--runs-dir", str(tmp_path / name)], "env": env}
        for name in ("big", "slow")})
    verdicts = {}
    for name, proc in done.items():
        assert proc.returncode == 0, proc.stderr
        events = events_of(only_run(tmp_path / name))
        doctors = [e for e in events if e["type"] == "doctor"]
        assert doctors, f"{name}: no doctor event"
        verdicts[name] = doctors[-1]
    assert verdicts["slow"]["bound"] == "input" and verdicts["slow"]["field"] == "data.num_workers"
    assert verdicts["big"]["bound"] == "compute" and verdicts["big"]["field"] == "train.precision"
    # the verdict names a value f applies, or says plainly that nothing in the config helps on this CPU
    import torch

    from engine.telemetry.flops import bf16_native

    big = verdicts["big"]
    if bf16_native(torch.device("cpu")):
        assert (big["current"], big["value"]) == ("fp32", "bf16") and "set train.precision = 'bf16'" in big["message"]
    else:
        assert "value" not in big and "nothing in the config will speed this up on this CPU" in big["message"]
    steps = [e for e in events_of(only_run(tmp_path / "big")) if e["type"] == "step"]
    assert all(e["tflops"] > 0 for e in steps), "achieved TFLOP/s come from torch's FLOP counter"


def test_doctor_speaks_only_when_the_verdict_changes():
    doc = Doctor(window=4)
    for _ in range(4):
        doc.add(0.0, 1.0, 0.0)
    assert doc.changed().bound == "compute"
    doc.add(0.0, 1.0, 0.0)
    assert doc.changed() is None
    for _ in range(4):
        doc.add(3.0, 1.0, 0.0)
    verdict = doc.changed()
    assert verdict.bound == "input" and verdict.share == 0.75


def test_a_pipeline_that_mostly_waits_is_bubble_bound_and_the_remedy_is_more_microbatches():
    doc = Doctor(window=4)
    for _ in range(4):
        doc.add(0.1, 1.0, 0.0, 0.9)  # data, busy compute, communication, idle stages
    verdict = doc.changed()
    assert verdict.bound == "bubble" and verdict.share == 0.45 and verdict.field == "distributed.microbatches"
    assert "1f1b" in verdict.remedy


def test_flops_counting_matches_a_linear_layer_and_leaves_rng_alone():
    import torch

    layer = torch.nn.Linear(100, 10)
    before = torch.get_rng_state()
    flops = flops_per_sample(layer, (100,))
    assert torch.equal(before, torch.get_rng_state())
    assert flops == 2 * (2 * 100 * 10)  # forward, plus the weight gradient (inputs need none)


def test_peak_table_knows_common_gpus():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("Some Future Accelerator") is None


WIDE_TABLE = '''
import torch
from torch import nn

class WideTable(nn.Module):
    """A 16.8 M-parameter table of which a sample touches 64 rows (one per pixel and grey level):
    almost no arithmetic per sample, while DDP all-reduces the table's whole (dense) gradient
    every step. The classic communication-bound model (a recommender's embedding table)."""

    def __init__(self, num_classes, in_channels, levels=16, width=16384):
        super().__init__()
        self.levels = levels
        self.table = nn.EmbeddingBag(in_channels * 64 * levels, width, mode="sum")
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        flat = x.flatten(1)
        level = (flat.sigmoid() * (self.levels - 1)).round().long()
        rows = torch.arange(flat.shape[1], device=x.device) * self.levels + level
        return self.head(self.table(rows))

def make(num_classes, in_channels):
    return WideTable(num_classes, in_channels)
'''


def test_ddp_with_a_wide_model_on_tiny_batches_is_communication_bound(tmp_path: Path):
    """Four ranks on tiny batches of a wide table: the all-reduce outweighs the step's arithmetic by
    a wide margin on any machine, and more so on a loaded one (a rank waiting for a descheduled peer
    waits in the all-reduce too). The doctor's verdicts are also replayed from the measured timings
    in the step events: what it named follows from what the engine measured."""
    (tmp_path / "widetable.py").write_text(WIDE_TABLE)
    env = engine_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    cfg = config('name = "digits"', 'name = "widetable:make"').replace("batch_size = 16", "batch_size = 2")
    cfg = cfg.replace("every_steps = 2", "every_steps = 1")  # 12 timings: the first step's warm-up weighs 1/12
    (tmp_path / "wide.toml").write_text(cfg + '[optim]\nname = "sgd"\nmomentum = 0.0\n')
    done = run_engines({"wide": {"args": ["run", str(tmp_path / "wide.toml"), "--nproc", "4",
                                          "--runs-dir", str(tmp_path / "runs")], "env": env}})
    assert done["wide"].returncode == 0, done["wide"].stderr[-3000:]
    events = events_of(only_run(tmp_path / "runs"))
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == 12 and all(e["time_comm_s"] > 0 and e["world_size"] == 4 for e in steps)
    doctors = [e for e in events if e["type"] == "doctor"]
    replay, named = Doctor(), []
    for e in steps:
        replay.add(e["time_data_s"] + e["time_h2d_s"], e["time_compute_s"] + e["time_optim_s"], e["time_comm_s"])
        verdict = replay.changed()
        if verdict is not None:
            named.append((e["step"], verdict.bound, verdict.share))
    assert [(d["step"], d["bound"], d["share"]) for d in doctors] == named, (doctors, steps)
    assert doctors and doctors[-1]["bound"] == "communication", (doctors, steps)
    assert doctors[-1]["field"] == "train.grad_accum_steps"
