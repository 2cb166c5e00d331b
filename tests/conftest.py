"""Shared helpers: run the real `cockpit-engine` in a subprocess and read what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import warm
from slurm_fixture import slurm  # noqa: F401  (the real Slurm cluster fixture)

ROOT = Path(__file__).resolve().parents[1]

# A tiny, quick, fully featured run: workers, random augmentation, mid-epoch checkpoints.
TINY = """
[model]
name = "small_cnn"
factory_args = { width = 8 }
[data]
name = "digits"
num_workers = 2
[data.augment]
random_crop_padding = 1
horizontal_flip = true
[optim]
name = "sgd"
lr = 0.05
nesterov = true
[schedule]
name = "cosine"
warmup_steps = 10
[train]
epochs = 3
batch_size = 32
[checkpoint]
every_steps = 5
keep_last = 3
[logging]
every_steps = 1
max_step_events_per_s = 100000
status_every_s = 0.2
"""


# Nothing leaves the machine: boto3 gets dummy credentials, every AWS API a closed loopback port
# (tests that need S3 or EC2 point AWS_ENDPOINT_URL at their own moto server), and the EC2
# metadata service is off unless a test starts a loopback one and points the endpoint at it.
OFFLINE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing-not-a-key", "AWS_SECRET_ACCESS_KEY": "testing-not-a-secret",
    "AWS_SESSION_TOKEN": "testing-not-a-token", "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
os.environ.update(OFFLINE_AWS)
os.environ.pop("AWS_PROFILE", None)

# Under pytest-xdist each worker's own torch (the in-process tests) keeps to one thread, as the
# engines the tests start do (engine_env): the workers share the cores rather than oversubscribe them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def engine_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", *args]


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_engine(*args: str, cwd: Path | None = None, timeout: float = 240,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run cockpit-engine to completion (warm: tests/warm.py) and return the completed process."""
    if warm.cold():
        return subprocess.run(engine_cmd(*args), cwd=cwd, env=env or engine_env(), capture_output=True,
                              text=True, timeout=timeout)
    return warm.run(args, cwd=cwd, env=env or engine_env(), timeout=timeout)


def popen_engine(args, **popen_kwargs):
    """`subprocess.Popen(engine_cmd(*args), **popen_kwargs)`, warm unless COCKPIT_TESTS_COLD=1.

    The process has Popen's interface and the engine's own pid; `env` defaults to engine_env().
    """
    popen_kwargs.setdefault("env", engine_env())
    if warm.cold():
        return subprocess.Popen(engine_cmd(*args), **popen_kwargs)
    return warm.WarmProcess(args, **popen_kwargs)


def start_engine(*args: str, cwd: Path | None = None):
    """Start cockpit-engine in the background."""
    return popen_engine(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def only_run(runs: Path) -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    """Poll until predicate() is truthy (event-driven waits are in the code under test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def status_of(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def events_of(run: Path) -> list[dict]:
    from contracts.events import read_events

    with open(run / "events.jsonl", encoding="utf-8") as f:
        return list(read_events(f))


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def run_engines(jobs: dict[str, dict], timeout: float = 240) -> dict[str, subprocess.CompletedProcess]:
    """Run independent cockpit-engine commands side by side (one per core) and wait for all.

    Each engine uses one core (OMP_NUM_THREADS=1) and spends most of its few seconds
    importing torch, so running them together is what keeps the suite quick. `jobs` maps a
    name to {"args": [...], "cwd": Path (optional), "env": dict (optional, default engine_env())};
    they start in the order given, so list the slow ones first.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(job: dict) -> subprocess.CompletedProcess:
        return run_engine(*job["args"], cwd=job.get("cwd"), env=job.get("env"), timeout=timeout)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(one, job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="session", autouse=True)
def no_engine_outlives_the_suite(tmp_path_factory):
    """Safety net: detached engines a failing test left behind are killed at the end.

    It also starts this worker's warm engine server, whose imports then overlap the first tests.
    """
    warm.start_server(engine_env())
    yield
    import signal

    for status_file in tmp_path_factory.getbasetemp().rglob("status.json"):
        status = status_of(status_file.parent)
        pid = status.get("pid")
        if status.get("state") in ("stopped", "finished", "failed") or not isinstance(pid, int) or pid <= 0:
            continue
        try:  # only if that pid is still an engine (pids get reused)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"engine.cli" in cmdline or b"warm.py" in cmdline:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# The files that take longest (measured with --durations on 2 cores), slowest first. Under
# pytest-xdist's --dist loadfile a file is one unit of work and units go out in collection order:
# handing the long ones out first lets the short ones fill in, so the workers finish together.
SLOWEST_FILES = [
    "test_slurm_requeue.py",  # mostly waiting on Slurm (a time limit, a requeue): first, beside the others
    "test_pipeline.py", "test_tensor_parallel.py", "test_quantize.py", "test_sweep.py", "test_sweep_objectives.py", "test_distributed.py", "test_fsdp.py", "test_trials_screen.py",
    "test_compress.py", "test_cockpit_pilot.py", "test_doctor.py", "test_spot.py", "test_s3.py", "test_distill.py", "test_goodput.py",
    "test_alerts.py", "test_hang.py", "test_target_command.py",
]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise
