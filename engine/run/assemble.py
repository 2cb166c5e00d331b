"""The composition root of one run: the converters and boundary sources it needs, built here and
handed to the Trainer, which knows none of them by name.

A new reason to stop or save (a source) or a new model transformation (a converter) plugs in
here and nowhere else: `sources()` and `converters()`.
"""

from __future__ import annotations

from typing import Any, Callable

from contracts.stops import Source
from engine.config import machine
from engine.config.schema import Config
from engine.data.sources import DataSpec
from engine.model.convert import ChannelsLast, ModelConverter
from engine.model.teacher import Teacher
from engine.parallel.dist import Dist
from engine.run.control import ControlServer, FileInbox, Inboxes
from engine.run.rundir import RunDir
from engine.cluster.slurm import under_slurm
from engine.run.sources import AutoCheckpoint, Clock, Commands, Signals, SlurmSignal
from engine.telemetry.sinks import Telemetry
from engine.telemetry.startup import StartupMarks
from engine.train.trainer import Trainer


def converters(cfg: Config, spec: DataSpec) -> list[ModelConverter]:
    """The converters a config asks for, in the order they apply."""
    found: list[ModelConverter] = []
    if cfg.quantize.qat or cfg.quantize.float8:
        from engine.quantize.training import converters as quantizers  # torchao only when asked for

        found += quantizers(cfg, spec)
    return found + ([ChannelsLast()] if cfg.train.channels_last else [])


def sources(cfg: Config, run: RunDir, tele: Telemetry, dist: Dist, trainer: Any, lease: Any = None
            ) -> tuple[list[Source], Any]:
    """Every boundary source of this rank, and the control socket's path (rank 0 only).

    `trainer` is a callable returning the Trainer once it exists: the control socket answers
    `status` from it and the spot watcher stamps its events with its step, both only once
    training has started.
    """
    main = dist.main
    socket = run.socket_path() if main else None
    server = None
    if main:  # the socket (this host) and the commands folder (a client on another host)
        from engine.cluster.slurm import session_tag

        server = Inboxes(ControlServer(socket, lambda: trainer().status()),
                         FileInbox(run.path, lambda: trainer().status(), tele.emit, session_tag()))
    found: list[Source] = [
        StartupMarks(tele.emit if main else None),  # only watches: start-up's phases, logged once
        Commands(server, cfg.optim.lr, lambda lr: trainer().highest_lr_if_set(lr)),
        Signals(),
        Clock(cfg.checkpoint.every_minutes if main else None),
    ]
    from engine.cloud.spot import watcher_for  # asks nothing unless the metadata service may be asked

    spot = watcher_for(cfg, tele.emit, lambda: trainer().pos.step)
    if spot is not None:
        found.append(spot)
    if cfg.checkpoint.every_steps == "auto" and main:  # rank 0 decides when; the ranks agree
        from engine.checkpoint.interval import AutoInterval, mtbi_for

        mtbi, why = mtbi_for(cfg.spot.interruptions_per_hour, cfg.spot.enabled, cfg.spot.interruption_band)
        found.append(AutoCheckpoint(AutoInterval(mtbi, why), trainer, tele.emit, band_lookup(cfg, spot)))
    if under_slurm():  # USR1 straight to the engine (srun without a batch-script trap): save and requeue
        found.append(SlurmSignal())
    if lease is not None:  # another engine took the run over in S3: stop (exit 3)
        from engine.cloud.s3run import LeaseWatch

        found.append(LeaseWatch(lease))
    return found, socket


def band_lookup(cfg: Config, spot: Any) -> Callable[[], Any] | None:
    """For checkpoint.every_steps = "auto" with no rate or band given: once the metadata service has
    said what this instance is, (M, why) from spot.advisor_data's band for its type and region (or
    the spot default, on spot capacity the config did not call spot); None until then."""
    s = cfg.spot
    if spot is None or s.interruptions_per_hour or s.interruption_band:
        return None
    from engine.checkpoint.interval import mtbi_for
    from engine.config.spot_advisor import band_of, load

    data = load(s.advisor_data) if s.advisor_data else None

    def lookup() -> Any:
        f = spot.facts
        if f is None:
            return None
        band = band_of(data, f.region, f.instance_type) if data is not None else None
        where = f"spot.advisor_data for {f.instance_type} in {f.region}"
        if band is not None:
            return mtbi_for(None, f.spot, band, where)
        mtbi, why = mtbi_for(None, f.spot)
        return mtbi, (f"{why}; {where}: none in the file" if data is not None else why)

    return lookup


def build_trainer(cfg: Config, spec: DataSpec, model: Any, run: RunDir, tele: Telemetry, dist: Dist,
                  resume: dict[str, Any] | None = None, teacher: Teacher | None = None, lease: Any = None
                  ) -> Trainer:
    """The Trainer for this rank, with its converters and sources; what this machine runs poorly
    (engine.config.machine: more DataLoader workers than CPUs) is said in the run's log too."""
    if dist.main:
        for message in machine.check(cfg):
            tele.emit("log", level="warning", message=message)
    built: list[Trainer] = []
    found, socket = sources(cfg, run, tele, dist, lambda: built[0], lease)
    trainer = Trainer(cfg, spec, model, run, tele, resume=resume, dist=dist, teacher=teacher,
                      converters=converters(cfg, spec), sources=found, socket=socket)
    built.append(trainer)
    target(cfg, run, tele, dist, trainer, resume is not None)
    return trainer


def target(cfg: Config, run: RunDir, tele: Telemetry, dist: Dist, trainer: Trainer, resumed: bool) -> None:
    """train.target: rank 0 projects the cost of reaching it after each evaluation (a telemetry
    sink, `projection` events) and, with train.stop_at_target, finishes the run there (a hook
    whose verdict every rank agrees on). Both are on rank 0 even without a target: the `target`
    command may set one while the run trains."""
    if not dist.main:
        return
    from engine.telemetry.projection import Projection, prior_histories
    from engine.train.target import StopAtTarget

    goal = cfg.train.target
    hook = StopAtTarget(goal, cfg.train.stop_at_target)
    trainer.target_hook = hook
    trainer.eval_hooks.append(hook)
    histories = prior_histories(run.events) if resumed and goal is not None else {}
    prior = (lambda: prior_histories(run.events)) if resumed and goal is None else None
    tele.add(Projection(goal.metric if goal else None, goal.value if goal else None, trainer.total_steps,
                        tele.emit, histories, prior))
