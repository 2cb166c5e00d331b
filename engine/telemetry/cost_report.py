"""`cockpit-engine cost RUN`: what a run has cost and will cost, and what the rest would cost elsewhere (read-only)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.config.price_table import load_table
from contracts.errors import BadInput
from contracts.layout import RunLayout
from engine.telemetry.cost import RunShape
from engine.telemetry.cost_ledger import _num, events_backwards, last_session
from engine.telemetry.flops import peak_tflops

#: The MFU assumed for the estimate where the run measured none (no known peak for its device).
ASSUMED_MFU = 0.4


def _last(events: Path, kind: str) -> dict[str, Any] | None:
    return next((e for e in events_backwards(events) if e.get("type") == kind), None)


def _config(run: Path) -> Any:
    from engine.config import loading as config_mod

    return config_mod.load(RunLayout(run).config, [])


def _state(run: Path, events: Path) -> str | None:
    try:
        status = json.loads(RunLayout(run).status.read_text())
        if isinstance(status.get("state"), str):
            return status["state"]
    except (OSError, ValueError):
        pass
    last = _last(events, "state")
    return last.get("state") if last else None


def estimate(step_event: dict[str, Any] | None, shape: RunShape, remaining: int | None,
             total: int | None) -> dict[str, Any]:
    """What the rest (and the whole) of the run would cost on each instance type of the table, at
    this run's measured FLOP rate's MFU (or an assumed one) and each GPU's peak, scaling perfectly
    over the instance's GPUs: an estimate, never a measurement."""
    table = load_table()
    out: dict[str, Any] = {"label": "estimate", "table": table.source, "instances": []}
    e = step_event or {}
    tflops, sps = _num(e.get("tflops")), _num(e.get("samples_per_s"))
    if tflops is None or not sps or remaining is None or total is None:
        out["unavailable"] = "the run's step events carry no FLOP rate yet (tflops), so nothing can be estimated"
        return out
    world = e.get("world_size") if isinstance(e.get("world_size"), int) else 1
    per_sample = tflops * world / sps  # TFLOP per sample, forward and backward
    per_step = per_sample * shape.samples_per_step(world)
    mfu = _num(e.get("mfu"))
    measured = mfu is not None and mfu > 0
    mfu = mfu if measured else Decimal(str(ASSUMED_MFU))
    out.update(mfu=float(mfu), mfu_measured=measured, tflop_per_step=float(per_step),
               remaining_tflop=float(per_step * remaining),
               basis=(f"the run's measured {float(mfu):.1%} MFU" if measured else
                      f"an assumed {float(mfu):.0%} MFU (the run's device has no known peak)")
               + " of each GPU's peak dense bf16 TFLOP/s, scaling perfectly over the instance's GPUs; "
               "compute only (no evaluation, data loading or start-up); on-demand prices from the "
               f"{table.source}")
    for row in sorted(table.instances.values(), key=lambda r: r.per_hour):
        peak = peak_tflops(row.gpu)
        if not peak:
            continue
        rate = mfu * Decimal(str(peak)) * row.gpus  # TFLOP/s
        hours = per_step * remaining / rate / 3600
        whole = per_step * total / rate / 3600
        out["instances"].append({
            "instance_type": row.instance_type, "gpu": row.gpu, "gpus": row.gpus,
            "price_per_hour": float(row.per_hour), "remaining_hours": float(hours),
            "remaining_cost": float(hours * row.per_hour), "whole_run_cost": float(whole * row.per_hour)})
    return out


def report(run: Path, now: float | None = None) -> dict[str, Any]:
    """The report as a dictionary (what --json prints)."""
    events = RunLayout(run).events
    if not RunLayout(run).config.is_file() or not events.is_file():
        raise BadInput(f"cost {str(run)!r}: not a run directory of ours (expected config.toml and events.jsonl in it)")
    cfg = _config(run)
    shape = RunShape.of(cfg)
    session = last_session(events)
    step_event = session.last_step if session and session.last_step else _last(events, "step")
    batches = step_event.get("batches_per_epoch") if step_event else None
    total = shape.total_steps(batches) if isinstance(batches, int) and batches > 0 else None
    step = step_event.get("step") if step_event else None
    remaining = max(0, total - step) if total is not None and isinstance(step, int) else None
    out: dict[str, Any] = {"run": run.name, "state": _state(run, events), "step": step, "total_steps": total,
                           "remaining_steps": remaining}
    if session is None:
        out["price"] = None
        out["why_no_price"] = ("no cost events: no price was known (set cost.price_per_hour or "
                               "cost.instance_type and resume)")
    else:
        c = session.cost
        spent = session.total()
        projected = _num(c.get("projected"))
        out.update({
            "price_per_hour": c.get("price_per_hour"), "currency": c.get("currency", "USD"),
            "source": c.get("source"), "price_age_s": c.get("price_age_s"), "as_of": session.t_end,
            "lifecycle": c.get("lifecycle"), "instance_type": c.get("instance_type"),
            "accumulated": float(spent), "per_hour": c.get("price_per_hour"),
            "per_epoch": c.get("per_epoch"), "per_1k_samples": c.get("per_1k_samples"),
            "projected": None if projected is None else float(projected + spent - _num(c["accumulated"])),
            "on_demand_per_hour": c.get("on_demand_per_hour"),
            "savings": float(session.savings()) if c.get("savings") is not None else None,
            "lost": c.get("lost", 0.0), "lost_steps": c.get("lost_steps", 0)})
    out["estimate"] = estimate(step_event, shape, remaining, total)
    out["generated_at"] = round(time.time() if now is None else now, 3)
    return out


def _money(value: Any, cur: str, places: int = 4) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{value:.{places}f} {cur}"


def _age(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "fixed"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} old"
    return f"{seconds:.0f} s old"


def table(r: dict[str, Any]) -> str:
    """The report as text: the run's money, then the estimate for other instance types."""
    total = r.get("total_steps")
    lines = [f"run          {r['run']}  ({r.get('state') or '?'}, step {r.get('step')}/{total if total else '?'})"]
    if "why_no_price" in r:
        lines.append(f"price        unknown: {r['why_no_price']}")
    else:
        cur = r.get("currency", "USD")
        where = r.get("source") or "?"
        kind = f", {r['lifecycle']} {r.get('instance_type') or ''}".rstrip() if r.get("lifecycle") else ""
        lines += [
            f"price        {_money(r.get('price_per_hour'), cur)}/h  ({where}, {_age(r.get('price_age_s'))}{kind})",
            f"spent        {_money(r.get('accumulated'), cur)}  (as of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['as_of']))})",
            f"per epoch    {_money(r.get('per_epoch'), cur)}",
            f"per 1k samp. {_money(r.get('per_1k_samples'), cur, 6)}",
            f"projected    {_money(r.get('projected'), cur)}  (at the measured rate, {r.get('remaining_steps')} steps to go)",
            f"lost         {_money(r.get('lost'), cur)}  ({r.get('lost_steps', 0)} steps redone after interruptions)"]
        if r.get("savings") is not None:
            lines.append(f"saved        {_money(r.get('savings'), cur)}  (spot, against "
                         f"{_money(r.get('on_demand_per_hour'), cur)}/h on demand)")
    est = r["estimate"]
    lines.append("")
    if "unavailable" in est:
        lines.append(f"other instance types: {est['unavailable']}")
        return "\n".join(lines) + "\n"
    lines.append(f"ESTIMATE: the remaining {r.get('remaining_steps')} steps ({est['remaining_tflop']:.4g} TFLOP) "
                 "on other instance types,")
    lines.append(f"  at {est['basis']}.")
    head = f"  {'instance':<15} {'GPUs':<9} {'USD/h':>9} {'hours':>10} {'remaining':>11} {'whole run':>11}"
    lines.append(head)
    for row in est["instances"]:
        lines.append(f"  {row['instance_type']:<15} {str(row['gpus']) + 'x ' + row['gpu']:<9} "
                     f"{row['price_per_hour']:>9.4f} {row['remaining_hours']:>10.4g} "
                     f"{row['remaining_cost']:>11.4g} {row['whole_run_cost']:>11.4g}")
    return "\n".join(lines) + "\n"


def add_parser(sub: Any) -> None:
    """The `cost` subcommand of cockpit-engine."""
    p = sub.add_parser(
        "cost", help="what a run has cost, will cost, and would cost on other instance types",
        description="Read a run's events (running or finished; nothing is written): dollars so far, "
        "per hour (with the price's source and age), per epoch and per 1,000 samples, projected to "
        "the end, saved on spot, lost to interruptions; and an estimate of what the remaining steps "
        "would cost on the instance types of the shipped price table.")
    p.add_argument("run", help="run directory, or run id under the runs directory")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--runs-dir", help="root of run directories")
    p.set_defaults(func=command)


def command(args: Any) -> int:
    from contracts.layout import find_run, runs_root

    run = find_run(args.run, runs_root(args.runs_dir, None))
    r = report(run)
    print(json.dumps(r) if args.json else table(r), end="\n" if args.json else "")
    return 0
