"""The S3 mirror: a telemetry sink that uploads each completed checkpoint in the background.

On a `checkpoint` event the file (or an FSDP directory, file by file) is hard-linked into
`<run>/.s3-staging/` at once, so `keep_last` pruning cannot pull it away, and queued; one
thread uploads it with boto3's transfer manager (multipart above the threshold), then
events.jsonl, and only then moves `checkpoints/latest` (and `best`) in S3, so the pointer
always names a complete upload. A newer checkpoint replaces one still waiting in the queue
(a best one only by a best one, so S3's `best` is always uploaded).
config.toml goes up at the start. Nothing here ever blocks a step. `close()` (finish, stop,
preemption, failure) uploads events.jsonl and engine.log, waits for the queue (at most
`checkpoint.s3_wait_s`, and says so in an `s3` event if it gave up), then releases the lease.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from contracts.layout import S3_STAGING, RunLayout
from engine.cloud.lease import Lease
from engine.cloud.s3 import S3Location, client, transfer_config
from engine.cloud.redact import redact

STAGING = S3_STAGING


@dataclass
class Upload:
    """One queued upload: a checkpoint (with its staged files) or a run file."""

    what: str  # "checkpoint", "config", "final"
    name: str = ""
    step: int = -1
    best: bool = False
    staged: Path | None = None
    files: list[tuple[Path, str]] = field(default_factory=list)  # (local path, key below the run)


class S3Mirror:
    """Mirrors one run directory to `where` (the run's own prefix: <s3_uri>/<run-id>)."""

    def __init__(self, run_dir: Path, where: S3Location, report: Callable[..., Any], keep_last: int,
                 wait_s: float, lease: Lease | None = None, s3: Any = None):
        self.run_dir, self.where, self.report = run_dir, where, report
        self.keep_last, self.wait_s, self.lease = keep_last, wait_s, lease
        self.s3 = s3 or client()
        self.transfer = transfer_config()
        self.staging = run_dir / STAGING
        shutil.rmtree(self.staging, ignore_errors=True)
        self.queue: list[Upload] = [Upload("config")]
        self.busy = False
        self.closing = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._work, name="s3-mirror", daemon=True)
        self.thread.start()
        if lease is not None:
            lease.on_lost = lambda why: self.report("s3", action="lease_lost", ok=False, uri=str(where),
                                                    error=why)

    # ---- the sink ---------------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        """Stage and queue each completed checkpoint (the only event it acts on)."""
        if event["type"] != "checkpoint" or self.closing:
            return
        path = Path(event["path"])
        try:
            staged, files = self._stage(path)
        except OSError as exc:  # pruned already, or a filesystem without hard links
            self.report("s3", action="upload", what="checkpoint", ok=False, step=event["step"],
                        uri=str(self.where), error=f"could not stage {path.name}: {redact(str(exc))}")
            return
        job = Upload("checkpoint", path.name, int(event["step"]), bool(event.get("best")), staged, files)
        with self.cond:
            for old in [j for j in self.queue if j.what == "checkpoint" and (job.best or not j.best)]:
                self.queue.remove(old)  # superseded before it started (a best one only by a best one)
                _drop(old.staged)
            self.queue.append(job)
            self.cond.notify_all()

    def _stage(self, path: Path) -> tuple[Path, list[tuple[Path, str]]]:
        """Hard-link the checkpoint into the staging folder (cheap; survives pruning)."""
        self.staging.mkdir(exist_ok=True)
        target = self.staging / path.name
        _drop(target)
        if path.is_dir():
            target.mkdir()
            files = []
            for f in sorted(path.iterdir()):
                _link(f, target / f.name)
                files.append((target / f.name, f"checkpoints/{path.name}/{f.name}"))
            return target, files
        _link(path, target)
        return target, [(target, f"checkpoints/{path.name}")]

    def close(self) -> None:
        """Upload the history, wait (bounded) for the queue, release the lease."""
        with self.cond:
            self.closing = True
            self.queue.append(Upload("final"))
            self.cond.notify_all()
            deadline = time.monotonic() + self.wait_s
            while (self.queue or self.busy) and time.monotonic() < deadline:
                self.cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            left = [j.name or j.what for j in self.queue] + (["(in flight)"] if self.busy else [])
        if left:
            self.report("s3", action="give_up", ok=False, uri=str(self.where), pending=left,
                        error=f"gave up waiting for uploads after {self.wait_s:g} s (checkpoint.s3_wait_s)")
        if self.lease is not None:
            self.lease.release()

    # ---- the upload thread ------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                job = self.queue.pop(0)
                self.busy = True
            try:
                self._do(job)
            except Exception as exc:  # noqa: BLE001 - reported; the next upload tries again
                self.report("s3", action="upload", what=job.what, ok=False,
                            step=job.step if job.step >= 0 else None, uri=str(self.where),
                            error=redact(f"{type(exc).__name__}: {exc}")[:500])
            finally:
                _drop(job.staged)
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()
            if job.what == "final":
                return

    def _owned(self) -> bool:
        return self.lease is None or self.lease.held

    def _do(self, job: Upload) -> None:
        if not self._owned():
            raise RuntimeError(self.lease.lost if self.lease else "lease lost")
        if job.what == "config":
            self._put_file(RunLayout(self.run_dir).config, "config.toml")
            return
        if job.what == "final":
            self._put_history()
            self._put_file(RunLayout(self.run_dir).log, "engine.log")
            return
        start, size = time.perf_counter(), 0
        for local, key in job.files:
            self.s3.upload_file(str(local), self.where.bucket, self.where.key(key), Config=self.transfer)
            size += local.stat().st_size
        self._put_history()
        if not self._owned():  # taken over while uploading: the new owner's pointer stays
            raise RuntimeError(self.lease.lost)
        pointer = json.dumps({"file": job.name, "step": job.step}).encode()
        self._put_bytes(pointer, "checkpoints/latest")
        if job.best:
            self._put_bytes(pointer, "checkpoints/best")
        self._prune(job.name)
        self.report("s3", action="upload", what="checkpoint", ok=True, step=job.step, file=job.name,
                    bytes=size, seconds=round(time.perf_counter() - start, 4),
                    multipart=any(f.stat().st_size >= self.transfer.multipart_threshold for f, _ in job.files),
                    uri=f"{self.where}/checkpoints/{job.name}")

    def _put_bytes(self, body: bytes, key: str) -> None:
        self.s3.put_object(Bucket=self.where.bucket, Key=self.where.key(key), Body=body)

    def _put_file(self, path: Path, key: str) -> None:
        if path.is_file():
            self.s3.upload_file(str(path), self.where.bucket, self.where.key(key), Config=self.transfer)

    def _put_history(self) -> None:
        """events.jsonl up to its last complete line (it grows while we read it)."""
        try:
            data = RunLayout(self.run_dir).events.read_bytes()
        except OSError:
            return
        self._put_bytes(data[: data.rfind(b"\n") + 1], "events.jsonl")

    def _prune(self, newest: str) -> None:
        """Delete S3 checkpoints beyond the newest keep_last (the best one stays)."""
        base = self.where.key("checkpoints") + "/"
        names: dict[str, list[str]] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.where.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(base):].split("/", 1)[0]
                if name.startswith("step-"):
                    names.setdefault(name, []).append(obj["Key"])
        keep = set(sorted(names)[-self.keep_last:]) | {newest, self._best()}
        doomed = [k for name, keys in names.items() if name not in keep for k in keys]
        for i in range(0, len(doomed), 1000):
            self.s3.delete_objects(Bucket=self.where.bucket,
                                   Delete={"Objects": [{"Key": k} for k in doomed[i:i + 1000]], "Quiet": True})

    def _best(self) -> str:
        try:
            body = self.s3.get_object(Bucket=self.where.bucket, Key=self.where.key("checkpoints/best"))["Body"]
            return json.loads(body.read())["file"]
        except Exception:  # noqa: BLE001 - no best yet
            return ""


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)  # a filesystem without hard links: a copy


def _drop(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
