"""Starting and resuming runs: everything between a valid config and the training loop.

Order matters: the config is validated, the data and model are built, and only then is
the run directory created, so bad input never leaves a half-made run behind.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from engine import config as config_mod
from engine.atomic import write_atomic
from engine.checkpoint import CheckpointStore
from engine.config import Config
from engine.data import DataSpec, build_spec
from engine.errors import BadInput
from engine.models import build_model
from engine.rundir import RunDir, new_run_id
from engine.telemetry import Console, EventsFile, LogFile, TensorBoard, Telemetry
from engine.trainer import Trainer


def seed_everything(cfg: Config) -> None:
    """Seed every RNG and, if asked, make kernels deterministic."""
    seed = cfg.train.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every torch.empty() with NaN (a debugging aid against
        # reading uninitialized memory): hundreds of extra memory passes per step, over 100 MB
        # for a resnet18 step. Results do not depend on it, so it is turned off.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False


def check_device(cfg: Config) -> None:
    """Refuse a GPU device on a machine without one, before anything is written."""
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"train.device = {cfg.train.device!r}: no CUDA device is visible; use 'auto' or 'cpu'")
    if torch.cuda.is_available():
        # TF32 trades mantissa bits for tensor-core speed on Ampere and later; off unless asked.
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.allow_tf32 = cfg.train.tf32


def prepare(cfg: Config) -> tuple[DataSpec, torch.nn.Module]:
    """Seed, then build data and model; any BadInput surfaces before a directory exists."""
    check_device(cfg)
    seed_everything(cfg)
    spec = build_spec(cfg)
    return spec, build_model(cfg, spec)


def console_mode(json_mode: bool, detached: bool) -> str:
    """json, none (detached: engine.log already has it all), tty or plain."""
    if json_mode:
        return "json"
    if detached:
        return "none"
    return "tty" if sys.stdout.isatty() else "plain"


def telemetry_for(cfg: Config, run: RunDir, console: str, resume_step: int | None) -> Telemetry:
    sinks: list = [EventsFile(run.events, cfg.logging.max_step_events_per_s), LogFile(run.log)]
    if cfg.logging.tensorboard:
        sinks.append(TensorBoard(run.tb, resume_step))
    if console != "none":
        sinks.append(Console(console, cfg.logging.max_step_events_per_s))
    return Telemetry(sinks)


def announce(run: RunDir, console: str, when: str) -> None:
    if console == "none":
        return
    stream = sys.stderr if console == "json" else sys.stdout
    print(f"{when} run directory: {run.path}", file=stream, flush=True)


def _detach_if(detached: bool, run: RunDir) -> None:
    if detached:
        from engine.detach import become_detached

        become_detached(run.log)


def start(cfg: Config, root: Path, run_id: str | None, json_mode: bool, detached: bool = False) -> int:
    """Create a new run directory and train in it."""
    spec, model = prepare(cfg)
    run = RunDir(root.resolve() / (run_id or new_run_id(cfg.logging.run_name or cfg.model.name.split(":")[-1])))
    try:
        run.path.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise BadInput(f"--run-id {run.path.name!r}: {run.path} already exists; pick another id") from None
    _lock = run.lock()
    run.config.write_text(config_mod.to_toml(cfg), encoding="utf-8")
    _detach_if(detached, run)
    console = console_mode(json_mode, detached)
    announce(run, console, "new")
    tele = telemetry_for(cfg, run, console, None)
    return _train(Trainer(cfg, spec, model, run, tele), tele, run, console)


def resume(run_path: Path, overrides: list[str], json_mode: bool, detached: bool = False) -> int:
    """Continue a run from its newest valid checkpoint."""
    run = RunDir(run_path.resolve())
    _lock = run.lock()
    cfg = config_mod.load(run.config, overrides)
    spec, model = prepare(cfg)
    store = CheckpointStore(run.checkpoints, cfg.checkpoint.keep_last)
    store.clean_temporaries()
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        print(f"cockpit-engine: warning: {message}", file=sys.stderr, flush=True)

    found = store.load_latest(warn)
    if found is None:
        raise BadInput(f"resume {str(run.path)!r}: no usable checkpoint in {run.checkpoints}; "
                       "nothing was changed (start a new run instead)")
    state, path = found
    _detach_if(detached, run)
    console = console_mode(json_mode, detached)
    if overrides:
        write_atomic(run.config, lambda f: f.write(config_mod.to_toml(cfg).encode()))
    announce(run, console, "resuming")
    tele = telemetry_for(cfg, run, console, state["step"])
    for message in warnings:
        tele.emit("log", level="warning", message=message)
    tele.emit("resume", step=state["step"], epoch=state["trainer"]["epoch"], checkpoint=path.name)
    return _train(Trainer(cfg, spec, model, run, tele, resume=state), tele, run, console)


def _train(trainer: Trainer, tele: Telemetry, run: RunDir, console: str) -> int:
    try:
        code = trainer.train()
    finally:
        tele.close()
    announce(run, console, {0: "finished", 3: "stopped"}.get(code, "failed"))
    return code
