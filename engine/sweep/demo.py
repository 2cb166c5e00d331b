"""`cockpit-engine demo --sweep`: the demo sweep (engine/demo_sweep.toml), a new study each time.

Six short trials of the demo's small CNN on the bundled digits, over the learning rate and the
width; two at a time where the machine has 4 cores or more (each trial uses every core it gets).
"""

from __future__ import annotations

import argparse
import os
import time
from importlib import resources
from pathlib import Path

from contracts.errors import BadInput

#: The demo sweep's config, shipped inside the engine package.
CONFIG = "demo_sweep.toml"


def config_path() -> Path:
    return Path(str(resources.files("engine").joinpath(CONFIG)))


def demo_parallel() -> int:
    """Trials at once: 2 where there are cores for two, else 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 if cores >= 4 else 1


def study_name() -> str:
    return time.strftime("demo-sweep-%Y%m%d-%H%M%S")


def cmd_demo_sweep(args: argparse.Namespace) -> int:
    """Run (or, with --detach, start) a sweep worker over the demo sweep's config."""
    from engine.sweep.command import cmd_sweep

    if args.gpt:
        raise BadInput("--sweep with --gpt: the demo sweep is of the digits demo; drop one of them")
    for flag in ("nproc", "gpus"):
        if getattr(args, flag, None) is not None:
            raise BadInput(f"--{flag} with --sweep: each trial of the demo sweep is one process; drop --{flag}")
    sweep = argparse.Namespace(
        config=str(config_path()), trials=None, parallel=demo_parallel(), storage=args.storage,
        study=args.run_id or study_name(), runs_dir=args.runs_dir, set=list(args.set), detach=args.detach,
        json=args.json, heartbeat_s=None, grace_s=None, detached_child=False)
    return cmd_sweep(sweep)
