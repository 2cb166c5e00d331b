"""The event vocabulary: what the engine reports in events.jsonl, exit codes and run states.

Standard library only, and nothing heavy at import time: the cockpit imports this module
and must never pull in torch.

Events (engine -> cockpit) are JSON objects, one a line, in ``events.jsonl``::

    {"v": 1, "t": 1732406400.5, "type": "step", "step": 120, "loss": 0.41, ...}

Commands (cockpit -> engine) are in ``contracts.control``.

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
    "ranks": ("step", "slowest", "ranks"),
    "alert": ("kind", "severity", "step", "message"),
    "command_reply": ("id", "cmd", "reply"),
    "slurm": ("job_id", "restart_count", "nodes", "node_list", "partition", "host", "waited_s"),
    "requeue": ("job_id", "step", "checkpoint", "ok", "error"),
    "checkpoint_interval": ("step", "every_steps", "interval_s", "stall_s", "stall_measured", "mtbi_s", "source",
                            "step_s", "expected_lost_s"),
    "ledger": ("step", "steps", "sessions", "total_s", "goodput", "dollars", "classes", "worst", "final",
               "checkpoint_interval", "queued_s"),
    "projection": ("metric", "target", "step", "value", "reached", "projected_step", "projected_s",
                   "projected_dollars", "interval", "asymptote", "residuals", "params", "law", "points",
                   "s_per_step", "message"),
    "target": ("step", "metric", "value", "stop", "by"),
    "measures": ("parameters", "latency_ms", "latency_batch", "latency_compiled", "latency_note"),
    "log": ("level", "message"),
    "error": ("message", "traceback"),
}

STATES = (
    "starting", "running", "paused", "checkpointing", "stopping",
    "finished", "failed", "stopped", "preempted", "pruned", "requeued",
)
#: States after which the engine process is gone ("requeued": a Slurm job that will run again).
FINAL_STATES = ("finished", "failed", "stopped", "preempted", "pruned", "requeued")


# Exit codes of `cockpit-engine`, shared with the cockpit's banner.
EXIT_FINISHED = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: send them as strings a reader can still show."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def make_event(type_: str, t: float | None = None, **fields: Any) -> dict[str, Any]:
    """Build an event dict stamped with the protocol version and a Unix time."""
    event: dict[str, Any] = {"v": VERSION, "t": round(time.time() if t is None else t, 3)}
    event["type"] = type_
    event.update(fields)
    return event


def encode_event(event: dict[str, Any]) -> str:
    """One event as one JSON line (with the trailing newline)."""
    return json.dumps(json_safe(event), separators=(",", ":"), allow_nan=False) + "\n"


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


#: How much of an events file's end `newest_event` reads before it reads the whole file.
TAIL_BYTES = 4 << 20


def newest_event(path: Any, kind: str | None = None, before: float | None = None) -> dict[str, Any] | None:
    """The newest event of an events file, of `kind` if given, written before `before` if given.
    Reads the last TAIL_BYTES first (a long run's file is large; what is asked for is near its
    end) and the whole file only when the tail has none."""
    def pick(lines: list[bytes]) -> dict[str, Any] | None:
        for line in reversed(lines):
            if kind is not None and f'"type":"{kind}"'.encode() not in line and \
                    f'"type": "{kind}"'.encode() not in line:
                continue
            event = decode_event(line)
            if event is not None and (kind is None or event.get("type") == kind) and \
                    (before is None or float(event.get("t") or 0) < before):
                return event
        return None

    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read().splitlines()
            if size > TAIL_BYTES:
                tail = tail[1:]  # the first line may be cut
            found = pick(tail)
            if found is not None or size <= TAIL_BYTES:
                return found
            f.seek(0)
            return pick(f.read().splitlines())
    except OSError:
        return None
