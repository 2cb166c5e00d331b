"""The sweep worker: ask Optuna for a trial, run it as an engine, tell Optuna how it ended.

Each of `parallel` slots is a thread that loops: fail stale trials, ask (a re-queued dead
trial first), start or resume the trial's run, follow it, tell. Several workers, on one
machine or many, may share one study through its storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from contracts.layout import RunLayout
from engine.config.schema import Config
from engine.sweep.space import overrides, set_args, suggest
from engine.sweep.storage import MAX_RETRY, mask_url, open_storage
from engine.sweep.trial import METRIC_KEYS, Outcome, TrialEngine


def _is_race(exc: BaseException) -> bool:
    """An error a concurrent creation of the schema or the study explains."""
    name = type(exc).__name__
    text = str(exc).lower()
    return name in ("IntegrityError", "DuplicatedStudyError", "ProgrammingError", "OperationalError") and (
        name != "OperationalError" or "already exists" in text or "locked" in text)


def trial_run_id(study: str, number: int) -> str:
    return f"{study}-t{number:03d}"


@dataclass
class Options:
    config_path: Path
    cfg: Config
    study: str
    storage_url: str
    runs_dir: Path
    trials: int
    parallel: int
    sets: list[str]
    heartbeat_s: int
    grace_s: int


class Worker:
    def __init__(self, opts: Options, log: Callable[[str], None]):
        import optuna

        self.o, self.log = opts, log
        self.optuna = optuna
        for attempt in range(5):
            # workers starting together race to create the schema and the study (PostgreSQL answers
            # the loser with an IntegrityError, SQLite may say "table already exists"): try again
            try:
                self.storage = open_storage(opts.storage_url, opts.heartbeat_s, opts.grace_s)
                self.study = self._study()
                break
            except Exception as exc:
                from contracts.errors import BadInput

                if isinstance(exc, BadInput) or attempt == 4 or not _is_race(exc):
                    raise
                time.sleep(0.5 * (attempt + 1))
        self.db = threading.RLock()   # one storage call at a time from this worker's threads
        self.stopping = threading.Event()
        self.engines: set[TrialEngine] = set()

    # -- the study ----------------------------------------------------------------------------
    def _sampler(self) -> Any:
        """auto and tpe: TPE (multi-objective TPE with several objectives); nsga2: NSGA-II with a
        population of at most the study's trials; random: random search. Seeded from train.seed."""
        samplers, s, seed = self.optuna.samplers, self.o.cfg.sweep, self.o.cfg.train.seed
        if s.sampler == "random":
            return samplers.RandomSampler(seed=seed)
        if s.sampler == "nsga2":
            return samplers.NSGAIISampler(seed=seed, population_size=max(2, min(50, self.o.trials)))
        return samplers.TPESampler(seed=seed)

    def _study(self) -> Any:
        optuna, s = self.optuna, self.o.cfg.sweep
        sampler = self._sampler()
        objectives = s.resolved_objectives
        if s.multi and s.pruner != "none":
            self.log(f"pruner {s.pruner!r} is off: Optuna cannot prune a study of {len(objectives)} objectives")
        if s.resolved_pruner == "median":
            pruner: Any = optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials,
                                                      n_warmup_steps=s.warmup_for(self.o.cfg.train.epochs))
        elif s.resolved_pruner == "hyperband":
            pruner = optuna.pruners.HyperbandPruner(min_resource=max(1, s.warmup_epochs or 1),
                                                    max_resource=max(1, self.o.cfg.train.epochs))
        else:
            pruner = optuna.pruners.NopPruner()
        directions = [d for _, d in objectives]
        study = optuna.create_study(study_name=self.o.study, storage=self.storage, sampler=sampler,
                                    pruner=pruner, directions=directions, load_if_exists=True)
        have = [d.name.lower() for d in study.directions]
        metrics = [m for m, _ in objectives]
        attrs = study.user_attrs
        known = attrs.get("objectives") or ([attrs["metric"]] if "metric" in attrs else metrics)
        if have != directions or (len(metrics) > 1 or len(known) > 1) and known != metrics:
            from contracts.errors import BadInput

            raise BadInput(f"study {self.o.study!r} exists with objectives {_spell(known, have)}, the config asks "
                           f"{_spell(metrics, directions)}: use another --study")
        study.set_user_attr("metric", metrics[0])
        study.set_user_attr("objectives", metrics)
        study.set_user_attr("runs_dir", str(self.o.runs_dir))
        return study

    def _room(self) -> bool:
        """Whether this worker should ask for another trial: a re-queued one waits, or fewer than
        `trials` are done or under way (a failed trial that was re-queued does not count)."""
        TS = self.optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state == TS.WAITING for t in trials):
            return True
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        counted = [t for t in trials if not (t.state == TS.FAIL and t.number in retried)]
        return len(counted) < self.o.trials

    # -- running ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from engine.sweep.gpus import slots

        gpus = slots(self.o.parallel, self.o.cfg.train.device)
        self.log(f"sweep worker {self.o.study} (pid {os.getpid()}) started: storage {mask_url(self.o.storage_url)}, "
                 f"{self.o.trials} trials, {len(gpus)} at a time"
                 + (f" on GPUs {', '.join(g for g in gpus if g)}" if any(gpus) else ""))
        # SIGHUP too, unless ignored (a detached worker ignores it: an SSH drop stops nothing)
        sigs = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGHUP] if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN else [])
        previous = {sig: signal.signal(sig, self._on_signal) for sig in sigs}
        threads = [threading.Thread(target=self._slot, args=(gpu,), name=f"sweep-slot-{i}", daemon=True)
                   for i, gpu in enumerate(gpus)]
        try:
            for t in threads:
                t.start()
                time.sleep(0.1)
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.5)
        finally:
            self.stop_engines()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.summary()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.log(f"{signal.Signals(signum).name}: stopping the running trials (they checkpoint and are re-queued)")
        self.stopping.set()
        self.stop_engines()

    def stop_engines(self) -> None:
        for engine in list(self.engines):
            engine.stop()

    @contextlib.contextmanager
    def _asking(self):
        """On SQLite, one worker process at a time takes a trial: SQLite ignores the row lock
        Optuna takes to pop a waiting (re-queued) trial, so two workers could both pop it.
        A record lock beside the database file (released by the kernel if the worker dies)."""
        url = self.o.storage_url
        if not url.startswith("sqlite:///") or url.endswith(":memory:"):
            yield
            return
        import fcntl

        with open(url.split(":///", 1)[1] + ".ask-lock", "a+b") as f:
            fcntl.lockf(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(f, fcntl.LOCK_UN)

    def _slot(self, gpu: str | None) -> None:
        while not self.stopping.is_set():
            with self.db, self._asking():
                self.optuna.storages.fail_stale_trials(self.study)
                if not self._room():
                    return
                trial = self.study.ask()
                self.storage.record_heartbeat(trial._trial_id)
            try:
                self._trial(trial, gpu)
            except Exception as exc:  # one trial's trouble must not end the sweep
                self.log(f"trial {trial.number}: {type(exc).__name__}: {mask_url(exc)}")
                with self.db:
                    try:
                        self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                    except Exception:
                        pass

    def _trial(self, trial: Any, gpu: str | None) -> None:
        TS = self.optuna.trial.TrialState
        with self.db:
            values = suggest(trial, self.o.cfg.sweep.space, self.o.cfg.model.name)
            frozen = self.storage.get_trial(trial._trial_id)
            retry_of = frozen.system_attrs.get("failed_trial")
            old = frozen.user_attrs.get("run_dir")
        twin = self._twin(trial) if retry_of is None else None
        if twin is not None:
            self._reuse(trial, twin)
            return
        if retry_of is not None and old and RunLayout(Path(old)).latest.is_file():
            run_dir = Path(old)
            argv = ["resume", str(run_dir)]
            self.log(f"trial {trial.number}: resumes dead trial {retry_of}'s run {run_dir} from its checkpoint")
        else:
            run_dir = self.o.runs_dir / trial_run_id(self.o.study, trial.number)
            argv = ["run", str(self.o.config_path), "--run-id", run_dir.name, "--runs-dir", str(self.o.runs_dir),
                    *[f"--set={s}" for s in self.o.sets], *set_args(overrides(self.o.cfg, values))]
            self.log(f"trial {trial.number}: {run_dir.name} " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
        with self.db:
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("run_id", run_dir.name)
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu

        last = int(values.get("train.epochs", self.o.cfg.train.epochs))

        def report(epoch: int, value: float) -> bool:
            with self.db:
                trial.report(value, epoch)
                return epoch < last and trial.should_prune()  # after the last epoch nothing is left to save

        def heartbeat() -> None:
            with self.db:
                self.storage.record_heartbeat(trial._trial_id)

        s = self.o.cfg.sweep
        reported = s.metric if not s.objectives else (s.objectives[0].metric if not s.multi else None)
        engine = TrialEngine(argv, run_dir, reported if reported in METRIC_KEYS else None, report, heartbeat,
                             max(0.2, self.o.heartbeat_s / 2), env, self.log)
        engine.on_dir = lambda: self._tag(run_dir, trial, retry_of)
        self.engines.add(engine)
        try:
            if self.stopping.is_set():
                return
            outcome = engine.run()
        finally:
            self.engines.discard(engine)
        self._tell(trial, outcome, TS)

    def _twin(self, trial: Any) -> Any:
        """A complete trial with the same parameters (TPE can repeat a point of a small or
        categorical space): the same config and seed would train the same again."""
        with self.db:
            params = self.storage.get_trial(trial._trial_id).params
            done = self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.COMPLETE,))
        return next((t for t in done if t.number != trial.number and t.params == params), None)

    def _reuse(self, trial: Any, twin: Any) -> None:
        """Tell the twin's value(s) for this trial, its run named, and say so; nothing trains."""
        with self.db:
            for key in ("run_dir", "run_id", "objectives", "cost_unit"):
                if key in twin.user_attrs:
                    trial.set_user_attr(key, twin.user_attrs[key])
            trial.set_user_attr("same_as", twin.number)
            self.study.tell(trial, list(twin.values) if len(twin.values) > 1 else twin.value)
        self.log(f"trial {trial.number}: the same parameters as complete trial {twin.number}: its value "
                 f"{', '.join(f'{v:.4g}' for v in twin.values)} reused, nothing trained")

    def _tag(self, run_dir: Path, trial: Any, retry_of: Any) -> None:
        tag = {"study": self.o.study, "trial": trial.number, "storage": mask_url(self.o.storage_url)}
        if retry_of is not None:
            tag["retry_of"] = retry_of
        try:
            (run_dir / "sweep.json").write_text(json.dumps(tag) + "\n")
        except OSError:
            pass

    def _tell(self, trial: Any, outcome: Outcome, TS: Any) -> None:
        name = trial_run_id(self.o.study, trial.number)
        with self.db:
            if outcome.state == "pruned" or (outcome.pruned_by_us and outcome.state == "finished"):
                self.study.tell(trial, state=TS.PRUNED)
                self.log(f"trial {trial.number}: pruned after {outcome.epochs} epoch(s)")
            elif outcome.state == "finished" and not self._missing(outcome):
                metrics = [m for m, _ in self.o.cfg.sweep.resolved_objectives]
                values = [outcome.measured[m] for m in metrics]
                trial.set_user_attr("objectives", dict(zip(metrics, values)))
                if outcome.cost_unit:
                    trial.set_user_attr("cost_unit", outcome.cost_unit)
                self.study.tell(trial, values if len(values) > 1 else values[0])
                self.log(f"trial {trial.number}: " + ", ".join(f"{m} {v:.4g}" for m, v in zip(metrics, values)))
            elif outcome.state == "finished":
                self.study.tell(trial, state=TS.FAIL)
                self.log(f"trial {trial.number}: finished without {', '.join(self._missing(outcome))}: failed")
            elif outcome.state in ("stopped", "preempted"):
                # interrupted with a checkpoint (a signal, a stop command, this worker stopping):
                # failed now, re-queued so that a worker resumes it
                frozen = self.study.tell(trial, state=TS.FAIL)
                self.optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(self.study, frozen)
                self.log(f"trial {trial.number}: {outcome.state} ({outcome.message}); re-queued to resume")
            else:
                self.study.tell(trial, state=TS.FAIL)
                self.log(f"trial {trial.number}: {outcome.state} (exit {outcome.exit_code}): {mask_url(outcome.message)}")
        del name

    @staticmethod
    def _front_entry(t: Any, objectives: list[tuple[str, str]]) -> dict[str, Any]:
        """One trial of the Pareto front, as the summary prints it."""
        return {"number": t.number, "values": {m: v for (m, _), v in zip(objectives, t.values)},
                "params": t.params, "run_dir": t.user_attrs.get("run_dir"), "run_id": t.user_attrs.get("run_id"),
                **({"cost_unit": t.user_attrs["cost_unit"]} if "cost_unit" in t.user_attrs else {})}

    def _missing(self, outcome: Outcome) -> list[str]:
        return [m for m, _ in self.o.cfg.sweep.resolved_objectives if m not in outcome.measured]

    # -- the end ------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        TS = self.optuna.trial.TrialState
        with self.db:
            trials = self.study.get_trials(deepcopy=False)
            counts: dict[str, int] = {}
            for t in trials:
                counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
            objectives = self.o.cfg.sweep.resolved_objectives
            out: dict[str, Any] = {"study": self.o.study, "storage": mask_url(self.o.storage_url),
                                   "metric": objectives[0][0], "direction": objectives[0][1],
                                   "objectives": [{"metric": m, "direction": d} for m, d in objectives],
                                   "trials": counts, "best": None, "importances": None}
            complete = [t for t in trials if t.state == TS.COMPLETE]
            if len(objectives) > 1:
                out["pareto"] = [self._front_entry(t, objectives) for t in sorted(
                    self.study.best_trials, key=lambda t: t.number)] if complete else []
                out["importances_note"] = "parameter importances: one study objective at a time (not computed here)"
                return out
            if complete:
                best = self.study.best_trial
                out["best"] = {"number": best.number, "value": best.value, "params": best.params,
                               "run_dir": best.user_attrs.get("run_dir"), "run_id": best.user_attrs.get("run_id")}
            if len(complete) >= 2:
                try:
                    out["importances"] = dict(self.optuna.importance.get_param_importances(self.study))
                except Exception as exc:
                    out["importances_note"] = f"parameter importances could not be computed: {exc}"
            else:
                out["importances_note"] = (f"parameter importances need at least 2 completed trials "
                                           f"({len(complete)} so far)")
        return out


def _spell(metrics: list[str], directions: list[str]) -> str:
    return ", ".join(f"{d} {m}" for m, d in zip(metrics, directions))


def _front_text(s: dict[str, Any]) -> list[str]:
    front = s["pareto"]
    if not front:
        return ["no trial completed yet"]
    lines = [f"Pareto front of {_spell([o['metric'] for o in s['objectives']], [o['direction'] for o in s['objectives']])}"
             f": {len(front)} trial(s)"]
    for t in front:
        unit = {"dollars": "$", "seconds": " s"}.get(t.get("cost_unit", ""), "")
        values = ", ".join(f"{m} {'$' if m == 'cost' and unit == '$' else ''}{v:.4g}"
                           f"{' s' if m == 'cost' and unit == ' s' else ''}" for m, v in t["values"].items())
        lines.append(f"  trial {t['number']}: {values}; " + ", ".join(f"{k}={v!r}" for k, v in t["params"].items()))
        lines.append(f"    run dir: {t['run_dir']}")
    return lines


def summary_text(s: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(s["trials"].items()))
    lines = [f"study {s['study']} ({s['storage']}): {sum(s['trials'].values())} trials ({counts})"]
    best = s["best"]
    if "pareto" in s:
        lines += _front_text(s)
    elif best is None:
        lines.append("no trial completed yet")
    else:
        lines.append(f"best trial {best['number']}: {s['metric']} {best['value']:.4g} ({s['direction']})")
        lines.append("  params: " + ", ".join(f"{k}={v!r}" for k, v in best["params"].items()))
        lines.append(f"  run dir: {best['run_dir']}")
    if s.get("importances"):
        lines.append("parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in s["importances"].items()))
    else:
        lines.append(s.get("importances_note", ""))
    return "\n".join(lines)
