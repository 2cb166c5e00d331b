"""`cockpit-engine sweep CONFIG`: validate, then run a sweep worker (here, or detached)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from contracts.errors import BadInput
from contracts.events import EXIT_STOPPED

EPILOG = """The config needs [sweep] enabled = true and a [sweep.space]. The study lives in
<runs-dir>/sweeps.db unless --storage names another (any Optuna RDB URL, e.g.
postgresql+psycopg2://user:password@host/db for workers on several machines). Running the
same command again continues the study; so does a second worker beside the first.

examples:
  cockpit-engine sweep sweep.toml --trials 20 --parallel 2
  cockpit-engine sweep sweep.toml --detach --runs-dir runs
  cockpit-engine sweep sweep.toml --storage postgresql+psycopg2://optuna:***@db.lan/sweeps
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run an Optuna sweep worker over the config's [sweep.space]",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="path of the TOML config file with a [sweep] section")
    p.add_argument("--trials", type=int, metavar="N", help="trials in the study (default: sweep.trials)")
    p.add_argument("--parallel", type=int, default=1, metavar="K",
                   help="trials at once in this worker (one per free GPU on a multi-GPU box; default 1)")
    p.add_argument("--storage", metavar="URL", help="Optuna RDB storage URL (default: sqlite:///<runs-dir>/sweeps.db)")
    p.add_argument("--study", metavar="NAME", help="study name (default: the config file's name without .toml)")
    p.add_argument("--runs-dir", help="root of run directories (default: $COCKPIT_RUNS or ./runs)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config field for every trial (repeatable)")
    p.add_argument("--detach", action="store_true",
                   help="run the worker in the background as its own session; log in <runs-dir>/sweeps/<study>.log")
    p.add_argument("--json", action="store_true", help="print the final summary as one JSON object")
    p.add_argument("--heartbeat-s", type=int, metavar="S",
                   help="seconds between trial heartbeats (default 10, or $COCKPIT_SWEEP_HEARTBEAT_S)")
    p.add_argument("--grace-s", type=int, metavar="S",
                   help="seconds without a heartbeat before a trial counts as dead (default 60, or $COCKPIT_SWEEP_GRACE_S)")
    p.add_argument("--detached-child", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from engine.config import loading
    from contracts.layout import runs_root
    from engine.sweep.storage import GRACE_S, HEARTBEAT_S, default_url, mask_url

    cfg = loading.load(args.config, args.set)
    if not cfg.sweep.enabled or not cfg.sweep.space:
        raise BadInput(f"{args.config}: a sweep needs [sweep] enabled = true and a [sweep.space] with at least "
                       "one dotted field name, e.g. \"optim.lr\" = { low = 1e-4, high = 0.1, log = true }")
    for name, value in (("--trials", args.trials), ("--parallel", args.parallel),
                        ("--heartbeat-s", args.heartbeat_s), ("--grace-s", args.grace_s)):
        if value is not None and value < 1:
            raise BadInput(f"{name} {value}: expected 1 or more")
    from engine.sweep.space import check_model_names

    check_model_names(cfg)  # a torchvision name that is none: refused before the storage or any trial
    runs_dir = runs_root(args.runs_dir, cfg.logging.runs_dir).resolve()
    study = args.study or Path(args.config).stem
    url = args.storage or default_url(runs_dir)
    if "://" not in url:
        raise BadInput(f"--storage {mask_url(url)!r}: expected an RDB URL such as sqlite:///path/sweeps.db or "
                       "postgresql+psycopg2://user:password@host/db")
    if args.detach and not args.detached_child:
        return _detach(args, runs_dir, study)
    from engine.sweep.worker import Options, Worker, summary_text

    if args.detached_child:  # its own session already; a hang-up of the old terminal means nothing
        import signal

        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {mask_url(message)}", file=sys.stderr if args.json else sys.stdout,
              flush=True)

    opts = Options(Path(args.config).resolve(), cfg, study, url, runs_dir, args.trials or cfg.sweep.trials,
                   args.parallel, list(args.set), args.heartbeat_s or HEARTBEAT_S, args.grace_s or GRACE_S)
    try:
        worker = Worker(opts, log)
    except BadInput:
        raise
    except Exception as exc:  # the storage refused us: say so without its password
        raise BadInput(f"storage {mask_url(url)}: {type(exc).__name__}: {mask_url(exc)}") from None
    summary = worker.run()
    print(json.dumps(summary) if args.json else summary_text(summary), flush=True)
    return EXIT_STOPPED if worker.stopping.is_set() else 0  # 3: stopped by a signal, its trials re-queued


def _detach(args: argparse.Namespace, runs_dir: Path, study: str) -> int:
    """Re-run this command as the leader of a new session, output in <runs-dir>/sweeps/<study>.log."""
    log_path = runs_dir / "sweeps" / f"{study}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [a for a in sys.argv[1:] if a != "--detach"]
    if not argv or argv[0] != "sweep":  # called as a function (tests): rebuild from args
        argv = _argv(args)
    with open(log_path, "ab") as out:
        start = out.tell()
        child = subprocess.Popen([sys.executable, "-m", "engine.cli", *argv, "--detached-child"],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until it runs (its first line) or exits
        code = child.poll()
        text = _read_from(log_path, start)
        if code is not None:
            sys.stderr.write(text)
            return code
        if f"sweep worker {study} (pid {child.pid}) started" in text:
            print(f"started sweep worker {study} (pid {child.pid}, log {log_path})", flush=True)
            return 0
        time.sleep(0.1)
    print(f"started sweep worker {study} (pid {child.pid}, log {log_path})", flush=True)
    return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _argv(args: argparse.Namespace) -> list[str]:
    out = ["sweep", str(args.config)]
    for flag in ("trials", "parallel", "storage", "study", "runs_dir", "heartbeat_s", "grace_s"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    out += [f"--set={s}" for s in args.set] + (["--json"] if args.json else [])
    return out
