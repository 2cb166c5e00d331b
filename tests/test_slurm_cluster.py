"""The test Slurm cluster works (tests/slurm_cluster.py), and contracts/slurm.py reads it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import wait_for


def test_a_batch_job_runs_and_writes_its_output(slurm):
    out = slurm.folder / "jobs" / "hi-%j.out"
    job = slurm.submit("--wrap", "echo hi", f"--output={out}")
    path = Path(str(out).replace("%j", str(job)))
    wait_for(lambda: path.is_file() and path.read_text().strip() == "hi", timeout=120, what="the job's output")


def test_squeue_json_parses(slurm):
    job = slurm.submit("--wrap", "sleep 30", "--job-name=json-check")
    try:
        done = slurm.run("squeue", "--json")
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert isinstance(data["jobs"], list)
        assert job in [j["job_id"] for j in data["jobs"]]
    finally:
        slurm.run("scancel", str(job))
