"""Every rank in view and alerts (#20 parts 1, 3, 5): per-rank records, stragglers, the alert command.

The straggler is real: four Gloo ranks of a user's model whose forward sleeps on one rank (it
reads RANK itself; nothing in the engine is hooked). The loss spike and the throughput drop
come from a user's model that changes its ways after a number of training forwards.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import engine_env, events_of, run_engine, status_of
from engine.telemetry.alerts import Alerts
from engine.config.alerts import AlertsConfig
from engine.telemetry.ranks import FIELDS, GpuHealth, Stragglers, records

pytestmark = pytest.mark.timeout(600)

MODELS = '''
import os
import time

from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels, slow_rank=-1, change_at=0, stall_at=0):
        super().__init__()
        self.stall_at = stall_at
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.slow = os.environ.get("RANK") == str(slow_rank)
        self.change_at, self.calls = change_at, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
        late = self.change_at and self.calls >= self.change_at and self.training
        if self.training and self.calls == self.stall_at:
            time.sleep(4)  # one step stuck (a hung file system, say)
        if self.slow or late:
            time.sleep(0.03)
        out = self.net(x)
        if late:  # from here on, every sample confidently called class 0: a loss jump that stays
            wrong = out.new_zeros(out.shape[-1])
            wrong[0] = 30.0
            return out * 0 + wrong
        return out


def make(num_classes, in_channels, slow_rank=-1, change_at=0, stall_at=0):
    return Net(num_classes, in_channels, slow_rank, change_at, stall_at)
'''

CATCH = '''
import sys
with open(sys.argv[1], "a") as f:
    f.write(sys.stdin.read())
'''

CONFIG = """
[model]
name = "models:make"
factory_args = {{ {args} }}
[data]
name = "digits"
[train]
epochs = 1
batch_size = 16
[logging]
every_steps = 1
max_step_events_per_s = 100000
tensorboard = false
[alerts]
command = "{python} {catch} {out}"
"""


def setup(tmp_path: Path, args: str) -> tuple[Path, dict[str, str]]:
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "catch.py").write_text(CATCH)
    (tmp_path / "run.toml").write_text(CONFIG.format(args=args, python=sys.executable, catch=tmp_path / "catch.py",
                                                     out=tmp_path / "alerts.jsonl"))
    env = engine_env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    return tmp_path / "run.toml", env


def received(tmp_path: Path) -> list[dict]:
    path = tmp_path / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_slow_rank_is_named_a_straggler_in_the_ranks_events_the_console_and_the_alert_command(tmp_path):
    config, env = setup(tmp_path, "slow_rank = 2")
    done = run_engine("run", str(config), "--runs-dir", str(tmp_path / "runs"), "--run-id", "four", "--nproc", "4",
                      env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "four"
    events = events_of(run)
    ranks = [e for e in events if e["type"] == "ranks"]
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert [e["step"] for e in ranks] == steps  # one per logging step
    pids = status_of(run)["rank_pids"]
    for e in ranks:
        assert [r["rank"] for r in e["ranks"]] == [0, 1, 2, 3] and [r["local_rank"] for r in e["ranks"]] == [0, 1, 2, 3]
        assert [r["pid"] for r in e["ranks"]] == pids and all(r["host"] for r in e["ranks"])
        assert all(set(FIELDS) <= set(r) and r["gpu_util"] is None and r["mem_peak_bytes"] > 0 for r in e["ranks"])
    assert sum(e["slowest"] == 2 for e in ranks) >= len(ranks) * 0.8
    alerts = [e for e in events if e["type"] == "alert"]
    assert len(alerts) == 1, alerts  # once per episode, not every step
    (alert,) = alerts
    assert alert["kind"] == "straggler" and alert["rank"] == 2 and alert["where"] == "compute"
    assert alert["step"] <= 3 + 3 and alert["ratio"] > 1.5  # three logging steps in a row, after a warm-up step or so
    assert "rank 2 on " in alert["message"] and "straggler" in alert["message"]
    assert "alert (straggler, warning): rank 2" in done.stdout
    (told,) = received(tmp_path)  # the command got the same alert, as JSON on standard input
    assert told == {"type": "alert", **{k: v for k, v in alert.items() if k not in ("v", "t", "type")}}


def test_a_loss_spike_and_a_throughput_drop_are_alerted_once_each(tmp_path):
    config, env = setup(tmp_path, "change_at = 45")
    done = run_engine("run", str(config), "--runs-dir", str(tmp_path / "runs"), "--run-id", "one", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # a machine loaded by other work can slow the run before the change too: that is a real
    # throughput drop, alerted as such; the one the change makes is the one judged here
    def ours(a: dict) -> bool:
        return a["kind"] != "throughput_drop" or a["step"] >= 45

    alerts = [e for e in events_of(tmp_path / "runs" / "one") if e["type"] == "alert" and ours(e)]
    assert sorted(a["kind"] for a in alerts) == ["loss_spike", "throughput_drop"], alerts
    spike = next(a for a in alerts if a["kind"] == "loss_spike")
    assert spike["step"] == 45 and spike["z"] > 8  # the first changed forward
    drop = next(a for a in alerts if a["kind"] == "throughput_drop")
    # three slow logging steps in a row, the third by step 47 (a step slowed by a busy machine just
    # before the change may count as the first of them)
    assert 45 <= drop["step"] <= 45 + 2 and drop["samples_per_s"] < 0.5 * drop["baseline"]
    assert sorted(a["kind"] for a in received(tmp_path) if ours(a)) == ["loss_spike", "throughput_drop"]


def test_a_stall_and_a_disk_nearly_full_are_alerted_once_each(tmp_path):
    """One step stuck for 4 s (the median step is milliseconds; stall_min_s = 1.5), and a disk
    that never has room for 10^15 more checkpoints (the real free space of the test's disk)."""
    config, env = setup(tmp_path, "stall_at = 40")
    done = run_engine("run", str(config), "--runs-dir", str(tmp_path / "runs"), "--run-id", "stall",
                      "--set", "alerts.stall_min_s=1.5", "--set", "alerts.disk_free_checkpoints=1e15",
                      "--set", "checkpoint.every_steps=10", "--set", "alerts.throughput_drop=false", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    alerts = [e for e in events_of(tmp_path / "runs" / "stall") if e["type"] == "alert"]
    assert sorted(a["kind"] for a in alerts) == ["disk_full", "stall"], alerts
    stall = next(a for a in alerts if a["kind"] == "stall")
    assert stall["step"] == 39 and stall["phase"] == "compute" and stall["waited_s"] >= 1.5
    assert stall["message"].startswith("no step for ") and "rank 0 is in forward/backward" in stall["message"]
    disk = next(a for a in alerts if a["kind"] == "disk_full")
    assert disk["checkpoint_bytes"] > 0 and disk["field"] == "checkpoint.keep_last" and disk["step"] >= 10
    assert sorted(a["kind"] for a in received(tmp_path)) == ["disk_full", "stall"]


def test_a_non_finite_loss_is_alerted_before_the_run_fails(tmp_path):
    config, env = setup(tmp_path, "change_at = 0")
    done = run_engine("run", str(config), "--runs-dir", str(tmp_path / "runs"), "--run-id", "nan",
                      "--set", "optim.lr=1e30", env=env)
    assert done.returncode == 1, done.stderr[-3000:]
    alerts = [e for e in events_of(tmp_path / "runs" / "nan") if e["type"] == "alert"]
    assert [a["kind"] for a in alerts] == ["nonfinite_loss"] and alerts[0]["severity"] == "critical"
    assert "training diverged" in alerts[0]["message"]
    assert [a["kind"] for a in received(tmp_path)] == ["nonfinite_loss"]


# ---- the detectors on their own ------------------------------------------------------------------


def record(busy: float, data: float = 0.0) -> list[float]:
    return [data, 0.0, busy - data, 0.0, 0.0, 1e6, *[-1.0] * (len(FIELDS) - 6)]


def test_a_straggler_needs_consecutive_steps_and_fires_once_per_episode():
    ids = [{"host": f"h{r}", "local_rank": r, "pid": 100 + r} for r in range(4)]
    detect = Stragglers(ratio=1.5, steps=3)

    def step(slow: float, data: float = 0.0) -> list[dict]:
        return detect.feed(records([v for r in range(4) for v in (record(slow, data) if r == 3 else record(1.0))], 4, ids))

    assert step(2.0) == [] and step(1.0) == [] and step(2.0) == [] and step(2.0) == []  # the streak was broken
    (found,) = step(2.0, data=0.9)
    assert found["rank"] == 3 and found["host"] == "h3" and found["ratio"] == pytest.approx(2.0)
    assert found["where"] == "input"  # its extra second is mostly waiting for data
    assert step(2.0) == [] and step(1.0) == []  # the episode ends when it keeps up
    assert step(3.0) == [] and step(3.0) == [] and step(3.0)[0]["where"] == "compute"


def test_loss_spikes_are_judged_robustly_against_the_runs_own_history():
    fired: list[dict] = []
    alerts = Alerts(AlertsConfig(), lambda event, **e: fired.append(e))
    for step, loss in enumerate([1.0, 1.1, 0.9, 1.05, 0.95] * 4):
        alerts.loss(step, loss)
    alerts.loss(20, 1.5)  # noisy, not a spike
    assert fired == []
    alerts.loss(21, 9.0)
    alerts.loss(22, 9.5)  # the same episode
    assert [e["step"] for e in fired] == [21] and fired[0]["kind"] == "loss_spike"


def test_gpu_throttling_ecc_and_xid_from_the_ranks_records():
    """NVML's readings as a rank reports them (a GPU machine's records; the detector on its own)."""
    ids = [{"host": "gpu-a", "local_rank": r, "pid": 10 + r} for r in range(2)]

    def recs(throttle=0, ecc=0, xid=0):
        gpu = [90.0, 1e9, 85.0, 300.0, 1400.0]
        return records([*[0.01] * 5, 1e6, *gpu, 0.0, 0.0, 0.0, *[0.01] * 5, 1e6, *gpu, float(throttle), float(ecc),
                        float(xid)], 2, ids)

    health = GpuHealth()
    assert health.feed(recs()) == []
    assert health.feed(recs(throttle=0x1)) == []  # GPU idle: not a complaint
    (found,) = health.feed(recs(throttle=0x40 | 0x4))
    assert found[0] == "gpu_throttle" and found[3]["rank"] == 1 and found[3]["reasons"] == ["power cap", "thermal (hardware)"]
    assert "rank 1 on gpu-a (GPU 1) is throttled" in found[2]
    assert health.feed(recs(throttle=0x40)) == []  # the same episode
    assert health.feed(recs()) == [] and health.feed(recs(throttle=0x8))[0][3]["reasons"] == ["hardware slowdown"]
    (ecc,) = health.feed(recs(throttle=0x8, ecc=2))
    assert ecc[:2] == ("gpu_ecc", "critical") and "2 new uncorrected ECC" in ecc[2]
    (xid,) = health.feed(recs(throttle=0x8, ecc=2, xid=79))
    assert xid[:2] == ("gpu_xid", "critical") and xid[3]["xid"] == 79 and "XID 79" in xid[2]
    assert health.feed(recs(throttle=0x8, ecc=2, xid=79)) == []  # told once
