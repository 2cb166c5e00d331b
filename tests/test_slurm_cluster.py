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


# -- contracts/slurm.py against the real cluster ------------------------------------------------

import pytest  # noqa: E402

from contracts import slurm as slurm_api  # noqa: E402


def job_of(slurm, job_id: int):
    found = slurm_api.jobs(env=slurm.env, job_ids=[job_id])
    return found[0] if found else None


def gone(slurm, job_id: int) -> bool:
    job = job_of(slurm, job_id)
    return job is None or job.state in ("CANCELLED", "COMPLETED")


def test_a_running_job_has_its_time_left_and_its_run_directory(slurm, tmp_path: Path):
    run_dir = tmp_path / "runs" / "r1"
    job_id = slurm.submit("--wrap", "sleep 300", "--time=5", f"--comment=cockpit-run:{run_dir}",
                          "--job-name=cockpit-r1")
    try:
        job = wait_for(lambda: (j := job_of(slurm, job_id)) and j.state == "RUNNING" and j, timeout=120,
                       what="the job to run")
        assert job.name == "cockpit-r1" and job.run_id == "r1"
        assert job.run_dir == run_dir and job.comment == f"cockpit-run:{run_dir}"
        assert job.time_limit_s == 300
        assert 0 < job.time_left_s <= 300
        assert job.nodes == 1 and job.node_list == slurm.node and job.partition == slurm.partition
        assert job.work_dir == str(slurm.folder / "jobs")
        assert job.restart_count == 0 and job.label == "RUNNING"
        assert slurm_api.jobs(env=slurm.env, user="nobody-at-all") == []
    finally:
        slurm_api.cancel(job_id, env=slurm.env)
    wait_for(lambda: gone(slurm, job_id), timeout=60, what="the job to be cancelled")


def test_a_job_waits_pending_with_its_reason_while_the_node_is_busy_and_cancel_ends_it(slurm):
    busy = slurm.submit("--wrap", "sleep 300", "--exclusive", "--job-name=busy")
    try:
        wait_for(lambda: (j := job_of(slurm, busy)) and j.state == "RUNNING", timeout=120, what="the node busy")
        waiting = slurm.submit("--wrap", "sleep 1", "--job-name=cockpit-waiting", "--time=2")
        job = wait_for(lambda: (j := job_of(slurm, waiting)) and j.state == "PENDING" and j.reason and j,
                       timeout=120, what="a pending reason")
        assert job.reason in ("Resources", "Priority"), job.reason
        assert job.pending and job.label == f"PENDING ({job.reason})"
        assert job.time_left_s == 120  # not started: its whole limit is left
        slurm_api.cancel(waiting, env=slurm.env)
        wait_for(lambda: gone(slurm, waiting), timeout=60, what="the pending job cancelled")
    finally:
        slurm.run("scancel", str(busy))
    wait_for(lambda: gone(slurm, busy), timeout=60, what="the busy job cancelled")


def test_a_failing_squeue_names_the_command_and_its_error(slurm, tmp_path: Path):
    bad = tmp_path / "bad-slurm.conf"  # (a missing file is not quick: squeue then looks for a configless server)
    bad.write_text("NoSuchKey=1\n")
    env = dict(slurm.env, SLURM_CONF=str(bad))
    with pytest.raises(slurm_api.SlurmError, match="squeue --json failed .*unrecognized key: NoSuchKey"):
        slurm_api.jobs(env=env)
    with pytest.raises(slurm_api.SlurmError, match="scancel 999999: .*Invalid job id"):
        slurm_api.cancel(999999, env=slurm.env)
    assert slurm_api.available(slurm.env)
    assert not slurm_api.available({"PATH": str(tmp_path)})
    with pytest.raises(slurm_api.SlurmError, match="not found on PATH"):
        slurm_api.jobs(env={"PATH": str(tmp_path)})


def test_both_json_layouts_read_alike():
    """22.05 writes plain numbers and a string state; 23.02 and newer objects and a list."""
    old = {"job_id": 7, "name": "cockpit-a", "job_state": "RUNNING", "state_reason": "None", "node_count": 2,
           "nodes": "n[1-2]", "partition": "gpu", "time_limit": 10, "start_time": 1000, "end_time": 1600,
           "current_working_directory": "/w", "comment": "cockpit-run:/runs/a", "restart_cnt": 1,
           "user_name": "me"}
    new = dict(old, job_state=["RUNNING"], node_count={"set": True, "infinite": False, "number": 2},
               time_limit={"set": True, "infinite": False, "number": 10},
               start_time={"set": True, "infinite": False, "number": 1000},
               end_time={"set": True, "infinite": False, "number": 1600},
               restart_cnt=1)
    a, b = slurm_api.parse_job(old, now=1100), slurm_api.parse_job(new, now=1100)
    assert a == b
    assert (a.state, a.reason, a.nodes, a.time_limit_s, a.time_left_s, a.restart_count) == ("RUNNING", "", 2, 600, 500, 1)
    assert a.run_dir == Path("/runs/a") and a.label == "RUNNING requeued 1x"
    pending = slurm_api.parse_job(dict(new, job_state=["PENDING", "REQUEUED"], state_reason="BeginTime",
                                       time_limit={"set": True, "infinite": True, "number": 0}), now=1100)
    assert pending.state == "REQUEUED" and pending.reason == "BeginTime" and pending.time_limit_s is None
    assert pending.pending and pending.time_left_s is None
    assert slurm_api.parse_job(dict(old, time_limit=0xFFFFFFFF)).time_limit_s is None


def test_a_requeued_job_shows_its_requeue_then_runs_again(slurm):
    """`scontrol requeue` (an admin's preemption): the job waits again (BeginTime: Slurm holds it
    for AuthInfo's cred_expire, 10 s here) with restart count 1, then runs again."""
    out = slurm.folder / "jobs" / "requeue-%j.out"
    job_id = slurm.submit("--requeue", "--wrap", "echo start $SLURM_RESTART_COUNT; sleep 300", f"--output={out}")
    try:
        wait_for(lambda: (j := job_of(slurm, job_id)) and j.state == "RUNNING", timeout=120, what="the first run")
        done = slurm.run("scontrol", "requeue", str(job_id))
        assert done.returncode == 0, done.stderr
        seen: set[str] = set()

        def again():
            job = job_of(slurm, job_id)
            if job is not None and job.restart_count == 1:
                seen.add(job.label)
                return job.state == "RUNNING" and job
            return None

        job = wait_for(again, timeout=300, what="the requeued job to run again")
        assert job.label == "RUNNING requeued 1x"
        assert any(label.startswith(("PENDING", "REQUEUED")) and label.endswith("requeued 1x") for label in seen), seen
        path = Path(str(out).replace("%j", str(job_id)))
        wait_for(lambda: path.is_file() and "start 1" in path.read_text(), timeout=60, what="the second start")
    finally:
        slurm.run("scancel", str(job_id))
