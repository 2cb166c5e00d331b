"""Reading Optuna studies for the trials screen (optuna is imported lazily: `cockpit` starts fast).

Everything here runs in the trials screen's worker thread, never on the UI thread. A study is
read into plain data (`StudyView`, `TrialRow`) so the screen never touches optuna objects.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import re
import threading
import warnings
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.layout import SWEEPS_DB

#: The sweep workers' default storage, in the runs directory (see docs/DESIGN.md, Sweeps).
DEFAULT_DB = SWEEPS_DB
#: Where promoted configs are written, under the runs directory.
PROMOTED_DIR = "sweeps"
#: The workers' heartbeat settings (engine/sweep/storage.py, the same variables): a RUNNING trial
#: whose last heartbeat is older than the grace period is failed by the cockpit's timer too, and
#: retried as the worker would (at most MAX_RETRY times).
HEARTBEAT_S = int(os.environ.get("COCKPIT_SWEEP_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("COCKPIT_SWEEP_GRACE_S", "60"))
MAX_RETRY = 3


def storage_url(runs_root: Path, override: str | None = None) -> str:
    """`--storage`, else $COCKPIT_SWEEP_STORAGE, else SQLite at <runs-dir>/sweeps.db."""
    url = override or os.environ.get("COCKPIT_SWEEP_STORAGE")
    return url or f"sqlite:///{(runs_root / DEFAULT_DB).resolve()}"


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@")
_QUERY_PW = re.compile(r"(?i)([?&;](?:password|pass|pwd)=)[^&;\s]*")


def mask_url(text: str) -> str:
    """`text` with the password of every URL in it replaced by *** (the userinfo's and a
    password=... query argument), as the engine masks them."""
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))
    return _QUERY_PW.sub(r"\1***", out)


def _same_as(trial: Any) -> int | None:
    """The complete trial whose value a repeated trial was told (the worker's user attr same_as)."""
    n = trial.user_attrs.get("same_as")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite:/// URL, else None."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):]
    if path.startswith("file:"):  # a URI filename (e.g. ?mode=ro)
        path = path[len("file:"):].split("?", 1)[0]
    return Path(path)


@dataclass
class TrialRow:
    """One trial as the table shows it."""

    number: int
    state: str  # complete, pruned, fail, running, waiting
    params: dict[str, Any]
    value: float | None
    epochs: int  # intermediate values reported
    duration_s: float | None
    run_dir: str | None
    run_id: str | None
    best: bool = False  # the best trial; with several objectives, a trial on the Pareto front
    values: list[float] | None = None  # every objective's value (a complete trial)
    same_as: int | None = None  # told that complete trial's value: the same parameters, nothing run


@dataclass
class StudyView:
    """What the trials screen shows of one study."""

    name: str
    direction: str  # maximize or minimize
    metric: str
    trials: list[TrialRow]
    param_names: list[str]
    best: TrialRow | None
    best_so_far: tuple[list[float], list[float]]  # trial numbers, best value after each
    importances: dict[str, float] | None  # None: fewer than 2 complete trials, or not computable
    note: str = ""  # e.g. why importances are missing, or that stale trials were failed
    #: (metric, direction) of each objective; several: `best` is None and the front is marked
    objectives: list[tuple[str, str]] | None = None

    @property
    def multi(self) -> bool:
        return bool(self.objectives) and len(self.objectives) > 1

    @property
    def front(self) -> list[TrialRow]:
        """The Pareto front (several objectives), by trial number."""
        return [r for r in self.trials if r.best and r.values is not None] if self.multi else []


@dataclass
class StudySummary:
    name: str
    trials: int
    direction: str
    best: float | None


def fmt_value(v: Any) -> str:
    """A parameter or metric value, short."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def fmt_duration(s: float | None) -> str:
    if s is None or not math.isfinite(s) or s < 0:
        return ""
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class SweepReader:
    """Opens a storage once (lazily, in the worker thread) and reads studies from it."""

    def __init__(self, url: str, clock=None):
        import time

        self.url = url
        self.clock = clock or time.time
        self._storage = None
        self._lock = threading.Lock()
        #: Importances are costly (fANOVA): recomputed only when the complete trials change.
        self._importance_cache: dict[str, tuple[tuple, dict[str, float] | None, str]] = {}
        #: Set once failing stale trials was refused (a read-only storage): not tried again.
        self.stale_refused = ""

    def exists(self) -> bool:
        """False for a SQLite file that is not there yet (never create one just by looking)."""
        path = sqlite_path(self.url)
        return path is None or path.is_file()

    def storage(self):
        with self._lock:
            if self._storage is None:
                import optuna

                optuna.logging.set_verbosity(optuna.logging.WARNING)
                # heartbeats and fail_stale_trials are "experimental" to optuna: no warning each refresh
                warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
                kwargs: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
                params = inspect.signature(optuna.storages.RDBStorage).parameters
                retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
                    or optuna.storages.RetryFailedTrialCallback
                if "heartbeat_stale_trial_callback" in params:
                    kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=MAX_RETRY)
                else:
                    kwargs["failed_trial_callback"] = retry(max_retry=MAX_RETRY)
                if sqlite_path(self.url) is not None:
                    kwargs["engine_kwargs"] = {"connect_args": {"timeout": 10}}
                self._storage = optuna.storages.RDBStorage(self.url, **kwargs)
            return self._storage

    def studies(self) -> list[StudySummary]:
        """Every study in the storage ([] when there is no storage yet)."""
        if not self.exists():
            return []
        import optuna

        out = []
        for s in optuna.get_all_study_summaries(self.storage(), include_best_trial=True):
            directions = list(s.directions or [])
            direction = "/".join(d.name.lower() for d in directions) if directions else "?"
            best = s.best_trial.value if s.best_trial is not None and len(directions) == 1 else None
            out.append(StudySummary(s.study_name, s.n_trials, direction, best))
        return sorted(out, key=lambda s: s.name)

    def fail_stale(self, name: str) -> None:
        """Fail the study's RUNNING trials whose heartbeat went stale (then retried as the
        worker's callback would); a storage that refuses is left alone from then on."""
        if self.stale_refused:
            return
        import optuna

        try:
            study = optuna.load_study(study_name=name, storage=self.storage())
            optuna.storages.fail_stale_trials(study)
        except Exception as exc:  # noqa: BLE001 - read-only storage, locked database, ...
            self.stale_refused = f"stale trials not checked: {exc}"

    def read(self, name: str) -> StudyView:
        """The study's trials, best trial, best-so-far series and parameter importances."""
        import optuna

        self.fail_stale(name)
        study = optuna.load_study(study_name=name, storage=self.storage())
        if len(study.directions) > 1:
            return self._read_multi(name, study)
        maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        now = self.clock()
        rows: list[TrialRow] = []
        names: set[str] = set()
        for t in study.get_trials(deepcopy=False):
            value = t.values[0] if t.values else None
            if t.datetime_start is None:
                duration = None
            else:
                end = t.datetime_complete.timestamp() if t.datetime_complete else now
                duration = end - t.datetime_start.timestamp()
            rows.append(TrialRow(
                number=t.number, state=t.state.name.lower(), params=dict(t.params),
                value=value,
                epochs=len(t.intermediate_values), duration_s=duration,
                run_dir=_str_or_none(t.user_attrs.get("run_dir")), run_id=_str_or_none(t.user_attrs.get("run_id")),
                same_as=_same_as(t)))
            names.update(t.params)
        complete = [r for r in rows if r.state == "complete" and r.value is not None and math.isfinite(r.value)]
        best = None
        if complete:
            best = (max if maximize else min)(complete, key=lambda r: r.value)
            best.best = True
        xs, ys = [], []
        current = None
        for r in sorted(complete, key=lambda r: r.number):
            current = r.value if current is None else (max if maximize else min)(current, r.value)
            xs.append(float(r.number))
            ys.append(current)
        importances, note = self._importances(study, complete)
        if self.stale_refused:
            note = (note + "; " if note else "") + self.stale_refused
        metric = study.user_attrs.get("metric")
        return StudyView(name=name, direction="maximize" if maximize else "minimize",
                         metric=str(metric) if metric else "value", trials=rows,
                         param_names=sorted(names), best=best, best_so_far=(xs, ys),
                         importances=importances, note=note)

    def _rows(self, study) -> tuple[list[TrialRow], list[str]]:
        now = self.clock()
        rows: list[TrialRow] = []
        names: set[str] = set()
        for t in study.get_trials(deepcopy=False):
            end = t.datetime_complete.timestamp() if t.datetime_complete else now
            rows.append(TrialRow(
                number=t.number, state=t.state.name.lower(), params=dict(t.params),
                value=t.values[0] if t.values else None, epochs=len(t.intermediate_values),
                duration_s=None if t.datetime_start is None else end - t.datetime_start.timestamp(),
                run_dir=_str_or_none(t.user_attrs.get("run_dir")), run_id=_str_or_none(t.user_attrs.get("run_id")),
                values=list(t.values) if t.values else None, same_as=_same_as(t)))
            names.update(t.params)
        return rows, sorted(names)

    def _read_multi(self, name: str, study) -> StudyView:
        """A study of several objectives: every objective's value, the Pareto front marked."""
        rows, names = self._rows(study)
        directions = [d.name.lower() for d in study.directions]
        metrics = study.user_attrs.get("objectives")
        if not (isinstance(metrics, list) and len(metrics) == len(directions)):
            metrics = [f"objective {i}" for i in range(len(directions))]
        complete = [r for r in rows if r.state == "complete" and r.values
                    and all(math.isfinite(v) for v in r.values)]
        for r in pareto_front(complete, directions):
            r.best = True
        note = "importances: one objective at a time (not shown for several)"
        if self.stale_refused:
            note += "; " + self.stale_refused
        return StudyView(name=name, direction=directions[0], metric=str(metrics[0]), trials=rows,
                         param_names=names, best=None, best_so_far=([], []), importances=None, note=note,
                         objectives=[(str(m), d) for m, d in zip(metrics, directions)])

    def _importances(self, study, complete: list[TrialRow]) -> tuple[dict[str, float] | None, str]:
        if len(complete) < 2:
            return None, "importances need 2 complete trials"
        key = tuple((r.number, r.value) for r in complete)
        cached = self._importance_cache.get(study.study_name)
        if cached and cached[0] == key:
            return cached[1], cached[2]
        import optuna

        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # the same bars every time
            value = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
            note = ""
        except Exception as exc:  # noqa: BLE001 - e.g. a parameter with a single value
            value, note = None, f"importances: {exc}"
        self._importance_cache[study.study_name] = (key, value, note)
        return value, note


def pareto_front(rows: list[TrialRow], directions: list[str]) -> list[TrialRow]:
    """The rows no other row dominates (at least as good in every objective, better in one):
    what Optuna's study.best_trials holds, told without a storage round trip."""
    signs = [1 if d == "maximize" else -1 for d in directions]

    def dominates(a: TrialRow, b: TrialRow) -> bool:
        pairs = [(s * x, s * y) for s, x, y in zip(signs, a.values, b.values)]
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


# ---- promoting the best trial -------------------------------------------------------------

def set_dotted(cfg: dict, dotted: str, value: Any) -> None:
    """cfg["a"]["b"]["c"] = value for "a.b.c", creating tables on the way."""
    *path, last = dotted.split(".")
    node = cfg
    for part in path:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[last] = value


def promoted_config(base: dict, params: dict[str, Any], epochs: int) -> dict:
    """The base config with the best parameters, `train.epochs = epochs`, and the sweep off."""
    cfg = copy.deepcopy(base)
    for name, value in params.items():
        set_dotted(cfg, name, value)
    set_dotted(cfg, "train.epochs", int(epochs))
    cfg["sweep"] = {"enabled": False}
    return cfg


def base_config(trial: TrialRow) -> dict:
    """The best trial's own resolved config (its run directory's config.toml)."""
    if not trial.run_dir:
        raise ValueError(f"trial {trial.number} has no run directory (user attr run_dir)")
    path = Path(trial.run_dir) / "config.toml"
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def base_epochs(cfg: dict, default: int = 10) -> int:
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    epochs = train.get("epochs")
    return epochs if isinstance(epochs, int) and epochs > 0 else default


def promoted_path(runs_root: Path, study: str) -> Path:
    """<runs-dir>/sweeps/<study>-best.toml"""
    return runs_root / PROMOTED_DIR / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', study)}-best.toml"


def write_promoted(runs_root: Path, study: str, cfg: dict, path: Path | None = None) -> Path:
    """Write the promoted config (by default to promoted_path); returns its path."""
    import tomli_w

    path = path or promoted_path(runs_root, study)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(cfg))
    os.replace(tmp, path)
    return path

