"""What `cockpit-engine compress` wrote under RUN/compress/, read for the cockpit (no torch):
frontier.json (the points, frontier marked) and progress.jsonl (one record per stage line)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

COMPRESS, FRONTIER, PROGRESS = "compress", "frontier.json", "progress.jsonl"
#: The chart's x axes: (field of a point, axis label, how a value is shown).
X_AXES = {"bytes": ("file size (KB)", 1 / 1024), "latency_ms": ("CPU latency (ms)", 1.0)}


def frontier_path(run: Path) -> Path:
    return run / COMPRESS / FRONTIER


def has_compress(run: Path) -> bool:
    """A compress job has run, or runs, on this run (its folder has a frontier or a progress file)."""
    return frontier_path(run).is_file() or (run / COMPRESS / PROGRESS).is_file()


def read_frontier(run: Path) -> dict[str, Any] | None:
    """frontier.json, when present and well formed (points each with a name, accuracy, bytes,
    latency_ms and pareto); else None."""
    try:
        report = json.loads(frontier_path(run).read_text())
    except (OSError, ValueError):
        return None
    points = report.get("points") if isinstance(report, dict) else None
    if not isinstance(points, list):
        return None
    good = [p for p in points if isinstance(p, dict) and isinstance(p.get("name"), str)
            and all(isinstance(p.get(k), (int, float)) for k in ("accuracy", "bytes", "latency_ms"))]
    return {**report, "points": good}


def read_progress(run: Path) -> list[dict[str, Any]]:
    """progress.jsonl's records (a half-written last line is skipped)."""
    try:
        text = (run / COMPRESS / PROGRESS).read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_running(records: list[dict[str, Any]]) -> bool:
    """The newest record is a stage still running, and its process lives."""
    return bool(records) and records[-1].get("state") in ("running", "done") and _alive(records[-1].get("pid"))


def progress_line(record: dict[str, Any]) -> str:
    """`3/8 distilled student seed 1: step 120/400` (or the stage's message)."""
    head = f"{record.get('stage', '?')}/{record.get('stages', '?')} {record.get('name', '')}"
    if record.get("state") == "finished":
        return str(record.get("message", "finished"))
    if record.get("step") is not None:
        total = record.get("total_steps")
        return f"{head}: step {record['step']}" + (f"/{total}" if total else "")
    if record.get("message"):
        return f"{head}: {record.get('state')}: {record['message']}"
    return f"{head}: {record.get('state', '')}"


def scatter(points: list[dict[str, Any]], x: str) -> list[tuple[float, float, str, bool]]:
    """(x, accuracy in %, name, on the frontier) per point, x in the axis' unit."""
    scale = X_AXES[x][1]
    return [(p[x] * scale, 100 * p["accuracy"], p["name"], bool(p.get("pareto"))) for p in points]
