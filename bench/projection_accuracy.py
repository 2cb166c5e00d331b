"""How well does train.target's projection (engine/telemetry/projection.py) predict the end of a run?

Trains runs to the end, as a user would (`python -m engine.cli run ...`, and one trial of
`cockpit-engine sweep`), each with `cost.price_per_hour` set so that dollars are projected too,
then replays each run's own events.jsonl: at 25% and at 50% of its steps, the projection the
engine's `projection` sink makes from the evaluations so far (the same function, `project`, fed
the same history, the seconds per step measured from the step events up to that evaluation and
the price) for the target "the run's final metric value" (and, as a second row, "95% of the way
from the first evaluation's value to the final one"), against what happened: the step at which
the run first reached that value and the wall time from the start of training to it. Reports the
relative error of the projected step, time and dollars (dollars = time x the configured price,
so its error is the time's), and the fit's residuals (RMS and largest) at 50% and on the whole run.

    python bench/projection_accuracy.py                       # three runs, a few minutes on 2 cores
    python bench/projection_accuracy.py --only digits --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contracts.events import read_events, replay  # noqa: E402
from engine.telemetry.projection import MIN_POINTS, fit, project  # noqa: E402

PRICE = 3.0  # $/h, a nominal on-demand GPU price: dollars are time x this

DIGITS = [
    "--set", "model.factory_args={width=16}", "--set", "train.epochs=16", "--set", "checkpoint.every_steps=100000",
    "--set", "schedule.warmup_steps=20",
]


def gpt_args() -> list[str]:
    std = sysconfig.get_paths()["stdlib"]
    return ["--set", f'data.root="{std}"', "--set", "data.max_bytes=200000",
            "--set", "model.factory_args={layers=2,dim=64,heads=2,context=64}", "--set", "train.epochs=10",
            "--set", "checkpoint.every_steps=100000", "--set", "schedule.warmup_steps=40"]


SWEEP_TOML = """
[model]
name = "small_cnn"
factory_args = { width = 16 }
[data]
name = "digits"
[optim]
name = "adamw"
lr = 0.003
[schedule]
name = "cosine"
warmup_steps = 20
[train]
epochs = 16
batch_size = 32
target = { metric = "val_accuracy", value = 0.99 }
[checkpoint]
every_steps = 100000
[cost]
price_per_hour = 3.0
[sweep]
enabled = true
trials = 1
pruner = "none"
[sweep.space]
"optim.lr" = { low = 0.001, high = 0.004, log = true }
"""


REUSE = False


def run(argv: list[str], env: dict[str, str]) -> None:
    if REUSE:
        return
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "engine.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:2])}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    print(f"  {' '.join(argv[:2])}: {time.monotonic() - t:.0f} s", file=sys.stderr)


def events(run_dir: Path) -> list[dict]:
    with open(run_dir / "events.jsonl", "rb") as f:
        return replay(list(read_events(f)))


def analyse(name: str, evs: list[dict], metric: str) -> dict:
    key = metric.removeprefix("val_")
    up = metric == "val_accuracy"
    start = next(e["t"] for e in evs if e["type"] == "state" and e.get("state") == "running")
    steps = [(e["t"], e["step"]) for e in evs if e["type"] == "step"]
    evals = [(e["step"], float(e["metrics"][key]), e["t"]) for e in evs if e["type"] == "eval"]
    total = evals[-1][0]
    history = [(s, v) for s, v, _ in evals]
    final = evals[-1][1]
    targets = {"final value": final,
               "95% of the way": evals[0][1] + 0.95 * (final - evals[0][1])}
    out = {"run": name, "metric": metric, "total_steps": total, "evaluations": len(evals), "final": final,
           "curve": history, "rows": []}
    whole = fit([s for s, _ in history], [v for _, v in history], metric)
    sign = 1 if up else -1
    out["residuals_all"] = {"rms": rms(whole.residuals), "max": max(abs(r) for r in whole.residuals),
                            "asymptote": sign * whole.a, "c": whole.c}
    for label, target in targets.items():
        met = [(s, t) for s, v, t in evals if (v >= target if up else v <= target)]
        actual_step, actual_t = met[0]
        actual_s = actual_t - start
        for progress in (0.25, 0.5):
            cut = [e for e in evals if e[0] <= progress * total]
            if len(cut) < MIN_POINTS:
                cut = evals[:MIN_POINTS]
            cut_step, _, cut_t = cut[-1]
            hist = [(s, v) for s, v, _ in cut]
            seen = [(t, s) for t, s in steps if t <= cut_t]
            s_per_step = (cut_t - seen[0][0]) / (cut_step - seen[0][1]) if seen and cut_step > seen[0][1] else None
            p = project(hist, metric, target, total, s_per_step, PRICE)
            curve = fit([s for s, _ in hist], [v for _, v in hist], metric)
            # the better-conditioned question: where does the curve fitted so far say the run ends?
            end = sign * curve.at(total)
            bound = 1.0 if up else 0.0
            row_end = {"projected_end": end, "end_error": (abs(bound - end) - abs(bound - final)) / abs(bound - final)}
            row = {"target": label, "target_value": target, "progress": round(cut_step / total, 3), **row_end,
                   "evaluations": len(cut), "actual_step": actual_step, "actual_s": round(actual_s, 1),
                   "projected_step": p["projected_step"], "interval": p["interval"], "message": p["message"],
                   "asymptote": p["asymptote"], "residuals_rms": rms(curve.residuals),
                   "residuals_max": max(abs(r) for r in curve.residuals)}
            if p["reached"]:
                row.update(step_error=(p["projected_step"] - actual_step) / actual_step, time_error=None)
            elif p["projected_step"] is not None:
                projected_s = (cut_t - start) + (p["projected_s"] or 0.0)
                row.update(projected_s=round(projected_s, 1),
                           projected_dollars=round(projected_s / 3600 * PRICE, 4),
                           actual_dollars=round(actual_s / 3600 * PRICE, 4),
                           step_error=(p["projected_step"] - actual_step) / actual_step,
                           time_error=(projected_s - actual_s) / actual_s)
            else:
                row.update(step_error=None, time_error=None)
            out["rows"].append(row)
    return out


def rms(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values))


def pct(x: float | None) -> str:
    return "not reached" if x is None else f"{x:+.0%}"


def markdown(results: list[dict]) -> str:
    lines = ["| run | target | at | evals | projected step (interval) | actual step | step error | "
             "projected time / $ | actual time / $ | time ($) error | fit residuals RMS / max |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            if row["message"].split(": ", 1)[-1].startswith("reached") or " reached at step" in row["message"]:
                lines.append(f"| {r['run']} ({r['metric']} {r['final']:.4g} at step {r['total_steps']}) | "
                             f"{row['target']} ({row['target_value']:.4g}) | {row['progress']:.0%} | "
                             f"{row['evaluations']} | already reached at step {row['actual_step']} | | | | | | "
                             f"{row['residuals_rms']:.4f} / {row['residuals_max']:.4f} |")
                continue
            iv = row["interval"] or {}
            span = f" ({iv.get('low')}-{iv.get('high') or 'never'})" if iv else ""
            proj = (f"{row['projected_s']:.0f} s / ${row['projected_dollars']:.3f}" if "projected_s" in row
                    else row["message"].split(": ", 1)[-1])
            lines.append(
                f"| {r['run']} ({r['metric']} {r['final']:.4g} at step {r['total_steps']}) | {row['target']} "
                f"({row['target_value']:.4g}) | {row['progress']:.0%} | {row['evaluations']} | "
                f"{row['projected_step'] or '—'}{span} | {row['actual_step']} | {pct(row['step_error'])} | {proj} | "
                f"{row['actual_s']:.0f} s / ${row['actual_s'] / 3600 * PRICE:.3f} | {pct(row['time_error'])} | "
                f"{row['residuals_rms']:.4f} / {row['residuals_max']:.4f} |")
    lines.append("")
    lines.append("The value at the run's last step that the curve fitted so far projects, against the value the run "
                 "ended with (error: of the distance to the metric's bound, the error rate 1 - accuracy or the loss):")
    lines.append("")
    lines.append("| run | metric: final value | 25%: evals, projected end value | error | 50%: projected end value | error |")
    lines.append("|---|---|---|---|---|---|")
    for r in results:
        ends = {row["progress"] <= 0.45: row for row in r["rows"] if row["target"] == "final value"}
        q, h = ends.get(True), ends.get(False)
        cell = lambda row: (f"{row['projected_end']:.4g} | {row['end_error']:+.0%}" if row else "| ")  # noqa: E731
        lines.append(f"| {r['run']} | {r['metric']}: {r['final']:.4g} | {q['evaluations'] if q else ''} "
                     f"({q['progress']:.0%}): {cell(q)} | {cell(h)} |")
    lines.append("")
    lines.append("| run | whole-run fit: residuals RMS / max | asymptote | c |")
    lines.append("|---|---|---|---|")
    for r in results:
        w = r["residuals_all"]
        lines.append(f"| {r['run']}, {r['metric']} | {w['rms']:.4f} / {w['max']:.4f} | {w['asymptote']:.4g} | {w['c']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["digits", "gpt", "sweep"], action="append")
    ap.add_argument("--runs-dir", help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--eval-every", type=int, default=None, metavar="STEPS",
                    help="train.eval_every_steps for the digits and gpt runs (default: an evaluation per epoch)")
    ap.add_argument("--reuse", action="store_true",
                    help="analyse the runs already in --runs-dir (from an earlier call) instead of training them again")
    ap.add_argument("--schedule", default="cosine", choices=["cosine", "constant"],
                    help="the digits and gpt runs' schedule.name (the demos': cosine)")
    args = ap.parse_args()
    global REUSE
    REUSE = args.reuse and bool(args.runs_dir)
    which = args.only or ["digits", "gpt", "sweep"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    tmp = tempfile.TemporaryDirectory() if not args.runs_dir else None
    runs = Path(args.runs_dir or tmp.name)
    results = []
    sched = ["--set", f'schedule.name="{args.schedule}"']
    if args.eval_every:
        sched += ["--set", f"train.eval_every_steps={args.eval_every}"]
    if "digits" in which:
        run(["run", "engine/demo.toml", "--runs-dir", str(runs), "--run-id", f"digits-{args.schedule}", *DIGITS, *sched,
             "--set", f"cost.price_per_hour={PRICE}"], env)
        for metric in ("val_accuracy", "val_loss"):
            results.append(analyse(f"digits small_cnn, {args.schedule}", events(runs / f"digits-{args.schedule}"), metric))
    if "gpt" in which:
        run(["run", "engine/demo_gpt.toml", "--runs-dir", str(runs), "--run-id", f"gpt-{args.schedule}", *gpt_args(), *sched,
             "--set", f"cost.price_per_hour={PRICE}"], env)
        for metric in ("val_loss", "val_accuracy"):
            results.append(analyse(f"text gpt, {args.schedule}", events(runs / f"gpt-{args.schedule}"), metric))
    if "sweep" in which:
        cfg = runs / "projsweep.toml"
        if not REUSE:
            cfg.write_text(SWEEP_TOML)
        run(["sweep", str(cfg), "--runs-dir", str(runs)], env)
        (trial,) = [p for p in runs.iterdir() if p.is_dir() and p.name.startswith("projsweep")]
        evs = events(trial)
        live = [e for e in evs if e["type"] == "projection"]
        assert live, "the sweep's trial made no projection events: train.target did not reach it"
        for metric in ("val_accuracy", "val_loss"):
            results.append(analyse(f"sweep trial (lr {trial_lr(trial):.3g}), cosine", evs, metric))
            results[-1]["live_projections"] = len(live)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(markdown(results))


def trial_lr(run_dir: Path) -> float:
    import tomllib

    return tomllib.loads((run_dir / "config.toml").read_text())["optim"]["lr"]


if __name__ == "__main__":
    main()
