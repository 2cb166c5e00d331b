"""Events in words: one line per event worth telling, for engine.log and the console."""

from __future__ import annotations

from typing import Any


def describe(event: dict[str, Any]) -> str | None:
    """A one-line human description of an event (None: not worth a line)."""
    kind = event["type"]
    if kind == "step":
        return (f"epoch {event['epoch'] + 1} step {event['step']} loss {event['loss']:.4f} "
                f"lr {event['lr']:.3g} {event['samples_per_s']:,.0f} samples/s "
                f"ETA {fmt_duration(event.get('eta_s'))}")
    if kind == "eval":
        parts = " ".join(f"{k} {v:.4f}" for k, v in event["metrics"].items())
        where = f"step {event['step']} (inside epoch {event['epoch'] + 1})" if event.get("partial") else \
            f"epoch {event['epoch'] + 1}"
        return f"{where} validation: {parts}"
    if kind == "state":
        if event["state"] == "checkpointing":
            return None  # the checkpoint event gets its own line
        extra = f" ({event['reason']})" if event.get("reason") else ""
        return f"state {event['state']}{extra}"
    if kind == "checkpoint":
        return (f"checkpoint saved at step {event['step']}: {event['path']} "
                f"({event['bytes'] / 1e6:.1f} MB, {event['seconds']:.2f} s)")
    if kind == "distill":
        parts = " ".join(f"{k} {v:.4f}" for k, v in event["metrics"].items())
        return (f"distilling from {event['teacher']} (T {event['temperature']:g}, alpha {event['alpha']:g}): "
                f"teacher validation {parts}")
    if kind == "s3":
        if event.get("ok"):
            return (f"s3: uploaded {event.get('file')} (step {event.get('step')}, "
                    f"{(event.get('bytes') or 0) / 1e6:.1f} MB, {event.get('seconds', 0):.2f} s) to {event.get('uri')}")
        return f"s3: {event.get('action')} failed: {event.get('error')}"
    if kind == "doctor":
        return f"doctor: {event['message']}"
    if kind == "resume":
        return f"resumed from {event['checkpoint']} at step {event['step']}"
    if kind == "target":
        what = f"{event['metric']} {event['value']:g}" if event.get("metric") else "none"
        stop = ", the run finishes when it is reached" if event.get("stop") and event.get("metric") else ""
        return f"target {what} from step {event['step']}{stop} (set by {event.get('by')})"
    if kind == "alert":
        return f"alert ({event['kind']}, {event['severity']}): {event['message']}"
    if kind == "log":
        return f"{event['level']}: {event['message']}"
    if kind == "error":
        return f"error: {event['message']}\n{event.get('traceback', '')}".rstrip()
    return None


def fmt_duration(seconds: float | None) -> str:
    """3h02m, 4m05s, 12s, or '?'."""
    if seconds is None:
        return "?"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Narrator:
    """describe() with memory: a state already announced is not announced again."""

    def __init__(self) -> None:
        self.state: str | None = None

    def __call__(self, event: dict[str, Any]) -> str | None:
        if event["type"] == "state":
            if event["state"] in (self.state, "checkpointing"):
                return None
            self.state = event["state"]
        return describe(event)
