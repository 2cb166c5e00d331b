"""No AWS secret reaches a log, an event, TensorBoard, config.toml, S3 or the screen, even with
botocore's debug logging on (COCKPIT_DEBUG_AWS=1)."""

from __future__ import annotations

import logging
from pathlib import Path

from conftest import TINY, run_engine
from contracts.events import EXIT_FINISHED
from engine.cloud.redact import MASK, RedactingFilter, redact
from moto_server import aws_env, bucket, moto  # noqa: F401 - moto is a fixture

# Recognisable, realistically shaped values; "qqzz" appears nowhere else
KEY_ID = "ASIAQQZZ7777KEYID001"
SECRET = "qqzzSecretAccessKey/0123456789+abcdefgh"
TOKEN = "IQoJb3JpZ2luX2VjEqqzz" + "A1b2C3d4" * 40 + "qqzzEnd"


def test_redact_masks_what_botocore_logs_at_debug():
    lines = [
        "Sending http request: <AWSPreparedRequest stream_output=False, method=PUT, url=https://b.s3.amazonaws.com/k, "
        "headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261201/us-east-1/s3/"
        "aws4_request, SignedHeaders=host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7', "
        "'X-Amz-Security-Token': b'FwoGZXIvYXdzEXAMPLETOKENexampletoken'}>",
        "CanonicalRequest:\nPUT\n/k\n\nhost:b.s3.amazonaws.com\nx-amz-security-token:FwoGZXIvYXdzEXAMPLETOKENexampletoken\n",
        'Response body: {"Credentials": {"AccessKeyId": "ASIAEXAMPLEEXAMPLE12", "SecretAccessKey": '
        '"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "SessionToken": "FwoGZXIvYXdzEXAMPLETOKENexampletoken"}}',
        "<SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY</SecretAccessKey>",
        "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F2026"
        "&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLETOKENexampletoken&X-Amz-Signature=abcdef0123",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ]
    for line in lines:
        out = redact(line)
        for secret in ("AKIAIOSFODNN7EXAMPLE", "ASIAEXAMPLEEXAMPLE12", "wJalrXUtnFEMI", "FwoGZXIvYXdz", "5d672d79c15b"):
            assert secret not in out, (secret, out)
        assert MASK in out
    assert redact("step 12 loss 0.41 s3://my-bucket/runs") == "step 12 loss 0.41 s3://my-bucket/runs"
    record = logging.LogRecord("botocore.endpoint", logging.DEBUG, "f", 1, "headers=%s", ({"Authorization": "AWS4 x"},), None)
    RedactingFilter().filter(record)
    assert "AWS4 x" not in record.getMessage()


def test_no_secret_in_anything_a_mirrored_run_writes_with_botocore_debug_on(tmp_path: Path, moto: str):
    name = bucket("secrets")
    (tmp_path / "tiny.toml").write_text(TINY)
    env = aws_env(moto, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_SESSION_TOKEN=TOKEN,
                  COCKPIT_DEBUG_AWS="1")
    done = run_engine("run", str(tmp_path / "tiny.toml"), "--runs-dir", str(tmp_path / "runs"), "--run-id", "r",
                      "--set", f"checkpoint.s3_uri='s3://{name}/runs'", "--set", "train.max_steps=12", env=env)
    assert done.returncode == EXIT_FINISHED, done.stderr[-3000:]
    # botocore really logged at DEBUG (requests, signing), and our filter masked it
    assert "botocore" in done.stderr and "DEBUG" in done.stderr and MASK in done.stderr
    import boto3

    s3 = boto3.client("s3")
    uploaded = {o["Key"]: s3.get_object(Bucket=name, Key=o["Key"])["Body"].read()
                for o in s3.list_objects_v2(Bucket=name)["Contents"]}
    assert "runs/r/engine.log" in uploaded and "runs/r/events.jsonl" in uploaded
    written = {str(p): p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    assert any("tfevents" in p for p in written) and any(p.endswith(".pt") for p in written)
    everything = {**written, **uploaded, "stdout": done.stdout.encode(), "stderr": done.stderr.encode()}
    for where, data in everything.items():
        lowered = data.lower()
        for needle in (b"qqzz", KEY_ID.lower().encode(), SECRET.lower().encode(), b"iqojb3jpz2lux2vj"):
            assert needle not in lowered, f"{needle!r} leaked into {where}"
