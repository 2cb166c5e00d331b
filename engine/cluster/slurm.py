"""Slurm: submit a run as a batch job, and the engine's side of a job's life (its facts, the requeue).

`cockpit-engine slurm submit` makes the run directory on the shared filesystem (its config, as
`run` would), writes `slurm/job.sh` there and submits it with sbatch. The job runs one srun task
per node, each a torchrun agent; the agents meet in a c10d rendezvous on the job's first node
and torchrun starts the ranks (why torchrun and not one Slurm task per rank: torchrun already
sets every variable the engine reads, watches its workers, tears the node down when one dies,
and is what the engine runs under on one machine; the rank mapping from SLURM_PROCID would be
ours to keep right). Every start of the job, the first and each requeue, runs `resume RUN
--or-start`: from the newest checkpoint, or from step 0 while there is none.

The job asks for USR1 before its time limit (`--signal=B:USR1@S`, `slurm.signal_lead_s`). `B:`
sends it to the batch shell only (torchrun's agent dies of a USR1), and the shell turns it into
a `requeue` command file in the run directory (contracts.command_files): rank 0, wherever it
runs, reads it at its next step boundary, every rank checkpoints at that step, and rank 0 runs
`scontrol requeue $SLURM_JOB_ID` once the run has ended in the state `requeued` (exit 3).
An admin's `scontrol requeue` (or a preemption that requeues) sends SIGTERM instead: the engine
stops with a checkpoint as for any SIGTERM, and Slurm starts the job again, which resumes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from contracts.atomic import write_json_atomic
from contracts.errors import BadInput
from contracts.events import newest_event

#: Where the job's files live inside the run directory.
FOLDER = "slurm"
SCRIPT = "job.sh"
RECORD = "job.json"
#: File systems every node of a cluster can mount (a run directory elsewhere is this host's own).
NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "glusterfs", "fuse.glusterfs",
              "fuse.sshfs", "9p", "virtiofs", "smb3", "cifs", "wekafs", "panfs", "fuse.juicefs", "fuse.weka", "pvfs2")


def under_slurm() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


def session_tag() -> str | None:
    """This start of the job (its id and restart count): a `requeue` file tagged with another
    start is stale."""
    if not under_slurm():
        return None
    return f"{os.environ['SLURM_JOB_ID']}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"


def job_facts(run: Path | None = None) -> dict[str, Any]:
    """The `slurm` event of this start of the job (rank 0, at start), with `waited_s`: the time
    from the submission (first start) or from the previous start's last event (a requeue) to
    now, the queue's wait and this start's set-up; where the run directory tells."""
    env = os.environ
    facts: dict[str, Any] = {
        "job_id": env.get("SLURM_JOB_ID"), "restart_count": int(env.get("SLURM_RESTART_COUNT") or 0),
        "nodes": int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1),
        "node_list": env.get("SLURM_JOB_NODELIST"), "partition": env.get("SLURM_JOB_PARTITION"),
        "host": socket.gethostname()}
    since = _last_words(run) if run is not None else None
    if since is None and run is not None:
        try:
            since = float(json.loads((run / FOLDER / RECORD).read_text())["submitted"])
        except (OSError, ValueError, KeyError, TypeError):
            since = None
    if since is not None:
        facts["waited_s"] = max(0.0, time.time() - since)
    return facts


def _last_words(run: Path) -> float | None:
    """The time of the last event of the run's previous start (None before the first)."""
    found = newest_event(run / "events.jsonl")
    return float(found["t"]) if found is not None and found.get("t") else None


def requeue_self(emit: Callable[..., Any], step: int, checkpoint: str | None) -> bool:
    """Rank 0, the run ended `requeued`: put this job back in the queue (scontrol requeue)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        emit("requeue", job_id=None, step=step, checkpoint=checkpoint, ok=False, error="not a Slurm job")
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        error = done.stderr.strip() if done.returncode else None
    except (OSError, subprocess.SubprocessError) as exc:
        error = str(exc)
    emit("requeue", job_id=job, step=step, checkpoint=checkpoint, ok=error is None,
         **({"error": f"scontrol requeue {job} failed: {error}; resume the run by hand"} if error else {}))
    return error is None


# ---- submit ------------------------------------------------------------------------------------

_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def time_seconds(value: str) -> int:
    """Slurm's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (in seconds)."""
    m = _TIME.match(value.strip())
    if not m:
        raise BadInput(f"--time {value!r}: expected Slurm's format (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
                       "D-HH:MM:SS)")
    d, a, b, c = (int(x) if x is not None else None for x in m.group("d", "a", "b", "c"))
    if d is not None:  # D-H[:M[:S]]
        return ((d * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
    if c is not None:
        return (a * 60 + b) * 60 + c
    if b is not None:
        return a * 60 + b
    return a * 60


@dataclass
class JobSpec:
    """What `slurm submit` asks Slurm for."""

    nodes: int = 1
    gpus_per_node: int = 0
    time: str = "1:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    sbatch_args: list[str] = field(default_factory=list)


def script(run: Path, run_id: str, spec: JobSpec, nproc_per_node: int, lead_s: int, python: str) -> str:
    """The batch script of one run (every start resumes it; USR1 asks the engine to requeue)."""
    q = shlex.quote
    lines = ["#!/bin/bash", f"#SBATCH --job-name=cockpit-{run_id}", f"#SBATCH --comment=cockpit-run:{run}",
             f"#SBATCH --nodes={spec.nodes}", "#SBATCH --ntasks-per-node=1"]
    if spec.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={spec.gpus_per_node}")
    lines.append(f"#SBATCH --time={spec.time}")
    for name in ("partition", "account", "qos", "constraint"):
        if getattr(spec, name):
            lines.append(f"#SBATCH --{name}={getattr(spec, name)}")
    lines += [f"#SBATCH --signal=B:USR1@{lead_s}", "#SBATCH --requeue", "#SBATCH --open-mode=append",
              f"#SBATCH --output={run}/{FOLDER}/job-%j.out"]
    lines += [f"#SBATCH {arg}" for arg in spec.sbatch_args]
    lines += [
        "",
        f"# Written by `cockpit-engine slurm submit` for run {run_id}. Each start of this job (the first,",
        "# and each requeue) resumes the run from its newest checkpoint.",
        "set -u",
        f"RUN={q(str(run))}",
        f"PYTHON={q(python)}",
        "export PYTHONUNBUFFERED=1",
        "",
        "# USR1: the time limit is near (or a preemption that requeues). Leave a requeue command in the",
        "# run directory: rank 0, on whichever node, checkpoints at its next step boundary, requeues",
        "# this job and exits.",
        "requeue() {",
        "  local id",
        "  printf -v id '%020d-usr1' \"$(date +%s%N)\"",
        "  mkdir -p \"$RUN/commands\"",
        "  printf '{\"cmd\": \"requeue\", \"reason\": \"Slurm sent USR1: the time limit is near\", "
        "\"slurm_run\": \"%s-%s\"}\\n' \"$SLURM_JOB_ID\" \"${SLURM_RESTART_COUNT:-0}\" > \"$RUN/commands/.$id.tmp\"",
        "  mv \"$RUN/commands/.$id.tmp\" \"$RUN/commands/$id.json\"",
        "  echo \"cockpit: USR1 at $(date -u +%FT%TZ): asked the engine to checkpoint and requeue\"",
        "}",
        "trap requeue USR1",
        "# SIGTERM (scontrol requeue, scancel, the time limit): Slurm sends it to the job step too; the",
        "# engine stops with a checkpoint. The shell keeps waiting for it.",
        "trap 'echo \"cockpit: SIGTERM at $(date -u +%FT%TZ)\"' TERM",
        "",
        "HEAD=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)",
        "PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))",
        "echo \"cockpit: job $SLURM_JOB_ID start ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST, rendezvous $HEAD:$PORT\"",
        "srun --ntasks-per-node=1 --kill-on-bad-exit=1 \\",
        f"  \"$PYTHON\" -m torch.distributed.run --nnodes=\"$SLURM_JOB_NUM_NODES\" --nproc-per-node={nproc_per_node} \\",
        "  --rdzv-backend=c10d --rdzv-endpoint=\"$HEAD:$PORT\" --rdzv-id=\"$SLURM_JOB_ID-${SLURM_RESTART_COUNT:-0}\" \\",
        "  --max-restarts=0 -m engine.cli resume \"$RUN\" --or-start &",
        "ENGINE=$!",
        "while true; do  # a trapped signal ends `wait` early: wait again until the engine is gone",
        "  wait \"$ENGINE\"",
        "  code=$?",
        "  kill -0 \"$ENGINE\" 2>/dev/null || break",
        "done",
        "exit \"$code\"",
        "",
    ]
    return "\n".join(lines)


def check_partition(name: str) -> None:
    done = subprocess.run(["scontrol", "show", "partition", name], capture_output=True, text=True)
    if done.returncode:
        known = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
        raise BadInput(f"--partition {name!r}: Slurm has no such partition "
                       f"(known: {', '.join(p.rstrip('*') for p in known) or 'none'})")


def fs_type(path: Path) -> str:
    """The file system type of the mount holding `path` (from /proc/mounts; '' if unknown)."""
    best, kind = "", ""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            point = parts[1].replace("\\040", " ")
            if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, parts[2]
    return kind


def check_shared(root: Path, partition: str | None) -> None:
    """A runs directory the compute nodes cannot see: on a local file system of this host, and
    this host is not one of the partition's nodes."""
    kind = fs_type(root)
    if not kind or kind in NETWORK_FS or kind.startswith("fuse"):
        return
    args = ["sinfo", "-h", "-N", "-o", "%N"] + (["-p", partition] if partition else [])
    done = subprocess.run(args, capture_output=True, text=True)
    nodes = set(done.stdout.split()) if done.returncode == 0 else set()
    here = {socket.gethostname(), socket.gethostname().split(".")[0]}
    if nodes and not nodes & here:
        raise BadInput(f"--runs-dir {str(root)!r} is on this host's own {kind} file system, which the compute "
                       f"nodes ({', '.join(sorted(nodes)[:5])}{', ...' if len(nodes) > 5 else ''}) cannot see; "
                       "put the runs directory on a shared file system (NFS, Lustre, GPFS, ...)")


def submit(cfg: Any, config_text: str, root: Path, run_id: str, spec: JobSpec, dry_run: bool,
           python: str = sys.executable) -> int:
    """Check, write the run directory and its script, sbatch it; print what happened."""
    lead = cfg.slurm.signal_lead_s
    limit = time_seconds(spec.time)
    if limit <= lead:
        raise BadInput(f"--time {spec.time} ({limit} s) is not longer than slurm.signal_lead_s = {lead}: the "
                       "time-limit warning would come before the job starts; ask for more time or a shorter lead")
    if spec.nodes < 1 or spec.gpus_per_node < 0:
        raise BadInput(f"--nodes {spec.nodes} / --gpus-per-node {spec.gpus_per_node}: expected at least 1 node "
                       "and 0 or more GPUs")
    nproc = spec.gpus_per_node or cfg.distributed.nproc
    run = root.resolve() / run_id
    text = script(run, run_id, spec, nproc, lead, python)
    if dry_run:
        print(text, end="")
        return 0
    if shutil.which("sbatch") is None:
        raise BadInput("sbatch is not on the PATH: run this on a Slurm login node (or add Slurm's bin folder to "
                       "PATH); nothing was submitted")
    if spec.partition:
        check_partition(spec.partition)
    root.mkdir(parents=True, exist_ok=True)
    check_shared(root, spec.partition)
    try:
        run.mkdir(parents=False, exist_ok=False)
    except FileExistsError:
        raise BadInput(f"--run-id {run_id!r}: {run} already exists; pick another id") from None
    try:
        (run / "config.toml").write_text(config_text, encoding="utf-8")
        (run / FOLDER).mkdir()
        (run / FOLDER / SCRIPT).write_text(text, encoding="utf-8")
        done = subprocess.run(["sbatch", "--parsable", str(run / FOLDER / SCRIPT)], capture_output=True, text=True,
                              cwd=run)
        if done.returncode:
            raise BadInput(f"sbatch refused the job: {done.stderr.strip() or done.stdout.strip()}; nothing was "
                           "submitted")
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)  # nothing half-made stays behind
        raise
    job_id = done.stdout.strip().split(";")[0]
    write_json_atomic(run / FOLDER / RECORD, {
        "job_id": job_id, "script": f"{FOLDER}/{SCRIPT}", "submitted": time.time(), "nodes": spec.nodes,
        "gpus_per_node": spec.gpus_per_node, "nproc_per_node": nproc, "time": spec.time, "time_s": limit,
        "partition": spec.partition, "signal_lead_s": lead, "output": f"{FOLDER}/job-{job_id}.out"})
    print(json.dumps({"job_id": job_id, "run": str(run), "script": str(run / FOLDER / SCRIPT)}))
    print(f"cockpit-engine: submitted job {job_id} for run {run_id}; watch it with `cockpit {run}` or "
          f"`squeue -j {job_id}`; its output is {run / FOLDER / f'job-{job_id}.out'}", file=sys.stderr)
    return 0
