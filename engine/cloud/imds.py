"""An EC2 instance metadata (IMDSv2) client on the standard library: token, GETs, timeouts.

IMDSv2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` gives a session
token, sent as `X-aws-ec2-metadata-token` on every GET. The token is renewed before it
expires, and once more on a 401 (the service restarted or the clock lied). Every request has
a short timeout and is retried once after a short back-off; a path that does not exist (404)
reads as None. Nothing goes through a proxy: the address is link-local.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import urlsplit

from engine.cloud.facts import InstanceFacts

DEFAULT_ENDPOINT = "http://169.254.169.254"
ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"  # botocore's own variables
DISABLED_ENV = "AWS_EC2_METADATA_DISABLED"
TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


class MetadataUnavailable(Exception):
    """The metadata service did not answer (timeout, refused, an unexpected status)."""


def disabled_by_env(environ: dict[str, str] | None = None) -> bool:
    """AWS_EC2_METADATA_DISABLED=true, as botocore reads it: no request at all."""
    env = os.environ if environ is None else environ
    return env.get(DISABLED_ENV, "false").strip().lower() == "true"


def endpoint_from(configured: str | None = None, environ: dict[str, str] | None = None) -> str:
    """The configured endpoint, else $AWS_EC2_METADATA_SERVICE_ENDPOINT, else the standard one."""
    env = os.environ if environ is None else environ
    return (configured or env.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


class ImdsClient:
    """GETs under /latest/ with an IMDSv2 session token."""

    def __init__(self, endpoint: str | None = None, timeout_s: float = 1.0, token_ttl_s: int = 21600,
                 attempts: int = 2, backoff_s: float = 0.2, clock: Callable[[], float] = time.monotonic):
        self.endpoint = endpoint_from(endpoint)
        parts = urlsplit(self.endpoint)
        self.https, self.host, self.port = parts.scheme == "https", parts.hostname or "", parts.port
        self.timeout_s, self.token_ttl_s = timeout_s, token_ttl_s
        self.attempts, self.backoff_s, self.clock = attempts, backoff_s, clock
        self.token: str | None = None
        self.token_expires = 0.0
        self.requests = 0  # requests sent (tests read it)

    # ---- the wire -----------------------------------------------------------------------

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """One request, with the back-off retry on a network failure; (status, body)."""
        if disabled_by_env():  # checked on every request, as botocore does
            raise MetadataUnavailable(f"{DISABLED_ENV}=true: the metadata service is not asked")
        last: Exception | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=self.timeout_s)
            try:
                self.requests += 1
                conn.request(method, path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                if response.status >= 500:  # the service is busy: back off and try again
                    last = MetadataUnavailable(f"{method} {path}: HTTP {response.status}")
                    continue
                return response.status, body
            except (OSError, http.client.HTTPException) as exc:
                last = exc
            finally:
                conn.close()
        raise MetadataUnavailable(f"{method} {self.endpoint}{path}: {last}") from None

    def _token(self) -> str:
        """The session token, renewed when a quarter of its life (at most a minute) is left."""
        margin = min(60.0, self.token_ttl_s / 4)
        if self.token is None or self.clock() >= self.token_expires - margin:
            asked = self.clock()
            status, body = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(self.token_ttl_s)})
            if status != 200:
                raise MetadataUnavailable(f"PUT {TOKEN_PATH}: HTTP {status}")
            self.token, self.token_expires = body.decode().strip(), asked + self.token_ttl_s
        return self.token

    def get(self, path: str) -> str | None:
        """The text at /latest/<path> (e.g. 'meta-data/instance-type'); None if it does not exist."""
        full = "/latest/" + path.lstrip("/")
        for renewed in (False, True):
            status, body = self._request("GET", full, {TOKEN_HEADER: self._token()})
            if status == 401 and not renewed:  # a token the service no longer knows: once more
                self.token = None
                continue
            if status == 404:
                return None
            if status != 200:
                raise MetadataUnavailable(f"GET {full}: HTTP {status}")
            return body.decode()
        raise MetadataUnavailable(f"GET {full}: HTTP 401 with a fresh token")


# ---- what the engine reads ----------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """A spot interruption notice: what happens to the instance and when (unix seconds)."""

    action: str  # terminate, stop or hibernate
    time: str    # as the service wrote it, e.g. 2026-12-01T23:10:00Z
    at: float | None

    def seconds_left(self, now: float | None = None) -> float | None:
        return None if self.at is None else self.at - (time.time() if now is None else now)


def parse_time(text: str) -> float | None:
    """An IMDS timestamp (ISO 8601, UTC, 'Z') as unix seconds; None if unreadable."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _json(text: str | None) -> dict | None:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def instance_action(client: ImdsClient) -> Notice | None:
    """The spot interruption notice (404, the usual answer: None)."""
    doc = _json(client.get("meta-data/spot/instance-action"))
    if doc is None:
        return None
    when = str(doc.get("time", ""))
    return Notice(str(doc.get("action", "terminate")), when, parse_time(when))


def rebalance(client: ImdsClient) -> str | None:
    """The rebalance recommendation's noticeTime (404: None)."""
    text = client.get("meta-data/events/recommendations/rebalance")
    if text is None:
        return None
    doc = _json(text) or {}
    return str(doc.get("noticeTime", "")) or text.strip()


def instance_facts(client: ImdsClient) -> InstanceFacts | None:
    """Lifecycle, type and zone of this instance; None where the service does not say."""
    try:
        lifecycle = client.get("meta-data/instance-life-cycle")
        instance_type = client.get("meta-data/instance-type")
        zone = client.get("meta-data/placement/availability-zone")
    except MetadataUnavailable:
        return None
    if not (lifecycle and instance_type and zone):
        return None
    return InstanceFacts(lifecycle.strip(), instance_type.strip(), zone.strip())
