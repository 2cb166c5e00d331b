"""A run's S3 side, as the session uses it: where it lives, its lease, its mirror."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from contracts.stops import Plan, Reason, Source
from engine.cloud.lease import Lease
from engine.cloud.s3 import S3Location, client, is_missing, unreachable
from contracts.errors import BadInput


def location(cfg: Any, run_id: str) -> S3Location | None:
    """<checkpoint.s3_uri>/<run-id>, or None when the run is not mirrored."""
    uri = cfg.checkpoint.s3_uri
    return S3Location.parse(uri).child(run_id) if uri else None


def take_lease(cfg: Any, run_id: str, new: bool) -> Lease | None:
    """Own the run in S3 (BadInput naming the owner if another engine does); a new run also
    refuses an id whose run S3 holds a checkpoint of (resume it instead)."""
    where = location(cfg, run_id)
    if where is None:
        return None
    try:
        s3 = client()
        if new and exists(s3, where):
            raise BadInput(f"--run-id {run_id!r}: {where} already holds a run; continue it with "
                           f"`cockpit-engine resume {run_id} --s3 {cfg.checkpoint.s3_uri}` or pick another id")
        return Lease(s3, where, cfg.checkpoint.s3_lease_s).acquire(f"run {run_id!r}")
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore: no network, no access, no bucket
        raise unreachable(f"run {run_id!r}", where, exc) from None


def mirror(cfg: Any, run_dir: Path, report: Callable[..., Any], lease: Lease | None) -> Any:
    """The S3 mirror sink for this run (engine.cloud.mirror)."""
    from engine.cloud.mirror import S3Mirror

    where = location(cfg, run_dir.name)
    return S3Mirror(run_dir, where, report, cfg.checkpoint.keep_last, cfg.checkpoint.s3_wait_s, lease,
                    s3=lease.s3 if lease else None)


def exists(s3: Any, where: S3Location) -> bool:
    """Whether S3 holds a resumable run here (its checkpoints/latest pointer)."""
    try:
        s3.head_object(Bucket=where.bucket, Key=where.key("checkpoints/latest"))
        return True
    except Exception as exc:  # noqa: BLE001
        if is_missing(exc):
            return False
        raise


class LeaseWatch(Source):
    """A boundary source: stop the run (exit 3) once another engine has taken its lease over."""

    def __init__(self, lease: Lease):
        self.lease = lease

    def poll(self) -> Plan:
        if self.lease.lost:
            return Plan(Reason.STOP_COMMAND, why=f"the run's lease was lost: {self.lease.lost}")
        return Plan()
