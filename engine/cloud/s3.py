"""S3 locations and clients: `s3://bucket/prefix` parsed, boto3 imported only when S3 is used.

A run mirrored to S3 lives under `<checkpoint.s3_uri>/<run-id>/` (see docs/DESIGN.md). Clients
come from boto3's standard credential chain only (environment, shared files, SSO, the
instance profile); the engine never reads, stores or prints a credential itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from engine.config.s3_uri import uri_problem  # the config checks URIs too; re-exported here

#: Multipart above this size (bytes); COCKPIT_S3_MULTIPART_BYTES lowers it (tests, benchmarks).
MULTIPART_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading or trailing slash; '' for the bucket's root)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str) -> "S3Location":
        """s3://bucket/prefix -> S3Location; ValueError naming the problem otherwise."""
        problem = uri_problem(uri)
        if problem:
            raise ValueError(f"{uri!r}: {problem}")
        bucket, _, prefix = uri[5:].partition("/")
        return cls(bucket, prefix.strip("/"))

    def key(self, *parts: str) -> str:
        """The object key for parts below this prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def child(self, name: str) -> "S3Location":
        return S3Location(self.bucket, self.key(name))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def client(service: str = "s3", region: str | None = None) -> Any:
    """A boto3 client from the standard credential chain, with the AWS loggers capped."""
    from engine.cloud.redact import quiet_aws_loggers

    quiet_aws_loggers()
    import boto3  # only here: a run without S3 or cloud commands never imports it
    from botocore.config import Config as BotoConfig

    cfg = BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.session.Session().client(service, region_name=region, config=cfg)


def transfer_config() -> Any:
    """boto3's transfer manager settings: multipart above MULTIPART_BYTES, 4 parts at a time."""
    from boto3.s3.transfer import TransferConfig

    threshold = int(os.environ.get("COCKPIT_S3_MULTIPART_BYTES") or MULTIPART_BYTES)
    return TransferConfig(multipart_threshold=threshold, multipart_chunksize=max(threshold, 8 * 1024 * 1024),
                          max_concurrency=4, use_threads=True)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ('' for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def is_missing(exc: BaseException) -> bool:
    return error_code(exc) in ("NoSuchKey", "404", "NotFound")


def is_precondition(exc: BaseException) -> bool:
    """A conditional write lost: 412 PreconditionFailed, or 409 ConditionalRequestConflict."""
    return error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def unreachable(what: str, where: Any, exc: BaseException) -> Exception:
    """BadInput for an S3 call that failed (no access, no network): the message masked of secrets."""
    from contracts.errors import BadInput
    from engine.cloud.redact import redact

    detail = redact(f"{type(exc).__name__}: {exc}")[:300]
    return BadInput(f"{what}: S3 at {where} could not be used ({detail}); check the bucket, the network and "
                    "the credentials boto3 finds (environment, ~/.aws, instance profile); nothing was changed")
