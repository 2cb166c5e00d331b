"""`cockpit-engine compress RUN`: the compression frontier of a finished run, as one job.

The run is the teacher. The job trains the student alone and the distilled student (same seeds,
same steps; the student from `--student CONFIG` or `--preset half-width`), fine-tunes each
distilled student with quantization-aware training where it applies, makes a post-training int8
model of every float one (static for conv nets, dynamic for Linear-only models) through the
quantize command's own function, and writes RUN/compress/frontier.json and frontier.md: one row
per point with accuracy, file size, CPU latency and training cost, the frontier marked.

Everything is checked first (engine.compress.plan): bad input exits 2 with nothing written.
Each training is a real engine run under RUN/compress/runs/ (or --runs-dir), started as a user
would start it; progress goes to stderr and RUN/compress/progress.jsonl.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import textwrap
import sys
from pathlib import Path

from contracts.errors import BadInput
from engine.config.loading import positive_int

LOG = "compress.log"

EPILOG = """exit codes: 0 done, 1 a training or measurement failed (the message names it), 2 bad
input (a teacher run that did not finish, an invalid student config, a preset for a model it cannot
halve, torchao missing); nothing is written then.

examples:
  cockpit-engine compress runs/demo --preset half-width --seeds 2 --epochs 20
  cockpit-engine compress runs/demo --student student.toml --steps 400 --no-qat --json
  cockpit-engine compress runs/demo --detach      (in the background; progress in RUN/compress/progress.jsonl)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="the compression frontier of a finished run: students, distillation, int8",
                       description=textwrap.fill(__doc__.split("\n\n")[1].replace("\n", " "), 100), epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the teacher: a finished run directory, or run id under the runs directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--student", metavar="CONFIG", help="the student's TOML config (same data as the teacher)")
    g.add_argument("--preset", choices=["half-width"],
                   help="the teacher's model with its width halved (small_cnn width, mlp hidden, gpt dim); the default")
    p.add_argument("--seeds", type=int, default=2, metavar="N", help="train each student with seeds 1..N (default 2)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, metavar="E", help="epochs for every student (default: its config's)")
    length.add_argument("--steps", type=int, metavar="S", help="optimizer steps for every student")
    p.add_argument("--qat", action=argparse.BooleanOptionalAction, default=True,
                   help="fine-tune each distilled student with quantization-aware training (a quarter of the "
                        "students' length, lr / 10) and convert it (default: on)")
    p.add_argument("--repeats", type=positive_int, default=20, metavar="N", help="timed runs per latency (median)")
    p.add_argument("--calibration-batches", type=positive_int, default=16, metavar="N",
                   help="training batches static int8 calibrates on (default 16)")
    p.add_argument("--no-compile", action="store_true",
                   help="measure latency and accuracy eagerly (quicker; static int8 is slow uncompiled)")
    p.add_argument("--runs-dir", help="where the student runs go (default: RUN/compress/runs)")
    p.add_argument("--json", action="store_true", help="print frontier.json instead of the table")
    p.add_argument("--detach", action="store_true",
                   help="check, then run in the background as its own session; output in RUN/compress/compress.log")
    p.add_argument("--detached-child", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from contracts.layout import find_run, runs_root
    from engine.compress.plan import make_plan

    run = find_run(args.run, runs_root(None, None))
    plan = make_plan(run, args.student, args.preset, args.seeds, args.epochs, args.steps, args.qat, args.runs_dir)
    plan.compile_too, plan.repeats, plan.calibration_batches = not args.no_compile, args.repeats, args.calibration_batches
    if args.detach:
        return _detach(plan.out)
    from contracts.events import EXIT_FAILED
    from engine.compress.children import ChildFailed
    from engine.compress.job import FRONTIER_JSON, FRONTIER_MD, run_job

    try:
        report = run_job(plan)
    except ChildFailed as exc:
        print(f"cockpit-engine: compress: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        import json

        print(json.dumps(report, indent=1))
    else:
        print((plan.out / FRONTIER_MD).read_text(), end="")
    print(f"wrote {plan.out / FRONTIER_JSON}", file=sys.stderr)
    return 0


def _detach(out: Path) -> int:
    """The same command in a new session (it checks again: nothing has changed), output to the log."""
    argv = [a for a in sys.argv[1:] if a != "--detach"]
    if "compress" not in argv:  # called as a function (tests): rebuild nothing, refuse
        raise BadInput("--detach: only from the command line")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(out / LOG, "ab") as log:
        child = subprocess.Popen([sys.executable, "-m", "engine.cli", *argv, "--detached-child"],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
    print(f"started compress of {out.parent} (pid {child.pid}): progress in {out / 'progress.jsonl'}, "
          f"log {out / LOG}")
    return 0

