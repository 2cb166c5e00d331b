"""The control protocol: one JSON command a line over a run's Unix socket, one JSON reply.

    {"cmd": "set", "lr": 0.01}   ->   {"ok": true, "lr": 0.01, "step": 120}

`status` is answered at once by the engine's socket thread; every other command waits for the
training loop's next step boundary (a `Pending`). Clients retry a refused connect briefly: a
crowd (several cockpits, a sweep worker, scripts) can fill the listen backlog for a moment.
"""

from __future__ import annotations

import errno
import json
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from contracts.events import json_safe

#: `prune`: stop like `stop`, with reason PRUNED, so the run ends "pruned" (a sweep trial given up on).
#: `requeue`: a Slurm job's engine checkpoints, requeues its job (scontrol requeue) and exits 3.
#: `target`: set (or clear) train.target and train.stop_at_target while the run trains.
COMMANDS = ("checkpoint", "pause", "continue", "stop", "prune", "set", "status", "requeue", "target")
#: The `target` command's fields (the engine checks the metric and the value against the run's task).
TARGET_FIELDS = ("metric", "value", "stop", "clear", "by")
#: A request longer than this is refused unread: one command never needs more.
MAX_REQUEST_BYTES = 4096
#: Longest Unix socket path we bind (the kernel limit is 108 bytes with the NUL).
MAX_SOCKET_PATH = 100


class ProtocolError(ValueError):
    """A request or event that does not follow the protocol."""


def encode_request(cmd: str, **args: Any) -> bytes:
    """One command request as a JSON line."""
    return (json.dumps({"cmd": cmd, **args}) + "\n").encode()


def decode_request(raw: bytes) -> dict[str, Any]:
    """Validate one request line; raise ProtocolError naming what is wrong."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"request too large: {len(raw)} bytes (limit {MAX_REQUEST_BYTES})")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed request: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("malformed request: expected a JSON object like {\"cmd\": \"status\"}")
    cmd = obj.get("cmd")
    if cmd not in COMMANDS:
        raise ProtocolError(f"unknown command {cmd!r}: expected one of {', '.join(COMMANDS)}")
    if cmd == "set":
        _check_set(obj)
    if cmd == "target":
        _check_target(obj)
    return obj


def _check_set(obj: dict[str, Any]) -> None:
    extra = set(obj) - {"cmd", "lr"}
    if extra:
        raise ProtocolError(f"set: unknown field(s) {sorted(extra)}: only 'lr' can be set")
    lr = obj.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ProtocolError(f"set: lr={lr!r}: expected a positive number")


def _check_target(obj: dict[str, Any]) -> None:
    """The target command's shape: {"metric": str, "value": number, "stop": bool, "by": str} or
    {"clear": true}; whether the metric and value suit the run is the engine's to say."""
    extra = set(obj) - {"cmd", *TARGET_FIELDS}
    if extra:
        raise ProtocolError(f"target: unknown field(s) {sorted(extra)}: expected {', '.join(TARGET_FIELDS)}")
    for name in ("stop", "clear"):
        if name in obj and not isinstance(obj[name], bool):
            raise ProtocolError(f"target: {name}={obj[name]!r}: expected true or false")
    if "by" in obj and (not isinstance(obj["by"], str) or len(obj["by"]) > 100):
        raise ProtocolError(f"target: by={obj['by']!r}: expected a short text (who sets it, at most 100 characters)")
    if obj.get("clear"):
        if "value" in obj or "metric" in obj:
            raise ProtocolError("target: clear=true with a metric or value: send one or the other")
        return
    if "metric" in obj and not isinstance(obj["metric"], str):
        raise ProtocolError(f"target: metric={obj['metric']!r}: expected a name such as \"val_accuracy\"")
    value = obj.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"target: value={value!r}: expected a finite number (or clear=true)")


def encode_reply(ok: bool, **fields: Any) -> bytes:
    """One reply as a JSON line: {"ok": true, ...} or {"ok": false, "error": "..."}."""
    return (json.dumps(json_safe({"ok": ok, **fields})) + "\n").encode()


def decode_reply(raw: bytes) -> dict[str, Any]:
    """Parse a reply line (ProtocolError for anything that is not one)."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        obj = None
    if not isinstance(obj, dict) or "ok" not in obj:
        raise ProtocolError(f"malformed reply: {raw[:200]!r}")
    return obj


#: A refused or full-backlog connect is retried for this long before the error is raised.
CONNECT_RETRY_S = 3.0
_BUSY = (errno.EAGAIN, errno.ECONNREFUSED, errno.EWOULDBLOCK)


def connect(socket_path: str, timeout: float, retry_s: float = CONNECT_RETRY_S) -> socket.socket:
    """A connected Unix socket; a busy listener (EAGAIN: its backlog is full) is retried with
    backoff for up to `retry_s`. A missing socket (no engine) fails at once."""
    deadline, delay = time.monotonic() + retry_s, 0.01
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno not in _BUSY or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def send_command(socket_path: str, cmd: str, timeout: float = 30.0, retry_s: float = CONNECT_RETRY_S,
                 **args: Any) -> dict[str, Any]:
    """Send one command over a run's control socket and wait for its reply (a busy listener is
    retried for `retry_s`)."""
    with connect(str(socket_path), timeout, retry_s) as sock:
        sock.sendall(encode_request(cmd, **args))
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    if not buf:  # the engine exited (or closed the socket) before it answered
        raise ConnectionResetError(f"{socket_path}: the engine closed the connection without a reply to {cmd!r}")
    return decode_reply(buf)


@dataclass
class Pending:
    """A command waiting for the loop, and the reply the loop gives it."""

    request: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] | None = None

    @property
    def cmd(self) -> str:
        return self.request["cmd"]

    def answer(self, ok: bool = True, **fields: Any) -> None:
        """Send the reply back to the waiting client."""
        self.reply = {"ok": ok, **fields}
        self.done.set()
