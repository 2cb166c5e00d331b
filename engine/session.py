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
from engine.checkpoint import CheckpointStore, write_atomic
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
        torch.backends.cudnn.benchmark = False


def check_device(cfg: Config) -> None:
    """Refuse a GPU device on a machine without one, before anything is written."""
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"train.device = {cfg.train.device!r}: no CUDA device is visible; use 'auto' or 'cpu'")


def prepare(cfg: Config) -> tuple[DataSpec, torch.nn.Module]:
    """Seed, then build data and model; any BadInput surfaces before a directory exists."""
    check_device(cfg)
    seed_everything(cfg)
    spec = build_spec(cfg)
    return spec, build_model(cfg, spec)


def console_mode(json_mode: bool) -> str:
    if json_mode:
        return "json"
    return "tty" if sys.stdout.isatty() else "plain"


def telemetry_for(cfg: Config, run: RunDir, json_mode: bool, resume_step: int | None) -> Telemetry:
    sinks: list = [EventsFile(run.events, cfg.logging.max_step_events_per_s), LogFile(run.log)]
    if cfg.logging.tensorboard:
        sinks.append(TensorBoard(run.tb, resume_step))
    sinks.append(Console(console_mode(json_mode), cfg.logging.max_step_events_per_s))
    return Telemetry(sinks)


def announce(run: RunDir, json_mode: bool, when: str) -> None:
    stream = sys.stderr if json_mode else sys.stdout
    print(f"{when} run directory: {run.path}", file=stream, flush=True)


def start(cfg: Config, root: Path, run_id: str | None, json_mode: bool) -> int:
    """Create a new run directory and train in it."""
    spec, model = prepare(cfg)
    run = RunDir(root / (run_id or new_run_id(cfg.logging.run_name or cfg.model.name.split(":")[-1])))
    try:
        run.path.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise BadInput(f"--run-id {run.path.name!r}: {run.path} already exists; pick another id") from None
    _lock = run.lock()
    run.config.write_text(config_mod.to_toml(cfg), encoding="utf-8")
    announce(run, json_mode, "new")
    tele = telemetry_for(cfg, run, json_mode, None)
    return _train(Trainer(cfg, spec, model, run, tele), tele, run, json_mode)


def resume(run_path: Path, overrides: list[str], json_mode: bool) -> int:
    """Continue a run from its newest valid checkpoint."""
    run = RunDir(run_path)
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
    if overrides:
        write_atomic(run.config, lambda f: f.write(config_mod.to_toml(cfg).encode()))
    announce(run, json_mode, "resuming")
    tele = telemetry_for(cfg, run, json_mode, state["step"])
    for message in warnings:
        tele.emit("log", level="warning", message=message)
    tele.emit("resume", step=state["step"], epoch=state["trainer"]["epoch"], checkpoint=path.name)
    return _train(Trainer(cfg, spec, model, run, tele, resume=state), tele, run, json_mode)


def _train(trainer: Trainer, tele: Telemetry, run: RunDir, json_mode: bool) -> int:
    try:
        code = trainer.train()
    finally:
        tele.close()
    announce(run, json_mode, {0: "finished", 3: "stopped"}.get(code, "failed"))
    return code
