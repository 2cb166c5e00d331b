"""Starting and resuming runs: everything between a valid config and the training loop.

Order matters: the config is validated, the data and model are built, and only then is
the run directory created, so bad input never leaves a half-made run behind.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import loading as config_mod
from contracts.atomic import write_atomic
from engine.checkpoint.store import CheckpointStore, load_rank
from engine.config.schema import Config
from engine.data.sources import DataSpec, build_spec
from engine.parallel.dist import Dist
from engine.parallel.dist import setup as setup_dist
from contracts.errors import BadInput
from engine.model.teacher import Teacher, load_teacher
from engine.model.zoo import build_model
from contracts.layout import new_run_id
from engine.run.rundir import RunDir
from engine.telemetry.metering import meter_for
from engine.telemetry.sinks import Console, EventsFile, LogFile, TensorBoard, Telemetry
from engine.run.assemble import build_trainer


def seed_everything(cfg: Config) -> None:
    """Seed every RNG and, if asked, make kernels deterministic."""
    seed = cfg.train.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Without compile, the same switch minus inductor's deterministic config, whose import
        # (with dynamo's) is 1.9 s of a start; a compiling run needs that config set too.
        eager_only = None if cfg.train.compile else getattr(torch._C, "_set_deterministic_algorithms", None)
        (eager_only or torch.use_deterministic_algorithms)(True, warn_only=True)
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


def prepare(cfg: Config, dist: Dist | None = None) -> tuple[DataSpec, torch.nn.Module]:
    """Seed, then build data and model; any BadInput surfaces before a directory exists.

    Every rank builds the same initial weights (DDP also broadcasts rank 0's); afterwards
    ranks other than 0 reseed, so that dropout and the like differ between them.
    """
    check_device(cfg)
    seed_everything(cfg)
    spec = build_spec(cfg)
    model = build_model(cfg, spec)
    if cfg.quantize.qat or cfg.quantize.float8:
        from engine.quantize.training import check

        check(cfg, model, spec)
    check_splittable(cfg, model)  # before any run directory exists
    if dist is not None and dist.dp_rank:
        torch.manual_seed(cfg.train.seed + dist.dp_rank)  # a tensor-parallel group shares its dropout
    return spec, model


def _layout(tp: int, pp: int, per_rank: int, world: int) -> str:
    """A model-parallel layout in words: "tensor_parallel = 2 x 2 data-parallel"."""
    field, n = ("pipeline_stages", pp) if pp > 1 and tp == 1 else ("tensor_parallel", tp)
    each = f" (stages_per_rank = {per_rank})" if per_rank > 1 else ""
    return f"{field} = {n}{each} x {max(1, world // (tp * pp))} data-parallel"


def check_splittable(cfg: Config, model: torch.nn.Module) -> None:
    """A model-parallel layout the model cannot take is bad input, found before anything is written."""
    d = cfg.distributed
    if d.pipeline_stages > 1:
        from engine.parallel.pipeline import bounds

        bounds(model, d.pipeline_stages * d.stages_per_rank, d.pipeline_split)
    if d.tensor_parallel > 1:
        from engine.parallel.tensor import plan_for

        plan_for(model, d.tensor_parallel)


def console_mode(json_mode: bool, detached: bool) -> str:
    """json, none (detached: engine.log already has it all), tty or plain."""
    if json_mode:
        return "json"
    if detached:
        return "none"
    return "tty" if sys.stdout.isatty() else "plain"


def telemetry_for(cfg: Config, run: RunDir, console: str, resume_step: int | None, lease=None) -> Telemetry:
    """Rank 0's sinks: events.jsonl, engine.log, TensorBoard, the console, the cost meter, and
    the S3 mirror (first, so that its close() waits for uploads while the other sinks are open)."""
    from engine.cluster.slurm import job_facts, under_slurm

    slurm = job_facts(run.path) if under_slurm() else None  # read before this session writes anything
    sinks: list = [EventsFile(run.events, cfg.logging.max_step_events_per_s), LogFile(run.log)]
    if cfg.logging.tensorboard:
        sinks.append(TensorBoard(run.tb, resume_step, ranks=cfg.logging.tensorboard_ranks))
    if console != "none":
        sinks.append(Console(console, cfg.logging.max_step_events_per_s))
    tele = Telemetry(sinks)
    if cfg.checkpoint.s3_uri:
        from engine.cloud import s3run

        tele.sinks.insert(0, s3run.mirror(cfg, run.path, tele.emit, lease))
    tele.add(meter_for(cfg, run.events, resume_step, tele))
    if slurm is not None:  # this start of a Slurm job: its id, restart count, nodes, the wait before it
        tele.emit("slurm", **slurm)
    return tele


def announce(run: RunDir, console: str, when: str) -> None:
    if console == "none":
        return
    stream = sys.stderr if console == "json" else sys.stdout
    print(f"{when} run directory: {run.path}", file=stream, flush=True)


def _detach_if(detached: bool, run: RunDir) -> None:
    if detached:
        from engine.run.detach import become_detached

        become_detached(run.log)


def start(cfg: Config, root: Path, run_id: str | None, json_mode: bool, detached: bool = False) -> int:
    """Create a new run directory and train in it (rank 0 creates it; under torchrun the
    other ranks learn its path, or the error, from rank 0)."""
    dist = setup_dist(cfg)
    lease: list = []  # rank 0's lease on the run in S3 (checkpoint.s3_uri)
    try:
        spec, model = prepare(cfg, dist)
        teacher = load_teacher(cfg, spec)  # a bad teacher is refused before the directory exists
        outcome = dist.broadcast(_create(cfg, root, run_id, dist, lease) if dist.main else None)
        if isinstance(outcome, dict):
            raise BadInput(outcome["error"])
        run = RunDir(Path(outcome))
        _detach_if(detached, run)
        console = console_mode(json_mode, detached) if dist.main else "none"
        announce(run, console, "new")
        tele = telemetry_for(cfg, run, console, None, *lease) if dist.main else Telemetry([])
        trainer = build_trainer(cfg, spec, model, run, tele, dist, teacher=teacher, lease=(lease or [None])[0])
        return _train(trainer, tele, run, console)
    finally:
        for held in lease:
            held.release()  # idempotent: the mirror's close() normally did it
        dist.close()


def _create(cfg: Config, root: Path, run_id: str | None, dist: Dist, lease: list) -> str | dict[str, str]:
    """Rank 0: take the run's lease in S3 (when mirrored), make the run directory, lock it (for
    the life of the process) and write its config; its path, or {"error": ...} for the other
    ranks to raise too."""
    run = RunDir(root.resolve() / (run_id or new_run_id(cfg.logging.run_name or cfg.model.name)))
    try:
        if run.path.exists():
            raise BadInput(f"--run-id {run.path.name!r}: {run.path} already exists; pick another id")
        if cfg.checkpoint.s3_uri:
            from engine.cloud import s3run

            lease.append(s3run.take_lease(cfg, run.path.name, new=True))
        run.path.mkdir(parents=True, exist_ok=False)
    except (BadInput, FileExistsError) as exc:
        error = str(exc) if isinstance(exc, BadInput) else (
            f"--run-id {run.path.name!r}: {run.path} already exists; pick another id")
        if not dist.active:
            raise BadInput(error) from None
        return {"error": error}
    run.lock()
    if dist.active and os.environ.get("LOCAL_WORLD_SIZE") == str(dist.world):
        cfg.distributed.nproc = dist.world  # started by hand with torchrun: resume knows how many
    run.config.write_text(config_mod.to_toml(cfg), encoding="utf-8")
    return str(run.path)


def resume(run_path: Path, overrides: list[str], json_mode: bool, detached: bool = False,
           or_start: bool = False) -> int:
    """Continue a run from its newest valid checkpoint.

    Rank 0 finds the checkpoint (falling back past unusable ones) and sends its state to the
    other ranks; a checkpoint written by a different number of processes is refused, because
    each process would then see other samples and the run would not continue exactly.
    """
    run = RunDir(run_path.resolve())
    before = config_mod.load(run.config, []) if overrides else None
    cfg = config_mod.load(run.config, overrides)
    dist = setup_dist(cfg)
    lease = None  # rank 0's lease on the run in S3 (checkpoint.s3_uri)
    try:
        if dist.main:
            run.lock()  # an open descriptor: held for the life of the process
            if cfg.checkpoint.s3_uri:
                from engine.cloud import s3run

                lease = s3run.take_lease(cfg, run.path.name, new=False)
        spec, model = prepare(cfg, dist)
        teacher = load_teacher(cfg, spec)
        warnings: list[str] = []
        fresh = dist.broadcast(or_start and not _has_checkpoints(run) if dist.main else None)
        if fresh:  # a run directory made by `slurm submit`: its first start
            return _start_in(run, cfg, spec, model, teacher, dist, json_mode, detached, lease)
        found = _find_checkpoint(run, cfg, dist, warnings, teacher) if dist.main else None
        sharded = dist.sharded
        if sharded:  # every rank reads its own shard file; the others need only the name
            named = dist.broadcast(found if isinstance(found, str) or found is None else (None, found[1]))
            found = found if dist.main else named
        else:
            found = dist.broadcast(found)
        if isinstance(found, str):
            raise BadInput(found)
        state, name = found
        if sharded and not dist.main:
            state = load_rank(run.checkpoints / name, dist.rank)
        _detach_if(detached, run)
        console = console_mode(json_mode, detached) if dist.main else "none"
        if dist.main and overrides:
            write_atomic(run.config, lambda f: f.write(config_mod.to_toml(cfg).encode()))
        announce(run, console, "resuming")
        tele = telemetry_for(cfg, run, console, state["step"], lease) if dist.main else Telemetry([])
        for message in warnings:
            tele.emit("log", level="warning", message=message)
        tele.emit("resume", step=state["step"], epoch=state["trainer"]["epoch"], checkpoint=name)
        if dist.main and overrides:
            _record_changes(run, tele, before, cfg, overrides, state["step"])
        if dist.main:  # a target set live (the `target` command) outlives the session
            from engine.train.target import on_resume

            on_resume(cfg, run.events, overrides, tele.emit)
        trainer = build_trainer(cfg, spec, model, run, tele, dist, resume=state, teacher=teacher, lease=lease)
        return _train(trainer, tele, run, console)
    finally:
        if lease is not None:
            lease.release()  # idempotent: the mirror's close() normally did it
        dist.close()


def _has_checkpoints(run: RunDir) -> bool:
    try:
        return any(p.name.startswith("step-") for p in run.checkpoints.iterdir())
    except OSError:
        return False


def _start_in(run: RunDir, cfg: Config, spec: Any, model: Any, teacher: Any, dist: Dist, json_mode: bool,
              detached: bool, lease: Any) -> int:
    """Train from step 0 in an existing run directory that has no checkpoint (resume --or-start)."""
    _detach_if(detached, run)
    console = console_mode(json_mode, detached) if dist.main else "none"
    announce(run, console, "new")
    tele = telemetry_for(cfg, run, console, None, lease) if dist.main else Telemetry([])
    trainer = build_trainer(cfg, spec, model, run, tele, dist, teacher=teacher, lease=lease)
    return _train(trainer, tele, run, console)


#: Fields whose change on resume makes the run differ from one started with the new value.
INEXACT_ON_RESUME = ("train.batch_size",)


def _record_changes(run: RunDir, tele: Telemetry, before: Config, after: Config, overrides: list[str],
                    step: int) -> None:
    """A resume with --set: one line in <run>/overrides.jsonl and a config_change event at that step."""
    import json
    import time

    def value(cfg: Config, dotted: str) -> Any:
        for part in dotted.split("."):
            cfg = getattr(cfg, part, None)
        return cfg

    fields = sorted({o.split("=", 1)[0].strip() for o in overrides})
    changes = {f: [value(before, f), value(after, f)] for f in fields}
    changes = {f: v for f, v in changes.items() if v[0] != v[1]}
    exact = not any(f in INEXACT_ON_RESUME for f in changes)
    record = {"t": round(time.time(), 3), "step": step, "overrides": list(overrides), "changes": changes,
              "exact": exact}
    with open(run.overrides, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
    tele.emit("config_change", step=step, changes=changes, overrides=list(overrides), exact=exact)


def _find_checkpoint(run: RunDir, cfg: Config, dist: Dist, warnings: list[str], teacher: Teacher | None = None) -> Any:
    """Rank 0: (state, file name) of the newest usable checkpoint, or the error as a string."""
    store = CheckpointStore(run.checkpoints, cfg.checkpoint.keep_last)
    store.clean_temporaries()

    def warn(message: str) -> None:
        warnings.append(message)
        print(f"cockpit-engine: warning: {message}", file=sys.stderr, flush=True)

    found = store.load_latest(warn)
    if found is None:
        error = (f"resume {str(run.path)!r}: no usable checkpoint in {run.checkpoints}; "
                 "nothing was changed (start a new run instead)")
    else:
        state, path = found
        written_by = state.get("world_size", 1)
        sharded = dist.sharded
        written = (state.get("tensor_parallel", 1), state.get("pipeline_stages", 1), state.get("stages_per_rank", 1))
        ours = (dist.tp, dist.pp, cfg.distributed.stages_per_rank if dist.pp > 1 else 1)
        if written != ours:
            error = (f"resume {str(run.path)!r}: checkpoint {path.name} was written with distributed."
                     f"{_layout(*written, written_by)}; this resume has {_layout(*ours, dist.world)}; "
                     "resume with the same layout (resharding is not supported); nothing was changed")
        elif written_by != dist.world:
            error = (f"resume {str(run.path)!r}: checkpoint {path.name} was written by {written_by} "
                     f"process(es) and this resume has {dist.world}; resume with --nproc {written_by} "
                     f"(distributed.nproc = {written_by}). With another number each process would see "
                     "other samples, so the run would not continue exactly; nothing was changed")
        elif path.is_dir() != sharded:
            error = (f"resume {str(run.path)!r}: checkpoint {path.name} was written "
                     f"{'with FSDP (sharded)' if path.is_dir() else 'as one file (one process or DDP)'}; "
                     f"resume with distributed.strategy = {'fsdp' if path.is_dir() else 'ddp'!r}; "
                     "nothing was changed")
        elif _teacher_of(state) != (teacher.sha256 if teacher else None):
            error = (f"resume {str(run.path)!r}: checkpoint {path.name} was distilled from another teacher "
                     f"(weights sha256 {str(_teacher_of(state))[:12]}, distill.teacher now gives "
                     f"{teacher.sha256[:12] if teacher else 'none'}); resume with the same distill.teacher; "
                     "nothing was changed")
        else:
            return state, path.name
    if not dist.active:
        raise BadInput(error)
    return error


def _teacher_of(state: dict[str, Any]) -> str | None:
    """The SHA-256 of the teacher a checkpoint was distilled from (None: no teacher)."""
    teacher = state.get("teacher")
    return teacher.get("sha256") if isinstance(teacher, dict) else None


def _train(trainer: Any, tele: Telemetry, run: RunDir, console: str) -> int:
    try:
        result = trainer.train()
        if result.state == "requeued" and trainer.dist.main:  # every rank has saved (the final barrier)
            from engine.cluster.slurm import requeue_self

            latest = trainer.checkpoints.latest()
            requeue_self(tele.emit, trainer.pos.step, latest.name if latest else None)
    finally:
        tele.close()
    announce(run, console, result.state)
    return result.exit_code
