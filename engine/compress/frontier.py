"""The compression frontier: points (a model at a precision) and which of them no other beats.

A point is on the frontier (`pareto: true`) when no other point is at least as good on every
axis and better on one. The axes: validation accuracy (higher is better), the artifact's file
size and its CPU latency (lower is better). Pure Python: the cockpit's chart reads the JSON.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable

#: (field, +1 where more is better, -1 where less is)
AXES = (("accuracy", 1), ("bytes", -1), ("latency_ms", -1))


def dominates(a: dict[str, Any], b: dict[str, Any], axes=AXES) -> bool:
    """a is at least as good as b on every axis and better on one."""
    better = False
    for key, sign in axes:
        x, y = sign * a[key], sign * b[key]
        if x < y:
            return False
        better = better or x > y
    return better


def mark_pareto(points: list[dict[str, Any]], axes=AXES) -> list[dict[str, Any]]:
    """Set each point's `pareto` (in place) and return the points."""
    for p in points:
        p["pareto"] = not any(dominates(q, p, axes) for q in points if q is not p)
    return points


def spread(values: list[float]) -> float | None:
    """The sample standard deviation over seeds (None with one seed)."""
    return statistics.stdev(values) if len(values) > 1 else None


def point(name: str, model: str, training: str, precision: str, accuracies: list[float], sizes: list[int],
          latencies: list[float], cost: dict[str, Any], artifact: str, runs: Iterable[str]) -> dict[str, Any]:
    """One row: accuracy the mean over seeds (with its spread), size the first seed's artifact,
    latency the lowest of the seeds' medians (every seed's model has the same architecture: a
    slower measurement is the machine being busy, not the model)."""
    return {"name": name, "model": model, "training": training, "precision": precision,
            "accuracy": statistics.fmean(accuracies), "accuracy_spread": spread(accuracies),
            "accuracies": accuracies, "bytes": sizes[0], "latency_ms": min(latencies), "latencies_ms": latencies,
            "train_s": cost.get("seconds"), "train_dollars": cost.get("dollars"), "artifact": artifact,
            "runs": list(runs), "pareto": False}


def _size(n: int) -> str:
    return f"{n / 1024:,.0f} KB" if n < 10 * 2**20 else f"{n / 2**20:,.1f} MB"


def _acc(p: dict[str, Any]) -> str:
    s = p.get("accuracy_spread")
    return f"{100 * p['accuracy']:.2f}%" + (f" ± {100 * s:.2f}" if s is not None else "")


def _cost(p: dict[str, Any]) -> str:
    if p.get("train_s") is None:
        return "-"
    dollars = p.get("train_dollars")
    return f"{p['train_s']:.0f} s" + (f" (${dollars:.4f})" if dollars is not None else "")


def markdown(report: dict[str, Any]) -> str:
    """frontier.md: the table, frontier points marked, and what the columns mean."""
    latency = report["latency_measured"]
    rows = [("point", "val accuracy", "file size", f"CPU latency ({latency})", "training", "frontier", "artifact")]
    for p in report["points"]:
        rows.append((p["name"], _acc(p), _size(p["bytes"]), f"{p['latency_ms']:.2f} ms", _cost(p),
                     "yes" if p["pareto"] else "", f"`{p['artifact']}`"))
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    seeds = report["seeds"]
    notes = [
        f"# Compression frontier of {report['run']}", "",
        f"Student: {report['student']['source']} ({report['student']['model']}, factory_args "
        f"{report['student']['factory_args']}); {len(seeds)} seed(s) {seeds}, "
        f"{', '.join(f'{k} {v}' for k, v in report['length'].items())} each, alone and distilled alike.", "",
        *lines, "",
        "val accuracy: mean over the seeds (± their standard deviation); file size: the .pt2 artifact; "
        f"latency: ms per batch of {report['batch']} on this CPU ({latency}; the median of {report['repeats']} "
        "runs, the lowest over the seeds); training: seconds (and "
        "dollars, when priced) from each run's goodput ledger, mean per seed (QAT includes its distilled start; "
        "int8 points share their float model's). frontier: no other point is at least as good on accuracy, "
        "size and latency and better on one.",
    ]
    for s in report.get("skipped", []):
        notes.append(f"\nskipped: {s['name']}: {s['reason']}")
    notes.append("\nload: torch.export.load(path).module() (images in [0, 1]; `import torchao` first for int8)")
    return "\n".join(notes) + "\n"
