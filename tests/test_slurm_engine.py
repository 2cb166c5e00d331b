"""Slurm, the engine's side (#21): the batch script, bad input, the cross-host command channel and
resume --or-start. The parts that need a running Slurm are in test_slurm_requeue.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import events_of, run_engine, start_engine, status_of, wait_for
from contracts import command_files
from contracts.events import EXIT_BAD_INPUT, EXIT_STOPPED

CONFIG = """
[model]
factory_args = { width = 4 }
[data]
name = "digits"
[train]
epochs = 1000
batch_size = 16
deterministic = false
[logging]
every_steps = 5
tensorboard = false
status_every_s = 0.1
"""

# Written by hand from sbatch's and torchrun's documentation, for 4 nodes x 8 GPUs.
EXPECTED = r"""#!/bin/bash
#SBATCH --job-name=cockpit-big
#SBATCH --comment=cockpit-run:{run}
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --time=12:00:00
#SBATCH --partition=gpu
#SBATCH --account=ml
#SBATCH --qos=high
#SBATCH --constraint=h100
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={run}/slurm/job-%j.out
#SBATCH --mem=200G
#SBATCH --exclusive

# Written by `cockpit-engine slurm submit` for run big. Each start of this job (the first,
# and each requeue) resumes the run from its newest checkpoint.
set -u
RUN={run}
PYTHON={python}
export PYTHONUNBUFFERED=1

# USR1: the time limit is near (or a preemption that requeues). Leave a requeue command in the
# run directory: rank 0, on whichever node, checkpoints at its next step boundary, requeues
# this job and exits.
requeue() {{
  local id
  printf -v id '%020d-usr1' "$(date +%s%N)"
  mkdir -p "$RUN/commands"
  printf '{{"cmd": "requeue", "reason": "Slurm sent USR1: the time limit is near", "slurm_run": "%s-%s"}}\n' "$SLURM_JOB_ID" "${{SLURM_RESTART_COUNT:-0}}" > "$RUN/commands/.$id.tmp"
  mv "$RUN/commands/.$id.tmp" "$RUN/commands/$id.json"
  echo "cockpit: USR1 at $(date -u +%FT%TZ): asked the engine to checkpoint and requeue"
}}
trap requeue USR1
# SIGTERM (scontrol requeue, scancel, the time limit): Slurm sends it to the job step too; the
# engine stops with a checkpoint. The shell keeps waiting for it.
trap 'echo "cockpit: SIGTERM at $(date -u +%FT%TZ)"' TERM

HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))
echo "cockpit: job $SLURM_JOB_ID start ${{SLURM_RESTART_COUNT:-0}} on $SLURM_JOB_NODELIST, rendezvous $HEAD:$PORT"
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  "$PYTHON" -m torch.distributed.run --nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node=8 \
  --rdzv-backend=c10d --rdzv-endpoint="$HEAD:$PORT" --rdzv-id="$SLURM_JOB_ID-${{SLURM_RESTART_COUNT:-0}}" \
  --max-restarts=0 -m engine.cli resume "$RUN" --or-start &
ENGINE=$!
while true; do  # a trapped signal ends `wait` early: wait again until the engine is gone
  wait "$ENGINE"
  code=$?
  kill -0 "$ENGINE" 2>/dev/null || break
done
exit "$code"
"""


def engine(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI itself (not the warm server: these calls are about argument handling and PATH)."""
    from conftest import engine_env

    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                          env=env or engine_env(), timeout=120)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "run.toml").write_text(CONFIG)
    return tmp_path / "run.toml"


def test_the_dry_run_for_four_nodes_of_eight_gpus_is_the_expected_script(config, tmp_path):
    done = engine("slurm", "submit", str(config), "--run-id", "big", "--runs-dir", str(tmp_path / "runs"),
                  "--nodes", "4", "--gpus-per-node", "8", "--time", "12:00:00", "--partition", "gpu",
                  "--account", "ml", "--qos", "high", "--constraint", "h100", "--sbatch-arg=--mem=200G",
                  "--sbatch-arg=--exclusive", "--set", "slurm.signal_lead_s=300", "--set", "train.device=auto",
                  "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout == EXPECTED.format(run=tmp_path / "runs" / "big", python=sys.executable)
    assert not (tmp_path / "runs").exists(), "a dry run writes nothing"
    check = subprocess.run(["bash", "-n"], input=done.stdout, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # bash can parse it


@pytest.mark.parametrize("args,needle", [
    (["--time", "2"], "--time 2 (120 s) is not longer than slurm.signal_lead_s = 120"),
    (["--time", "ten minutes"], "--time 'ten minutes': expected Slurm's format"),
    (["--gpus-per-node", "8", "--set", "train.device=cpu"], "--gpus-per-node 8 with train.device = 'cpu'"),
    (["--set", "slurm.signal_lead_s=5"], "slurm.signal_lead_s"),
])
def test_bad_input_exits_2_naming_it_and_submits_nothing(config, tmp_path, args, needle):
    done = engine("slurm", "submit", str(config), "--run-id", "x", "--runs-dir", str(tmp_path / "runs"), *args)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert needle in done.stderr
    assert not (tmp_path / "runs" / "x").exists()


def test_without_sbatch_on_the_path_nothing_is_submitted(config, tmp_path):
    from conftest import engine_env

    env = dict(engine_env(), PATH=os.path.dirname(sys.executable) + os.pathsep + "/usr/bin/nonexistent")
    done = engine("slurm", "submit", str(config), "--run-id", "x", "--runs-dir", str(tmp_path / "runs"),
                  "--time", "30", env=env)
    assert done.returncode == EXIT_BAD_INPUT and "sbatch is not on the PATH" in done.stderr, done.stderr
    assert not (tmp_path / "runs" / "x").exists()


def test_commands_reach_an_engine_through_the_run_directory(tmp_path):
    """The channel for an engine on another host, forced on this one (send --via file). The run
    directory is prepared as `slurm submit` leaves it; a command file left there before the
    engine started is answered as stale, not obeyed."""
    run = tmp_path / "runs" / "files"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(CONFIG)
    stale = command_files.post(run, "stop")  # nobody was there to obey it
    proc = start_engine("resume", str(run), "--or-start")
    try:
        wait_for(lambda: status_of(run).get("step", 0) >= 3, what="training")
        paused = engine("send", str(run), "pause", "--via", "file")
        assert paused.returncode == 0, paused.stderr
        reply = json.loads(paused.stdout)
        assert reply["ok"] and reply["state"] == "paused"
        status = json.loads(engine("send", str(run), "status", "--via", "file").stdout)
        assert status["state"] == "paused" and status["step"] == reply["step"]
        refused = engine("send", str(run), "requeue", "--via", "file")
        assert refused.returncode == 1 and "not a Slurm job" in json.loads(refused.stdout)["error"]
        stopped = json.loads(engine("send", str(run), "stop", "--via", "file").stdout)
        assert stopped["ok"] and stopped["state"] == "stopped" and stopped["step"] == reply["step"]
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == EXIT_STOPPED
    replies = [e for e in events_of(run) if e["type"] == "command_reply"]
    assert [e["cmd"] for e in replies] == ["stop", "pause", "status", "requeue", "stop"]
    assert replies[0]["id"] == stale and replies[0]["reply"] == {
        "ok": False, "error": "stale: written before this engine started"}
    assert not list((run / "commands").glob("*.json")), "every command file was taken"


def test_resume_or_start_trains_a_prepared_run_directory_from_step_0_then_resumes_it(config, tmp_path):
    run = tmp_path / "runs" / "prepared"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(CONFIG.replace("epochs = 1000", "epochs = 1\nmax_steps = 20"))
    first = run_engine("resume", str(run), "--or-start")
    assert first.returncode == 0, first.stderr
    assert status_of(run)["state"] == "finished" and status_of(run)["step"] == 20
    assert not [e for e in events_of(run) if e["type"] == "resume"]
    refused = run_engine("resume", str(tmp_path / "runs" / "prepared"), "--set", "train.max_steps=30")
    assert refused.returncode == 0, refused.stderr  # now it has a checkpoint: an ordinary resume
    assert [e["step"] for e in events_of(run) if e["type"] == "resume"] == [20]
