"""`cockpit`: the terminal cockpit for training runs."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from cockpit.runs import find_run, list_runs, runs_root

EPILOG = """keys: c checkpoint, p pause/continue, s stop, r resume, n new run, l runs list,
f apply the doctor's remedy (resumes with the field it names changed), in the runs list
space marks runs, o compares them and s cancels a Slurm job (scancel),
y log-scale loss, a accuracy/lr chart, t sweep trials, b TensorBoard, ctrl+t theme, ? help,
q quit (the engine keeps training), ctrl+p palette.

examples:
  cockpit                       the runs directory: pick a run to watch
  cockpit demo                  start the demo run (bundled digits) and watch it
  cockpit demo --gpt            the language-model demo (a transformer on Python's own source)
  cockpit demo --sweep          the demo sweep: 6 short Optuna trials, on the trials screen
  cockpit attach RUN            watch a run again, with its whole history
  cockpit run run.toml --gpus 4 start a run on 4 local GPUs (DDP, torchrun underneath) and watch it
  cockpit runs                  list runs without the UI (--json: for scripts)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cockpit", description="Watch and drive PyTorch training runs in the terminal.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", help="root of run directories (default: $COCKPIT_RUNS or ./runs)")
    parser.add_argument("--storage", metavar="URL",
                        help="the sweeps' Optuna storage for the trials screen (default: $COCKPIT_SWEEP_STORAGE, "
                             "else sqlite:///<runs-dir>/sweeps.db)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("demo", help="start the demo run and attach to it")
    p.add_argument("--gpt", action="store_true",
                   help="the language-model demo: a byte-level transformer on Python's own standard library")
    p.add_argument("--sweep", action="store_true",
                   help="the demo sweep: 6 short trials of the digits demo (Optuna), shown on the trials screen")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a demo config field, e.g. --set train.epochs=100")
    p = sub.add_parser("attach", help="attach to a run (a path or a run id)")
    p.add_argument("run")
    p = sub.add_parser("run", help="start a new run from a config file and attach to it")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nproc", type=int, metavar="N", help="data-parallel on N processes (torchrun underneath)")
    g.add_argument("--gpus", type=int, metavar="N", help="data-parallel on N local GPUs")
    p = sub.add_parser("runs", help="list runs and exit (the runs screen's columns)")
    p.add_argument("--json", action="store_true", help="one JSON array of the runs, for scripts")
    return parser


def _num(value):
    """A finite number, else None (status.json is whatever JSON a file holds)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def run_record(info) -> dict:
    """One run as `cockpit runs --json` gives it: the runs screen's columns, as values."""
    metrics = info.last_eval.get("metrics")
    metrics = metrics if isinstance(metrics, dict) else {}
    updated = _num(info.status.get("updated_at"))
    return {"run": info.name, "path": str(info.path), "state": info.state, "step": _num(info.status.get("step")),
            "loss": _num(info.status.get("loss")), "accuracy": _num(metrics.get("accuracy")),
            "updated_at": updated, "age_s": None if updated is None else round(info.age_s, 1),
            "host": info.status.get("host") if isinstance(info.status.get("host"), str) else None,
            "slurm_job": info.job_id, "slurm_state": info.job.label if info.job is not None else None}


def slurm_jobs() -> list | None:
    """This user's Slurm jobs where Slurm is configured here (None otherwise, or if squeue fails)."""
    from contracts import slurm

    if not slurm.configured():
        return None
    import pwd

    try:
        return slurm.jobs(user=pwd.getpwuid(os.geteuid()).pw_name)
    except (slurm.SlurmError, KeyError) as e:
        print(f"cockpit: Slurm jobs not shown: {e}", file=sys.stderr)
        return None


def print_runs(root: Path, as_json: bool = False) -> int:
    runs = list_runs(root, slurm_jobs())
    if as_json:
        print(json.dumps([run_record(info) for info in runs], indent=1))
        return 0
    if not runs:
        print(f"no runs under {root}")
        return 0
    from cockpit.sanitize import clean
    from cockpit.widgets.checkpoints_pane import fmt_age

    slurm = any(info.job_id is not None for info in runs)  # the Slurm columns only where there is a job
    head = f"{'run':<40} {'state':<11} {'step':>8} {'loss':>8} {'acc':>6} {'age':>6}  "
    print(head + (f"{'host':<16}  {'job':<10} slurm" if slurm else "host"))
    for info in runs:
        r = run_record(info)
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else ""
        acc = f"{r['accuracy']:.3f}" if r["accuracy"] is not None else ""
        step = str(int(r["step"])) if r["step"] is not None else ""
        age = fmt_age(r["age_s"]) if r["age_s"] is not None else ""
        line = f"{info.name:<40} {r['state']:<11} {step:>8} {loss:>8} {acc:>6} {age:>6}  "
        if slurm:
            job = "" if r["slurm_job"] is None else str(r["slurm_job"])
            line += f"{r['host'] or '':<16}  {job:<10} {r['slurm_state'] or ''}".rstrip()
        else:
            line += r["host"] or ""
        print(clean(line))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = runs_root(args.runs_dir)
    if args.command == "runs":
        return print_runs(root, args.json)
    run, launch = None, None
    if args.command == "attach":
        run = find_run(args.run, root)
        if run is None:
            print(f"cockpit: run {args.run!r}: no run directory here or under {str(root)!r}", file=sys.stderr)
            return 2
    elif args.command == "demo":
        if args.gpt and args.sweep:
            print("cockpit: --sweep with --gpt: the demo sweep is of the digits demo; drop one of them",
                  file=sys.stderr)
            return 2
        launch = ("demo-sweep" if args.sweep else "demo-gpt" if args.gpt else "demo", args.set)
    elif args.command == "run":
        n = args.gpus if args.gpus is not None else args.nproc
        if n is not None and n < 1:
            print(f"cockpit: --{'gpus' if args.gpus is not None else 'nproc'} {n}: expected 1 or more",
                  file=sys.stderr)
            return 2
        sets = [*args.set, *([f"distributed.nproc={n}"] if n is not None else []),
                *(["train.device='cuda'"] if args.gpus is not None else [])]
        launch = ("run", [args.config, *sets])
    from cockpit.app import CockpitApp

    CockpitApp(root, run=run, launch=launch, storage=args.storage).run()
    return 0


def entry() -> None:
    sys.exit(main())
