"""A loopback EC2 instance metadata service (IMDSv2) for the tests, switchable while it runs.

It speaks IMDSv2 as EC2 does: `PUT /latest/api/token` with a TTL header of 1 to 21600
seconds gives a token; a GET without a token, or with an expired or unknown one, is a 401;
a path that does not exist is a 404; a trailing slash is accepted. The scenario (on-demand,
spot, a notice, a rebalance recommendation, silence) can change at any time from the test.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def iso(seconds_from_now: float) -> str:
    """A UTC time as IMDS writes it: 2026-12-01T23:10:00Z."""
    when = datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class ImdsServer:
    """The server and its scenario; `url` is the endpoint to give the engine."""

    def __init__(self, lifecycle: str = "spot", instance_type: str = "g5.xlarge", zone: str = "us-east-1b"):
        self.lock = threading.Lock()
        self.lifecycle, self.instance_type, self.zone = lifecycle, instance_type, zone
        self.action: dict[str, str] | None = None    # the instance-action document
        self.rebalance: dict[str, str] | None = None  # the rebalance recommendation
        self.silent = threading.Event()               # accept, then never answer
        self.tokens: dict[str, float] = {}            # token -> expiry (monotonic)
        self.max_ttl: float | None = None             # cap the TTL given (an "expiring token")
        self.log: list[tuple[str, str, int]] = []     # (method, path, status) of every request
        self.hung_at: list[float] = []                # when each unanswered request came (unix s)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _reply(self, status: int, body: str = "") -> None:
                data = body.encode()
                with server.lock:
                    server.log.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _hang(self) -> bool:
                if not server.silent.is_set():
                    return False
                with server.lock:
                    server.log.append((self.command, self.path, 0))
                    server.hung_at.append(time.time())
                while server.silent.is_set() and not server.closing:
                    time.sleep(0.05)
                self.close_connection = True
                return True

            def do_PUT(self) -> None:  # noqa: N802
                if self._hang():
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path.rstrip("/") != "/latest/api/token":
                    return self._reply(404)
                if self.headers.get("X-Forwarded-For"):
                    return self._reply(403)
                try:
                    ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
                except ValueError:
                    return self._reply(400)
                if not 1 <= ttl <= 21600:
                    return self._reply(400)
                if server.max_ttl is not None:
                    ttl = min(ttl, server.max_ttl)
                token = secrets.token_urlsafe(24)
                with server.lock:
                    server.tokens[token] = time.monotonic() + ttl
                self._reply(200, token)

            def do_GET(self) -> None:  # noqa: N802
                if self._hang():
                    return
                token = self.headers.get("X-aws-ec2-metadata-token")
                with server.lock:
                    expiry = server.tokens.get(token or "")
                if expiry is None or time.monotonic() >= expiry:
                    return self._reply(401)
                body = server.document(self.path.rstrip("/"))
                self._reply(404) if body is None else self._reply(200, body)

        self.closing = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def document(self, path: str) -> str | None:
        """What a GET of `path` answers now (None: 404)."""
        with self.lock:
            docs = {
                "/latest/meta-data/instance-life-cycle": self.lifecycle,
                "/latest/meta-data/instance-type": self.instance_type,
                "/latest/meta-data/placement/availability-zone": self.zone,
                "/latest/meta-data/spot/instance-action": json.dumps(self.action) if self.action else None,
                "/latest/meta-data/events/recommendations/rebalance":
                    json.dumps(self.rebalance) if self.rebalance else None,
            }
        return docs.get(path)

    # ---- scenarios ------------------------------------------------------------------------

    def notice(self, seconds_from_now: float = 120, action: str = "terminate") -> None:
        with self.lock:
            self.action = {"action": action, "time": iso(seconds_from_now)}

    def recommend_rebalance(self) -> None:
        with self.lock:
            self.rebalance = {"noticeTime": iso(0)}

    def expire_tokens(self) -> None:
        """Every token given so far stops working (as when the service restarts)."""
        with self.lock:
            self.tokens.clear()

    def requests(self, path_part: str = "") -> list[tuple[str, str, int]]:
        with self.lock:
            return [r for r in self.log if path_part in r[1]]

    def __enter__(self) -> "ImdsServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.closing = True
        self.silent.clear()
        self.httpd.shutdown()
        self.httpd.server_close()
