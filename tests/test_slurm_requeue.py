"""Slurm, for real (#21): a run submitted with `cockpit-engine slurm submit` to the test cluster
(tests/slurm_cluster.py) is signalled before its time limit, checkpoints, requeues itself and
resumes; an admin's `scontrol requeue` does the same through SIGTERM. Either way the final
weights equal an uninterrupted run's, bit for bit.

The user's model sleeps a little in each training forward in the first start of a Slurm job
(it reads SLURM_JOB_ID and SLURM_RESTART_COUNT itself), so that the run outlasts the signal;
sleeping changes no number, and the reference run (not a job) and the requeued start do not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from conftest import engine_env, events_of, run_engine, status_of, wait_for

pytestmark = pytest.mark.timeout(900)

MODELS = '''
import os
import time

from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels, nap):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 32), nn.ReLU(), nn.Linear(32, num_classes))
        first_start = os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
        self.nap = nap if first_start else 0.0

    def forward(self, x):
        if self.training and self.nap:
            time.sleep(self.nap)
        return self.net(x)


def make(num_classes, in_channels, nap=0.0):
    return Net(num_classes, in_channels, nap)
'''

CONFIG = """
[model]
name = "models:make"
factory_args = {{ nap = {nap} }}
[data]
name = "digits"
[train]
epochs = 20
max_steps = {steps}
batch_size = 16
[checkpoint]
on_epoch_end = false
[logging]
every_steps = 10
tensorboard = false
status_every_s = 0.5
"""
STEPS = 600


def write(folder: Path, nap: float) -> tuple[Path, dict[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.py").write_text(MODELS)
    (folder / "run.toml").write_text(CONFIG.format(nap=nap, steps=STEPS))
    env = engine_env()
    env["PYTHONPATH"] = f"{folder}{os.pathsep}{env['PYTHONPATH']}"
    return folder / "run.toml", env


def weights(run: Path) -> dict[str, torch.Tensor]:
    latest = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(latest, map_location="cpu", weights_only=True)
    assert state["step"] == STEPS
    return state["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The same run, uninterrupted, not under Slurm."""
    folder = tmp_path_factory.mktemp("reference")
    config, env = write(folder, 0.1)
    done = run_engine("run", str(config), "--run-id", "ref", "--runs-dir", str(folder / "runs"), env=env,
                      timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return weights(folder / "runs" / "ref")


def submit(slurm, folder: Path, run_id: str, *args: str, nap: float = 0.1) -> tuple[Path, str]:
    config, env = write(folder, nap)
    env = {**slurm.env, "PYTHONPATH": env["PYTHONPATH"], "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "engine.cli", "slurm", "submit", str(config), "--run-id", run_id,
                           "--runs-dir", str(folder / "runs"), *args], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout.splitlines()[0])["job_id"]
    run = folder / "runs" / run_id
    recorded = json.loads((run / "slurm" / "job.json").read_text())
    assert recorded["job_id"] == job and (run / recorded["script"]).is_file()
    return run, job


def finished(slurm, job: str) -> bool:
    done = slurm.run("squeue", "-h", "-j", job, "-o", "%T")
    if done.returncode:  # long gone: squeue no longer knows the id
        return "Invalid job id" in done.stderr
    return done.stdout.strip() == ""  # gone from the queue (squeue lists only live states)


def outcome(run: Path, job: str, slurm) -> list[dict]:
    wait_for(lambda: status_of(run).get("state") == "finished" and finished(slurm, job), timeout=400,
             what=f"job {job} to finish its run (output: {run / 'slurm' / f'job-{job}.out'})")
    return events_of(run)


@pytest.fixture(scope="module")
def jobs(slurm, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Both jobs submitted at once (the node runs them side by side: they mostly sleep)."""
    folder = tmp_path_factory.mktemp("jobs")
    submitted = {"limit": submit(slurm, folder / "limit", "limit", "--time", "2", "--set", "slurm.signal_lead_s=90"),
                 "admin": submit(slurm, folder / "admin", "admin", "--time", "10", nap=0.25)}  # >= 150 s unless requeued
    run, job = submitted["limit"]

    def extend() -> None:
        """Once the engine has requeued its job, give the next start a longer limit, so that it
        cannot be signalled in turn before it ends, whatever this machine's load (an admin
        extending a limit is ordinary Slurm)."""
        wait_for(lambda: (run / "events.jsonl").exists() and any(e["type"] == "requeue" for e in events_of(run)),
                 timeout=300, what="the requeue")
        slurm.run("scontrol", "update", f"JobId={job}", "TimeLimit=10")

    threading.Thread(target=extend, daemon=True).start()
    return submitted


def test_an_admins_requeue_stops_with_a_checkpoint_and_the_job_resumes_exactly(slurm, jobs, reference):
    run, job = jobs["admin"]
    wait_for(lambda: status_of(run).get("step", 0) >= 10, timeout=240, what="the job to train")
    done = slurm.run("scontrol", "requeue", job)
    assert done.returncode == 0, done.stderr
    events = outcome(run, job, slurm)
    starts = [e for e in events if e["type"] == "slurm"]
    assert [e["restart_count"] for e in starts] == [0, 1]
    states = [e for e in events if e["type"] == "state" and e["state"] in ("stopped", "finished", "requeued")]
    assert [e["state"] for e in states] == ["stopped", "finished"], states  # SIGTERM: a stop with a checkpoint
    assert not [e for e in events if e["type"] == "requeue"]  # Slurm requeued it, not the engine
    (resumed,) = [e for e in events if e["type"] == "resume"]
    assert resumed["step"] == states[0]["step"] >= 10
    mine = weights(run)
    for k, v in reference.items():
        assert torch.equal(mine[k], v), k


def test_a_job_signalled_before_its_time_limit_checkpoints_requeues_and_resumes_exactly(slurm, jobs, reference):
    """--time=2 with the USR1 asked 90 s before the limit (about 30 s after the start; with a lead
    of 60 it came 57 s after the start here, 3 s early), while the run needs about 60 s of
    sleeping steps and its start-up."""
    run, job = jobs["limit"]
    events = outcome(run, job, slurm)
    (requeue,) = [e for e in events if e["type"] == "requeue"]
    assert requeue["ok"] and requeue["job_id"] == job, requeue
    starts = [e for e in events if e["type"] == "slurm"]
    assert [e["restart_count"] for e in starts] == [0, 1] and {e["job_id"] for e in starts} == {job}
    states = [e["state"] for e in events if e["type"] == "state"]
    assert states.count("requeued") == 1 and states[-1] == "finished", states
    stop = next(e for e in events if e["type"] == "state" and e["state"] == "requeued")
    assert "USR1" in stop["reason"] and 0 < stop["step"] < STEPS
    (resumed,) = [e for e in events if e["type"] == "resume"]
    assert resumed["step"] == stop["step"] == requeue["step"]
    # the wait of each start: from the submission, then from the requeued start's last event
    assert all(e["waited_s"] > 0 for e in starts) and starts[1]["waited_s"] < starts[1]["t"] - requeue["t"] + 1
    # the cockpit's cost pane counts them
    from cockpit.history import RunHistory
    from cockpit.widgets.cost_pane import CostPane

    history = RunHistory()
    history.apply_many(events)
    assert history.slurm["starts"] == 2 and history.slurm["requeues"] == 1
    pane = CostPane()
    pane.show(history)
    text = pane.text.plain
    assert f"Slurm job {job}, start 2" in text and "waiting (queue and set-up, 2 starts)" in text
    assert "1 requeue before the time limit" in text
    # the goodput ledger: the redone steps (none: the requeue saved first) and the waits beside it
    ledger = [e for e in events if e["type"] == "ledger"][-1]
    assert ledger["sessions"] == 2 and ledger["classes"]["lost"]["seconds"] == 0.0
    assert ledger["queued_s"] == pytest.approx(sum(e["waited_s"] for e in starts), rel=1e-6)
    mine = weights(run)
    for k, v in reference.items():
        assert torch.equal(mine[k], v), k


def test_an_unknown_partition_is_refused_and_nothing_is_submitted(slurm, tmp_path):
    config, env = write(tmp_path, 0.0)
    done = subprocess.run([sys.executable, "-m", "engine.cli", "slurm", "submit", str(config), "--run-id", "p",
                           "--runs-dir", str(tmp_path / "runs"), "--partition", "nosuch"], capture_output=True,
                          text=True, env={**slurm.env, "PYTHONPATH": env["PYTHONPATH"]}, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--partition 'nosuch': Slurm has no such partition (known: debug)" in done.stderr
    assert not (tmp_path / "runs" / "p").exists()
    assert slurm.run("squeue", "-h").stdout.strip() == ""
