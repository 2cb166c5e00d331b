"""The run's lease in S3: at most one engine owns a mirrored run at a time.

`<run>/lease` is a small JSON object (owner, host, pid, acquired_at, expires_at) written only
with conditional puts: `IfNoneMatch="*"` creates it, `IfMatch=<etag>` renews or takes over an
expired one, so two engines can never both believe they own the run. A background thread
renews it every third of its time to live; an owner that dies stops renewing and its lease
expires. Release writes an already-expired lease (a conditional put too), so the next engine
takes over at once. Expiry is compared with this machine's clock: keep clocks synchronized
(EC2 instances are, through the Amazon Time Sync Service).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from engine.cloud.s3 import S3Location, is_missing, is_precondition
from contracts.errors import BadInput

LEASE = "lease"


@dataclass
class Holder:
    """Who holds a lease, until when, and the object's ETag."""

    owner: str
    host: str
    expires_at: float
    etag: str
    pid: int = 0

    @property
    def expired(self) -> bool:
        """Past its expiry, or held by a process of this machine that no longer exists (an engine
        killed here a moment ago need not be waited for)."""
        return self.expires_at <= time.time() or (self.host == socket.gethostname() and not _alive(self.pid))

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.expires_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        left = self.expires_at - time.time()
        return f"owner {self.owner!r} (host {self.host!r}), lease expires {when} (in {left:.0f} s)"


def read(s3: Any, run: S3Location) -> Holder | None:
    """The current lease on the run (None: there is none)."""
    try:
        obj = s3.get_object(Bucket=run.bucket, Key=run.key(LEASE))
    except Exception as exc:  # noqa: BLE001 - botocore's ClientError
        if is_missing(exc):
            return None
        raise
    try:
        doc = json.loads(obj["Body"].read())
        return Holder(str(doc["owner"]), str(doc.get("host", "?")), float(doc["expires_at"]), obj["ETag"],
                      int(doc.get("pid") or 0))
    except (ValueError, KeyError, TypeError):  # unreadable: treat as expired, take it over
        return Holder("unreadable lease", "?", 0.0, obj["ETag"])


def refuse_if_held(s3: Any, run: S3Location, what: str, wait_s: float = 0.0) -> None:
    """BadInput naming the owner when a live lease on the run exists (a read; no write), after
    waiting up to `wait_s` for it to be released or to expire."""
    deadline = time.monotonic() + wait_s
    holder = read(s3, run)
    while holder is not None and not holder.expired and time.monotonic() < deadline:
        time.sleep(max(0.2, min(5.0, holder.expires_at - time.time(), deadline - time.monotonic())))
        holder = read(s3, run)
    if holder is not None and not holder.expired:
        raise BadInput(f"{what}: {run} is owned by another engine: {holder.describe()}; "
                       "wait for it to end (or for its lease to expire), then try again")


class Lease:
    """This engine's lease on one run in S3, renewed in the background until released."""

    def __init__(self, s3: Any, run: S3Location, ttl_s: float):
        self.s3, self.run, self.ttl_s = s3, run, ttl_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.etag: str | None = None
        self.lost: str | None = None  # why we no longer own it
        self.on_lost: Callable[[str], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _doc(self, expires_at: float) -> bytes:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "acquired_at": time.time(), "expires_at": expires_at}).encode()

    def _put(self, expires_at: float, **condition: str) -> str:
        reply = self.s3.put_object(Bucket=self.run.bucket, Key=self.run.key(LEASE), Body=self._doc(expires_at),
                                   ContentType="application/json", **condition)
        return reply["ETag"]

    def acquire(self, what: str) -> "Lease":
        """Take the lease (create it, or take over an expired one); BadInput if another owns it."""
        try:
            self.etag = self._put(time.time() + self.ttl_s, IfNoneMatch="*")
        except Exception as exc:  # noqa: BLE001
            if not is_precondition(exc):
                raise
            holder = read(self.s3, self.run)
            if holder is not None and not holder.expired:
                raise BadInput(f"{what}: {self.run} is owned by another engine: {holder.describe()}; "
                               "wait for it to end (or for its lease to expire), then try again") from None
            try:
                condition = {"IfMatch": holder.etag} if holder else {"IfNoneMatch": "*"}
                self.etag = self._put(time.time() + self.ttl_s, **condition)
            except Exception as again:  # noqa: BLE001
                if is_precondition(again):
                    raise BadInput(f"{what}: another engine took the lease on {self.run} just now; "
                                   "nothing was changed") from None
                raise
        self._thread = threading.Thread(target=self._renew_loop, name="s3-lease", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> bool:
        """Extend the lease (IfMatch on our last ETag); False once it was lost."""
        with self._lock:
            if self.lost or self.etag is None:
                return False
            try:
                self.etag = self._put(time.time() + self.ttl_s, IfMatch=self.etag)
                return True
            except Exception as exc:  # noqa: BLE001
                if is_precondition(exc):
                    holder = read(self.s3, self.run)
                    self.lost = f"the lease on {self.run} was taken over: " + (
                        holder.describe() if holder else "it was deleted")
                    if self.on_lost:
                        self.on_lost(self.lost)
                    return False
                return True  # a network error: try again at the next renewal, before expiry

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            if not self.renew():
                return

    @property
    def held(self) -> bool:
        return self.etag is not None and self.lost is None

    def release(self) -> None:
        """Stop renewing and leave an expired lease behind, so the next engine takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            if not self.held:
                return
            try:
                self._put(0.0, IfMatch=self.etag)
            except Exception:  # noqa: BLE001 - it expires by itself
                pass
            self.etag = None


def _alive(pid: int) -> bool:
    """Whether a process with this pid runs here (True when unknown: never presume a death)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
