"""The wire contract between engine and cockpit: events, commands, encode and decode.

Standard library only, and nothing heavy at import time: the cockpit imports this module
and must never pull in torch.

Events (engine -> cockpit) are JSON objects, one a line, in ``events.jsonl``::

    {"v": 1, "t": 1732406400.5, "type": "step", "step": 120, "loss": 0.41, ...}

Commands (cockpit -> engine) are one JSON object a line over ``control.sock``::

    {"cmd": "set", "lr": 0.01}   ->   {"ok": true, "lr": 0.01, "step": 120}

Readers ignore event types and fields they do not know (forward compatibility) and skip
malformed lines instead of failing.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Iterable, Iterator

VERSION = 1

#: Every event type of protocol v1 and the fields it carries (documentation and tests).
EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "state": ("state", "pid", "host", "step", "exit_code", "reason"),
    "resume": ("step", "epoch", "checkpoint"),
    "step": (
        "step", "epoch", "batch", "batches_per_epoch", "loss", "losses", "accuracy", "lr", "samples_per_s",
        "steps_per_s", "eta_s", "train_s", "time_data_s", "time_h2d_s", "time_compute_s", "time_optim_s",
        "time_comm_s", "skipped_steps", "tflops", "mfu", "mem_peak_bytes", "world_size",
    ),
    "eval": ("step", "epoch", "metrics"),
    "doctor": ("step", "bound", "share", "field", "remedy", "message", "value", "current"),
    "config_change": ("step", "changes", "overrides", "exact"),
    "distill": ("step", "teacher", "sha256", "metrics", "temperature", "alpha"),
    "gpu": ("devices",),
    "cost": ("price_per_hour", "source", "price_age_s", "currency", "accumulated", "per_epoch", "per_1k_samples",
             "projected", "remaining_steps", "lost", "lost_steps", "lifecycle", "instance_type", "on_demand_per_hour",
             "savings", "since", "step", "step_accumulated", "from_step", "from_accumulated", "checkpoint_step",
             "checkpoint_accumulated"),
    "spot": ("kind", "step", "lifecycle", "instance_type", "zone", "region", "action", "notice_time",
             "seconds_left", "rebalance_time"),
    "checkpoint": ("path", "step", "seconds", "bytes", "reason", "best", "stall_s"),
    "s3": ("action", "what", "ok", "uri", "step", "file", "bytes", "seconds", "multipart", "pending", "error"),
    "trial": ("number", "params", "value", "state"),
    "log": ("level", "message"),
    "error": ("message", "traceback"),
}

STATES = (
    "starting", "running", "paused", "checkpointing", "stopping",
    "finished", "failed", "stopped", "preempted", "pruned",
)
#: States after which the engine process is gone.
FINAL_STATES = ("finished", "failed", "stopped", "preempted", "pruned")

#: `prune`: stop like `stop`, with reason PRUNED, so the run ends "pruned" (a sweep trial given up on).
COMMANDS = ("checkpoint", "pause", "continue", "stop", "prune", "set", "status")
#: A request longer than this is refused unread: one command never needs more.
MAX_REQUEST_BYTES = 4096
#: Longest Unix socket path we bind (the kernel limit is 108 bytes with the NUL).
MAX_SOCKET_PATH = 100

# Exit codes of `cockpit-engine`, shared with the cockpit's banner.
EXIT_FINISHED = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3


class ProtocolError(ValueError):
    """A request or event that does not follow the protocol."""


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: send them as strings a reader can still show."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def make_event(type_: str, t: float | None = None, **fields: Any) -> dict[str, Any]:
    """Build an event dict stamped with the protocol version and a Unix time."""
    event: dict[str, Any] = {"v": VERSION, "t": round(time.time() if t is None else t, 3)}
    event["type"] = type_
    event.update(fields)
    return event


def encode_event(event: dict[str, Any]) -> str:
    """One event as one JSON line (with the trailing newline)."""
    return json.dumps(_finite(event), separators=(",", ":"), allow_nan=False) + "\n"


def decode_event(line: str | bytes) -> dict[str, Any] | None:
    """Parse one line; None for anything that is not a v1-compatible event object.

    Newer versions are accepted (their unknown fields are simply ignored by readers), so a
    cockpit keeps working against a newer engine for the fields both know.
    """
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return None
    if not isinstance(obj.get("v"), int) or not isinstance(obj.get("t"), (int, float)):
        return None
    return obj


def read_events(lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    """Decode lines, skipping malformed ones and a partial last line."""
    for line in lines:
        event = decode_event(line)
        if event is not None:
            yield event


def replay(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history a reader should show: events superseded by a resume are dropped.

    After a crash the engine resumes from its last checkpoint, so step and eval events
    logged after that checkpoint were recomputed. A ``resume`` event at step S drops the
    earlier ``step``/``eval`` events with step > S, so charts have no duplicate points.
    """
    out: list[dict[str, Any]] = []
    for event in events:
        if event.get("type") == "resume" and isinstance(event.get("step"), int):
            cut = event["step"]
            out = [e for e in out if not _after(e, cut)]
        out.append(event)
    return out


def _after(event: dict[str, Any], step: int) -> bool:
    value = event.get("step")
    return event.get("type") in ("step", "eval") and isinstance(value, int) and value > step


# ---- commands -------------------------------------------------------------------------


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
    return obj


def _check_set(obj: dict[str, Any]) -> None:
    extra = set(obj) - {"cmd", "lr"}
    if extra:
        raise ProtocolError(f"set: unknown field(s) {sorted(extra)}: only 'lr' can be set")
    lr = obj.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ProtocolError(f"set: lr={lr!r}: expected a positive number")


def encode_reply(ok: bool, **fields: Any) -> bytes:
    """One reply as a JSON line: {"ok": true, ...} or {"ok": false, "error": "..."}."""
    return (json.dumps(_finite({"ok": ok, **fields})) + "\n").encode()


def decode_reply(raw: bytes) -> dict[str, Any]:
    """Parse a reply line."""
    obj = json.loads(raw)
    if not isinstance(obj, dict) or "ok" not in obj:
        raise ProtocolError(f"malformed reply: {raw[:200]!r}")
    return obj


def send_command(socket_path: str, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Send one command over a run's control socket and wait for its reply."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(encode_request(cmd, **args))
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    return decode_reply(buf)
