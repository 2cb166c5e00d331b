"""The newest `ledger` event, kept as numbers and clean strings (the goodput pane draws it).

A ledger event (engine/telemetry/ledger.py) is cumulative over the run's sessions, so only the
newest counts. Everything a pane formats as a number is a finite number here or absent; every
string has passed through `clean`.
"""

from __future__ import annotations

from typing import Any

from cockpit.sanitize import clean
from cockpit.step_fold import number

#: The ledger's top-level numbers (`queued_s`: a Slurm job's waits, outside the total).
NUMBERS = ("step", "steps", "sessions", "total_s", "goodput", "dollars", "queued_s")
#: The `checkpoint_interval` numbers (checkpoint.every_steps = "auto").
INTERVAL_NUMBERS = ("every_steps", "interval_s", "stall_s", "mtbi_s", "step_s", "expected_lost_s")
#: At most this many classes are kept (the engine sends ten), names at most this long.
MAX_CLASSES, MAX_NAME = 16, 24


def fold_ledger(e: dict[str, Any]) -> dict[str, Any]:
    """The event's numbers, its classes' seconds and dollars, the largest loss and the interval."""
    out: dict[str, Any] = {k: number(e.get(k)) for k in NUMBERS if number(e.get(k)) is not None}
    out["final"] = e.get("final") is True
    classes: dict[str, dict[str, float]] = {}
    raw = e.get("classes")
    if isinstance(raw, dict):
        for name, entry in list(raw.items())[:MAX_CLASSES]:
            if not isinstance(entry, dict):
                continue
            seconds = number(entry.get("seconds"))
            if seconds is None or seconds < 0:
                continue
            dollars = number(entry.get("dollars"))
            classes[clean(str(name))[:MAX_NAME]] = {"seconds": seconds,
                                                    **({"dollars": dollars} if dollars is not None else {})}
    out["classes"] = classes
    worst = e.get("worst")
    if isinstance(worst, dict) and worst.get("class") is not None:
        out["worst"] = {"class": clean(str(worst["class"]))[:MAX_NAME], "seconds": number(worst.get("seconds")),
                        "remedy": clean(str(worst.get("remedy") or ""))[:300]}
    interval = e.get("checkpoint_interval")
    if isinstance(interval, dict):
        kept = {k: number(interval.get(k)) for k in INTERVAL_NUMBERS if number(interval.get(k)) is not None}
        if "every_steps" in kept:
            kept["source"] = clean(str(interval.get("source") or ""))[:80]
            kept["stall_measured"] = interval.get("stall_measured") is not False
            out["checkpoint_interval"] = kept
    return out


def shares(ledger: dict[str, Any]) -> list[tuple[str, float]]:
    """(class, share of the total) for the classes with time: productive first, then the losses,
    largest first (ties by name, so the order never flickers)."""
    classes = ledger.get("classes") or {}
    total = ledger.get("total_s") or sum(c["seconds"] for c in classes.values())
    if not total or total <= 0:
        return []
    parts = [(name, c["seconds"] / total) for name, c in classes.items() if c["seconds"] > 0]
    productive = [p for p in parts if p[0] == "productive"]
    losses = sorted((p for p in parts if p[0] != "productive"), key=lambda p: (-p[1], p[0]))
    return productive + losses


def cells(parts: list[tuple[str, float]], width: int) -> list[int]:
    """Each part's cells of a bar `width` wide (largest remainders: the cells add up to the shares'
    sum of the width, so a full ledger fills the bar exactly)."""
    exact = [share * width for _, share in parts]
    whole = [int(x) for x in exact]
    room = min(width, round(sum(exact))) - sum(whole)
    for i in sorted(range(len(exact)), key=lambda i: -(exact[i] - whole[i]))[:max(0, room)]:
        whole[i] += 1
    return whole
