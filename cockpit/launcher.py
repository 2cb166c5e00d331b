"""Start engines without importing torch: `cockpit-engine ... --detach` in a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Launch:
    """The outcome of starting a detached engine."""

    code: int
    run: Path | None
    message: str


def _engine(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", *args]


def _run(cmd: list[str]) -> Launch:
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    match = re.search(r"started run directory: (.+?) \(engine pid", done.stdout)
    run = Path(match.group(1)) if match else None
    message = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return Launch(done.returncode, run, "\n".join(message[-6:]))


def start_demo(runs_root: Path, overrides: list[str], gpt: bool = False) -> Launch:
    """The built-in demo (or the language-model one), detached."""
    sets = [f"--set={s}" for s in overrides]
    return _run(_engine("demo", *(["--gpt"] if gpt else []), "--detach", "--runs-dir", str(runs_root), *sets))


def start_run(config: Path, runs_root: Path, overrides: list[str] = ()) -> Launch:
    """A new run from a config file, detached."""
    sets = [f"--set={s}" for s in overrides]
    return _run(_engine("run", str(config), "--detach", "--runs-dir", str(runs_root), *sets))


#: Arguments every cockpit-started quantization adds (fewer timed runs than the command's
#: default: the cockpit user waits for it).
QUANTIZE_ARGS = ["--repeats", "10"]


def quantize_run(run: Path, mode: str) -> Launch:
    """`cockpit-engine quantize RUN --mode MODE` to completion (tens of seconds: it compiles);
    the message is the report table, or the error."""
    done = subprocess.run(_engine("quantize", str(run), "--mode", mode, *QUANTIZE_ARGS),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode == 0:
        return Launch(0, run, done.stdout.strip())
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith(("W1", "I1"))]
    return Launch(done.returncode, run, "\n".join(lines[-6:]))


#: Arguments every cockpit-started compress job adds to `--detach` (none: the command's defaults,
#: the half-width preset, two seeds, each student as long as its config says).
COMPRESS_ARGS: list[str] = []


def compress_run(run: Path) -> Launch:
    """`cockpit-engine compress RUN --detach`: checked at once (bad input comes back with exit 2 and
    its message), then the job runs on in its own session, writing RUN/compress/progress.jsonl."""
    done = subprocess.run(_engine("compress", str(run), "--detach", *COMPRESS_ARGS),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    text = done.stdout.strip() if done.returncode == 0 else (done.stderr.strip() or done.stdout.strip())
    lines = [line for line in text.splitlines() if not line.startswith(("W1", "I1"))]
    return Launch(done.returncode, run, "\n".join(lines[-6:]))


def cloud_launch(config: str, instance_type: str, s3_uri: str, region: str = "", ami: str = "",
                 dry_run: bool = False) -> Launch:
    """`cockpit-engine cloud launch --spot CONFIG ...` to completion: an EC2 spot instance that
    trains the config and mirrors it to S3 (the message is the command's output, or its error)."""
    cmd = _engine("cloud", "launch", "--spot", config, "--instance-type", instance_type, "--s3", s3_uri,
                  *(["--region", region] if region else []), *(["--ami", ami] if ami else []),
                  *(["--dry-run"] if dry_run else []))
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    text = done.stdout.strip() if done.returncode == 0 else done.stderr.strip()
    return Launch(done.returncode, None, "\n".join(text.splitlines()[-12:]))


def resume_run(run: Path, overrides: list[str] = ()) -> Launch:
    """Resume a stopped, failed or preempted run from its newest valid checkpoint, detached
    (with `--set field=value` for each override: the doctor's remedy)."""
    return _run(_engine("resume", str(run), "--detach", *[f"--set={s}" for s in overrides]))


def start_sweep(config: str, runs_root: Path, trials: int | None = None, parallel: int = 1,
                storage: str | None = None, study: str | None = None) -> Launch:
    """`cockpit-engine sweep CONFIG [--trials N] --parallel K [--study S] --detach --runs-dir D`: a
    detached sweep worker (no --trials: the config's sweep.trials); the message is its `started sweep
    worker <study> (pid N, log <path>)` line, or its error."""
    cmd = _engine("sweep", config, *(["--trials", str(trials)] if trials else []), "--parallel", str(parallel),
                  *(["--study", study] if study else []), "--detach",
                  "--runs-dir", str(runs_root), *(["--storage", storage] if storage else []))
    return _sweep_worker(cmd)


def start_demo_sweep(runs_root: Path, overrides: list[str] = (), storage: str | None = None) -> Launch:
    """`cockpit-engine demo --sweep --detach --runs-dir D`: the demo sweep's worker, detached (a new
    study each time); the message is its `started sweep worker <study> ...` line, or its error."""
    return _sweep_worker(_engine("demo", "--sweep", "--detach", "--runs-dir", str(runs_root),
                                 *[f"--set={s}" for s in overrides], *(["--storage", storage] if storage else [])))


def _sweep_worker(cmd: list[str]) -> Launch:
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    text = done.stdout.strip() if done.returncode == 0 else (done.stderr.strip() or done.stdout.strip())
    return Launch(done.returncode, None, "\n".join(text.splitlines()[-6:]))


def slurm_submit_cmd(config: str, runs_root: Path, nodes: int = 1, gpus_per_node: int = 0, time: str = "1:00:00",
                     partition: str = "", run_id: str | None = None) -> list[str]:
    """`cockpit-engine slurm submit CONFIG [--run-id ID] --runs-dir D --nodes N --gpus-per-node G --time T
    [--partition P]` (a blank partition: the cluster's default)."""
    return _engine("slurm", "submit", config, *(["--run-id", run_id] if run_id else []),
                   "--runs-dir", str(runs_root), "--nodes", str(nodes), "--gpus-per-node", str(gpus_per_node),
                   "--time", time, *(["--partition", partition] if partition else []))


@dataclass
class Submitted:
    """The outcome of `cockpit-engine slurm submit`: exit code, job id and run directory (when
    submitted), and its message (the refusal on stderr, for exit 2: bad input)."""

    code: int
    job_id: int | None
    run: Path | None
    message: str


def slurm_submit(config: str, runs_root: Path, nodes: int = 1, gpus_per_node: int = 0, time: str = "1:00:00",
                 partition: str = "", run_id: str | None = None, env: dict[str, str] | None = None) -> Submitted:
    """Submit a config to Slurm as a batch job (the command prints {"job_id", "run", "script"} as JSON)."""
    import json

    cmd = slurm_submit_cmd(config, runs_root, nodes, gpus_per_node, time, partition, run_id)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env, timeout=300)
    except subprocess.TimeoutExpired:
        return Submitted(1, None, None, "cockpit-engine slurm submit: no answer within 300 s")
    job_id, run = None, None
    for line in done.stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and str(record.get("job_id", "")).isdigit():
            job_id, run = int(record["job_id"]), Path(str(record.get("run"))) if record.get("run") else None
    text = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return Submitted(done.returncode, job_id, run, "\n".join(text[-6:]))
