"""`cockpit-engine goodput RUN ... | --sweep STUDY`: where a run's time and money went (its ledger).

Reads each run's newest `ledger` event (engine.telemetry.ledger; nothing is written) and prints
the classes, largest first, with their seconds, share and dollars, the goodput, and the remedy
for the largest loss; for several runs (a sweep's trials) one table each and their sum.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.errors import BadInput
from engine.telemetry.ledger import CLASSES, last_ledger, worst


def report(run: Path) -> dict[str, Any]:
    """The run's ledger as `goodput --json` prints it."""
    ledger = last_ledger(run / "events.jsonl")
    if ledger is None:
        raise BadInput(f"{run}: no ledger yet (the engine writes one at its logging steps and at each session's end)")
    return {"run": run.name, "step": ledger.get("step"), "sessions": ledger.get("sessions"),
            "total_s": ledger["total_s"], "goodput": ledger["goodput"], "dollars": ledger.get("dollars"),
            "classes": ledger["classes"], "worst": ledger.get("worst"), "final": ledger.get("final", False),
            "queued_s": ledger.get("queued_s", 0.0)}


def combined(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs' ledgers added up (a sweep's trials)."""
    classes = {c: {"seconds": sum(r["classes"].get(c, {}).get("seconds", 0.0) for r in reports),
                   "dollars": sum(r["classes"].get(c, {}).get("dollars", 0.0) for r in reports)} for c in CLASSES}
    total = sum(r["total_s"] for r in reports)
    priced = [r["dollars"] for r in reports if r.get("dollars") is not None]
    return {"run": f"{len(reports)} runs", "total_s": total,
            "goodput": classes["productive"]["seconds"] / total if total else 0.0,
            "dollars": sum(priced) if priced else None, "classes": classes,
            "worst": worst({c: v["seconds"] for c, v in classes.items()})}


def table(r: dict[str, Any]) -> str:
    total = r["total_s"] or 1.0
    lines = [f"{r['run']}: {r['total_s']:,.1f} s, goodput {r['goodput']:.1%}"
             + (f", {r['dollars']:.4f} USD" if r.get("dollars") is not None else "")
             + (f" ({r['sessions']} sessions)" if (r.get("sessions") or 1) > 1 else "")]
    lines.append(f"  {'class':<14}{'seconds':>12}{'share':>8}{'dollars':>12}")
    order = sorted(r["classes"].items(), key=lambda kv: -kv[1]["seconds"])
    for name, entry in order:
        lines.append(f"  {name:<14}{entry['seconds']:>12,.1f}{entry['seconds'] / total:>8.1%}"
                     f"{entry['dollars']:>12.4f}")
    if r.get("queued_s"):
        lines.append(f"  waiting to start (a Slurm job's queue and set-up, outside the total): {r['queued_s']:,.1f} s")
    if r.get("worst"):
        lines.append(f"  largest loss: {r['worst']['class']} ({r['worst']['seconds']:,.1f} s): {r['worst']['remedy']}")
    return "\n".join(lines) + "\n"


def add_parser(sub: Any) -> None:
    """The `goodput` subcommand of cockpit-engine."""
    p = sub.add_parser(
        "goodput", help="where a run's time and money went: productive training vs start-up, data, "
        "checkpoints, evaluation, pauses, redone steps",
        description="Read runs' ledgers (running or finished; nothing is written) and print each class "
        "of their time, largest first, in seconds, share and dollars, with the goodput (productive "
        "time over total) and the remedy for the largest loss.")
    p.add_argument("runs", nargs="*", help="run directories, or run ids under the runs directory")
    p.add_argument("--sweep", metavar="STUDY", help="every trial run of this sweep (runs named STUDY-tNNN), together")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--runs-dir", help="root of run directories")
    p.set_defaults(func=command)


def command(args: Any) -> int:
    from contracts.layout import find_run, runs_root

    root = runs_root(args.runs_dir, None)
    runs = [find_run(r, root) for r in args.runs]
    if args.sweep:
        trials = sorted(p for p in root.glob(f"{args.sweep}-t[0-9][0-9][0-9]*") if p.is_dir())
        if not trials:
            raise BadInput(f"--sweep {args.sweep!r}: no trial runs named {args.sweep}-tNNN under {root}")
        runs += trials
    if not runs:
        raise BadInput("name a run (or several), or --sweep STUDY")
    reports = [report(r) for r in runs]
    out = reports[0] if len(reports) == 1 else {"runs": reports, "total": combined(reports)}
    if args.json:
        print(json.dumps(out))
    else:
        print("".join(table(r) for r in reports) + (table(out["total"]) if len(reports) > 1 else ""), end="")
    return 0
