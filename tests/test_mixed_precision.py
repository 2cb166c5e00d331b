"""fp16 with a GradScaler: an inf gradient skips the step, is counted, and holds the schedule still."""

from __future__ import annotations

from pathlib import Path

from conftest import engine_env, events_of, only_run, run_engine
from engine.config.schema import ScheduleConfig
from engine.train.schedule import lr_at

FACTORY = '''
import torch
from torch import nn

class Spiky(nn.Module):
    """A linear classifier whose loss turns infinite on one chosen forward pass."""

    def __init__(self, num_classes, in_channels, spike_at):
        super().__init__()
        self.fc = nn.Linear(in_channels * 8 * 8, num_classes)
        self.calls, self.spike_at = 0, spike_at

    def forward(self, x):
        self.calls += 1
        out = self.fc(x.flatten(1))
        if self.calls == self.spike_at:
            out = out * float("inf")
        return out

def make(num_classes, in_channels, spike_at):
    return Spiky(num_classes, in_channels, spike_at)
'''

CONFIG = """
[model]
name = "spiky:make"
factory_args = { spike_at = 4 }
[data]
name = "digits"
[schedule]
name = "cosine"
warmup_steps = 5
[train]
precision = "fp16"
max_steps = 10
batch_size = 64
deterministic = false
[logging]
every_steps = 1
max_step_events_per_s = 100000
tensorboard = false
"""


def test_an_inf_gradient_is_a_counted_skipped_step_and_the_schedule_waits(tmp_path: Path):
    (tmp_path / "spiky.py").write_text(FACTORY)
    (tmp_path / "run.toml").write_text(CONFIG)
    env = engine_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    done = run_engine("run", str(tmp_path / "run.toml"), "--runs-dir", str(tmp_path / "runs"), env=env)
    assert done.returncode == 0, done.stderr
    steps = [e for e in events_of(only_run(tmp_path / "runs")) if e["type"] == "step"]
    skipped = [e["skipped_steps"] for e in steps]
    assert skipped[:3] == [0, 0, 0] and skipped[3:] == [1] * 7, skipped
    cfg = ScheduleConfig(name="cosine", warmup_steps=5)
    lrs = [e["lr"] for e in steps]
    # step 5 (index 4) uses the rate step 4 would have used: the skipped step did not count
    expected = [lr_at(i, 10, 1e-3, cfg) for i in (0, 1, 2, 3, 3, 4, 5, 6, 7, 8)]
    assert lrs == expected


def test_lamb_from_timm_trains(tmp_path: Path):
    """optim.name = 'lamb' uses timm's maintained LAMB and the loss goes down."""
    (tmp_path / "run.toml").write_text('[optim]\nname = "lamb"\nlr = 0.01\n[train]\nmax_steps = 30\n'
                                       'deterministic = false\n[logging]\nevery_steps = 5\n'
                                       'max_step_events_per_s = 100000\ntensorboard = false\n')
    done = run_engine("run", str(tmp_path / "run.toml"), "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    losses = [e["loss"] for e in events_of(only_run(tmp_path / "runs")) if e["type"] == "step"]
    assert losses[-1] < losses[0]
