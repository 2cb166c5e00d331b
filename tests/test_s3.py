"""S3 checkpoints against moto's server on loopback: background multipart uploads, the pointer,
the lease (conditional writes), and resume from S3 into an empty directory, exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import popen_engine, TINY, events_of, only_run, run_engine, run_engines, status_of, wait_for
from engine.checkpoint.store import load
from contracts.errors import BadInput
from contracts.events import EXIT_BAD_INPUT, EXIT_FINISHED, EXIT_STOPPED
from moto_server import aws_env, bucket, moto  # noqa: F401 - moto is a fixture

# ~9 MB checkpoints (an MLP with 1.1M weights plus SGD momentum): two 5 MiB parts when uploaded
BIG = TINY.replace('name = "small_cnn"\nfactory_args = { width = 8 }', 'name = "mlp"\nfactory_args = { hidden = [1024, 1024] }')
BIG = BIG.replace("every_steps = 5\n", "every_steps = 10\n")
MULTIPART = {"COCKPIT_S3_MULTIPART_BYTES": str(1024 * 1024)}


def s3():
    import boto3

    return boto3.client("s3")


def get_json(bucket_name: str, key: str) -> dict:
    return json.loads(s3().get_object(Bucket=bucket_name, Key=key)["Body"].read())


def test_bad_s3_uris_exit_2_naming_the_field_and_write_nothing(tmp_path: Path, tiny_config: Path):
    for bad in ("http://bucket/runs", "s3://B_ad/runs", "s3://AKIAEXAMPLE:secret@bucket/runs", "s3://bucket/a//b"):
        done = run_engine("run", str(tiny_config), "--runs-dir", str(tmp_path / "runs"),
                          "--set", f"checkpoint.s3_uri='{bad}'")
        assert done.returncode == EXIT_BAD_INPUT, done.stderr
        assert "checkpoint.s3_uri" in done.stderr and "s3://bucket/prefix" in done.stderr
        assert "secret" not in done.stderr  # a URI with user info is never echoed
        assert not (tmp_path / "runs").exists()
    done = run_engine("resume", "some-run", "--s3", "s3://x", "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == EXIT_BAD_INPUT and "--s3 's3://x'" in done.stderr


def test_lease_is_taken_renewed_refused_and_taken_over_with_conditional_writes(moto: str):
    from engine.cloud.lease import Lease, read
    from engine.cloud.s3 import S3Location

    where = S3Location(bucket("lease-unit"), "runs/r1")
    client = s3()
    first = Lease(client, where, ttl_s=30).acquire("run 'r1'")
    etag = first.etag
    assert first.renew() and first.etag != etag  # IfMatch on our own ETag
    with pytest.raises(BadInput) as refused:
        Lease(client, where, ttl_s=30).acquire("run 'r1'")
    assert first.owner in str(refused.value) and "expires" in str(refused.value)
    # the owner dies (stops renewing) and its lease runs out: the next engine takes over
    first._stop.set()
    stale = read(client, where)
    client.put_object(Bucket=where.bucket, Key=where.key("lease"), IfMatch=stale.etag,
                      Body=json.dumps({"owner": first.owner, "host": "h", "expires_at": time.time() - 1}).encode())
    second = Lease(client, where, ttl_s=30).acquire("run 'r1'")
    assert read(client, where).owner == second.owner
    assert not first.renew() and "taken over" in first.lost and second.owner in first.lost
    second.release()
    assert read(client, where).expired  # released: the next engine need not wait
    third = Lease(client, where, ttl_s=30).acquire("run 'r1'")
    third.release()
    # an engine of this machine that was killed a moment ago: its unexpired lease is not waited for
    import socket

    gone = subprocess.Popen(["true"])
    gone.wait()
    client.put_object(Bucket=where.bucket, Key=where.key("lease"), Body=json.dumps(
        {"owner": "killed", "host": socket.gethostname(), "pid": gone.pid, "expires_at": time.time() + 600}).encode())
    fourth = Lease(client, where, ttl_s=30).acquire("run 'r1'")
    assert read(client, where).owner == fourth.owner
    fourth.release()
    # a relaunched instance waits (resume --wait-lease) for the interrupted one to let go
    from engine.cloud.lease import refuse_if_held

    client.put_object(Bucket=where.bucket, Key=where.key("lease"), Body=json.dumps(
        {"owner": "leaving", "host": "old-instance", "expires_at": time.time() + 1.5}).encode())
    with pytest.raises(BadInput):
        refuse_if_held(client, where, "resume 'r1'", wait_s=0.3)
    start = time.monotonic()
    refuse_if_held(client, where, "resume 'r1'", wait_s=20)
    assert 0.5 < time.monotonic() - start < 10


def test_a_live_lease_refuses_the_run_and_an_expired_one_is_taken_over(tmp_path: Path, moto: str):
    name = bucket("lease-engine")
    uri = f"s3://{name}/runs"
    (tmp_path / "tiny.toml").write_text(TINY)
    now = time.time()
    for run_id, expires in (("held", now + 600), ("dead", now - 5)):
        s3().put_object(Bucket=name, Key=f"runs/{run_id}/lease", Body=json.dumps(
            {"owner": f"other-host:4242:{run_id}", "host": "other-host", "expires_at": expires}).encode())
    common = ["--runs-dir", str(tmp_path / "runs"), "--set", f"checkpoint.s3_uri='{uri}'", "--set", "train.max_steps=3"]
    done = run_engines({
        "dead": {"args": ["run", str(tmp_path / "tiny.toml"), "--run-id", "dead", *common], "env": aws_env(moto)},
        "held": {"args": ["run", str(tmp_path / "tiny.toml"), "--run-id", "held", *common], "env": aws_env(moto)},
        "held-resume": {"args": ["resume", "held", "--s3", uri, "--runs-dir", str(tmp_path / "elsewhere")],
                        "env": aws_env(moto)},
    })
    for key in ("held", "held-resume"):
        assert done[key].returncode == EXIT_BAD_INPUT, done[key].stderr
        assert "other-host:4242:held" in done[key].stderr and "lease expires" in done[key].stderr
    assert not (tmp_path / "runs" / "held").exists() and not (tmp_path / "elsewhere").exists()
    assert done["dead"].returncode == EXIT_FINISHED, done["dead"].stderr
    lease = get_json(name, "runs/dead/lease")
    assert lease["owner"] != "other-host:4242:dead" and lease["expires_at"] == 0.0  # taken, then released
    assert get_json(name, "runs/dead/checkpoints/latest")["step"] == 3


def test_a_spot_notice_uploads_the_stop_checkpoint_multipart_and_a_new_instance_resumes_from_s3_exactly(
        tmp_path: Path, moto: str):
    from imds_server import ImdsServer

    name = bucket("ckpt")
    uri = f"s3://{name}/runs"
    (tmp_path / "big.toml").write_text(BIG + "[spot]\npoll_s = 0.1\n")
    cut_runs, fresh_runs = tmp_path / "cut", tmp_path / "fresh"
    env = aws_env(moto, **MULTIPART)
    with ImdsServer() as imds:  # the first instance: spot, its metadata service on loopback
        proc = popen_engine(["run", str(tmp_path / "big.toml"), "--runs-dir", str(cut_runs),
                                           "--run-id", "spot-1", "--set", f"checkpoint.s3_uri='{uri}'"],
                                env={**env, "AWS_EC2_METADATA_DISABLED": "false",
                                     "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        run = cut_runs / "spot-1"
        wait_for(lambda: status_of(run).get("step", 0) >= 30, what="step 30")
        imds.notice(120)  # AWS's two-minute warning
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, err
    assert status_of(run)["state"] == "preempted"
    stopped_at = status_of(run)["step"]
    assert stopped_at < 135

    # close() waited for the preemption checkpoint's upload: S3's pointer names it, in two parts
    pointer = get_json(name, "runs/spot-1/checkpoints/latest")
    assert pointer == {"file": f"step-{stopped_at:08d}.pt", "step": stopped_at}
    head = s3().head_object(Bucket=name, Key=f"runs/spot-1/checkpoints/{pointer['file']}")
    assert head["ContentLength"] > 5 * 1024 * 1024 and head["ETag"].strip('"').endswith("-2")  # multipart, 2 parts
    uploads = [e for e in events_of(run) if e["type"] == "s3" and e.get("what") == "checkpoint"]
    assert uploads and all(e["ok"] for e in uploads) and uploads[-1]["step"] == stopped_at
    assert uploads[-1]["multipart"] is True
    # every upload was reported after its checkpoint: the pointer never ran ahead of a file
    checkpoints = {e["step"]: e["t"] for e in events_of(run) if e["type"] == "checkpoint"}
    assert all(e["t"] >= checkpoints[e["step"]] for e in uploads)
    keys = {o["Key"] for o in s3().list_objects_v2(Bucket=name, Prefix="runs/spot-1/")["Contents"]}
    assert {"runs/spot-1/config.toml", "runs/spot-1/events.jsonl", "runs/spot-1/engine.log"} <= keys
    stored = [k for k in keys if "/checkpoints/step-" in k]
    assert 1 <= len(stored) <= 3 + 1  # keep_last (plus the best) in S3 too
    s3_events = s3().get_object(Bucket=name, Key="runs/spot-1/events.jsonl")["Body"].read().decode()
    assert '"state": "preempted"' in s3_events.replace('"state":"preempted"', '"state": "preempted"')

    # a new instance: no local directory at all, only the run id and the bucket (beside it, the
    # uninterrupted reference run)
    done = run_engines({"resumed": {"args": ["resume", "spot-1", "--s3", uri, "--runs-dir", str(fresh_runs)], "env": env},
                        "reference": {"args": ["run", str(tmp_path / "big.toml"), "--runs-dir", str(tmp_path / "ref")]}})
    for job in done.values():
        assert job.returncode == EXIT_FINISHED, job.stderr
    fresh = fresh_runs / "spot-1"
    ours = load(fresh / "checkpoints" / "step-00000135.pt")
    ref = load(sorted((only_run(tmp_path / "ref") / "checkpoints").glob("step-*.pt"))[-1])
    assert ours["step"] == ref["step"] == 135
    for key, tensor in ref["model"].items():
        assert torch.equal(ours["model"][key], tensor), f"weights differ at {key}"
    history = events_of(fresh)
    assert any(e["type"] == "state" and e["state"] == "preempted" for e in history)  # the first instance's
    assert [e for e in history if e["type"] == "resume"][-1]["step"] == stopped_at
    assert get_json(name, "runs/spot-1/checkpoints/latest")["step"] == 135

    # the first instance's directory is older than S3 now: resuming it pulls step 135
    again = run_engine("resume", str(run), env=env)
    assert again.returncode == EXIT_FINISHED, again.stderr
    assert json.loads((run / "checkpoints" / "latest").read_text())["step"] == 135
    assert torch.equal(load(run / "checkpoints" / "step-00000135.pt")["model"][key], ref["model"][key])


def test_resume_without_a_run_in_s3_or_locally_exits_2(tmp_path: Path, moto: str):
    name = bucket("empty-bucket")
    done = run_engine("resume", "nothing-here", "--s3", f"s3://{name}/runs", "--runs-dir", str(tmp_path / "runs"),
                      env=aws_env(moto))
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert "no run in s3://empty-bucket/runs/nothing-here" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_a_sharded_checkpoint_directory_uploads_file_by_file(tmp_path: Path, moto: str):
    from engine.cloud.mirror import S3Mirror
    from engine.cloud.pull import pull
    from engine.cloud.s3 import S3Location

    name = bucket("shards")
    run = tmp_path / "r"
    shards = run / "checkpoints" / "step-00000007.shards"
    shards.mkdir(parents=True)
    for rank in range(2):
        (shards / f"rank-{rank:05d}.pt").write_bytes(os.urandom(1000 + rank))
    (run / "config.toml").write_text("[train]\nepochs = 1\n")
    (run / "events.jsonl").write_text('{"v": 1, "t": 1, "type": "log", "level": "info", "message": "hi"}\n')
    reports = []
    where = S3Location(name, "runs/r")
    mirror = S3Mirror(run, where, lambda kind, **f: reports.append(f), keep_last=3, wait_s=30)
    mirror.emit({"type": "checkpoint", "path": str(shards), "step": 7, "best": True})
    shutil.rmtree(shards)  # pruned locally right away: the staged hard links still upload
    mirror.close()
    assert [r["step"] for r in reports if r.get("what") == "checkpoint" and r["ok"]] == [7]
    keys = {o["Key"] for o in s3().list_objects_v2(Bucket=name, Prefix="runs/r/checkpoints/")["Contents"]}
    assert keys == {"runs/r/checkpoints/step-00000007.shards/rank-00000.pt",
                    "runs/r/checkpoints/step-00000007.shards/rank-00001.pt",
                    "runs/r/checkpoints/latest", "runs/r/checkpoints/best"}
    assert not (run / ".s3-staging" / "step-00000007.shards").exists()
    pulled = tmp_path / "new"
    assert "step-00000007.shards" in pull(pulled, where, "resume 'r'")
    assert sorted(p.name for p in (pulled / "checkpoints" / "step-00000007.shards").iterdir()) == [
        "rank-00000.pt", "rank-00001.pt"]
    assert (pulled / "config.toml").read_text() == "[train]\nepochs = 1\n"


def test_unreachable_s3_exits_2_naming_it_and_a_plain_run_never_imports_boto3(tmp_path: Path):
    done = run_engine("resume", "r1", "--s3", "s3://some-bucket/runs", "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert "S3 at s3://some-bucket/runs/r1 could not be used" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()
    probe = ("import sys, engine.cli, engine.run.session, engine.cloud.pull, engine.cloud.mirror, engine.cloud.launch; "
             "engine.cli.build_parser(); print('boto3' in sys.modules, 'botocore' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=aws_env("http://127.0.0.1:9"))
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_an_engine_whose_lease_was_taken_over_stops_and_leaves_the_new_owner_alone(tmp_path: Path, moto: str):
    name = bucket("lease-lost")
    (tmp_path / "tiny.toml").write_text(TINY)
    proc = popen_engine(["run", str(tmp_path / "tiny.toml"), "--runs-dir", str(tmp_path / "runs"),
                                       "--run-id", "r", "--set", f"checkpoint.s3_uri='s3://{name}/runs'",
                                       "--set", "checkpoint.s3_lease_s=5", "--set", "train.epochs=30"],
                            env=aws_env(moto), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "runs" / "r"
    wait_for(lambda: status_of(run).get("step", 0) >= 10, what="step 10")
    usurper = json.dumps({"owner": "usurper:1:x", "host": "usurper", "expires_at": time.time() + 600}).encode()
    s3().put_object(Bucket=name, Key="runs/r/lease", Body=usurper)  # as if ours had expired and been taken
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, err
    final = [e for e in events_of(run) if e["type"] == "state"][-1]
    assert final["state"] == "stopped" and "lease was lost" in final["reason"] and "usurper:1:x" in final["reason"]
    assert any(e["type"] == "s3" and e["action"] == "lease_lost" for e in events_of(run))
    assert get_json(name, "runs/r/lease")["owner"] == "usurper:1:x"  # never overwritten, never released
    assert get_json(name, "runs/r/checkpoints/latest")["step"] < final["step"]  # the pointer stayed put


class SlowS3:
    """A stand-in client: records uploads; each waits for `gate` (set: no waiting)."""

    def __init__(self):
        import threading

        self.gate, self.uploaded = threading.Event(), []

    def upload_file(self, local, bucket_name, key, Config=None):  # noqa: N803 - boto3's spelling
        self.gate.wait()
        self.uploaded.append(key)

    def put_object(self, **kw):
        self.uploaded.append(kw["Key"])

    def get_paginator(self, name):
        return type("P", (), {"paginate": lambda self, **kw: [{"Contents": []}]})()

    def get_object(self, **kw):
        raise KeyError("no best")


def test_uploads_never_block_the_caller_a_newer_checkpoint_replaces_a_waiting_one_and_close_is_bounded(tmp_path: Path):
    from engine.cloud.mirror import S3Mirror
    from engine.cloud.s3 import S3Location

    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text("")
    (run / "events.jsonl").write_text("")
    for step in (5, 10, 15):
        (run / "checkpoints" / f"step-{step:08d}.pt").write_bytes(b"x" * 100)
    client, reports = SlowS3(), []
    mirror = S3Mirror(run, S3Location("b", "runs/r"), lambda kind, **f: reports.append(f), 3, 0.3, s3=client)
    start = time.perf_counter()
    for step, best in ((5, True), (10, False), (15, False)):  # the config upload is still in flight
        mirror.emit({"type": "checkpoint", "path": str(run / "checkpoints" / f"step-{step:08d}.pt"), "step": step,
                     "best": best})
    assert time.perf_counter() - start < 0.5  # staged and queued, never uploaded on the caller's thread
    assert [j.name for j in mirror.queue] == ["step-00000005.pt", "step-00000015.pt"]  # 10 was superseded
    mirror.close()  # 0.3 s, then gives up and says so
    (give_up,) = [r for r in reports if r.get("action") == "give_up"]
    assert give_up["pending"] == ["step-00000005.pt", "step-00000015.pt", "final", "(in flight)"]
    assert "checkpoint.s3_wait_s" in give_up["error"]
    client.gate.set()
