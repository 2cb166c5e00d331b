"""A run's history, folded from its events: bounded in memory however long the run.

Each chart's points are a `Series` (cockpit/series.py: at most a few thousand points, merged
pairwise when full); step events are folded by one rule, `cockpit/step_fold.py`, whether they come
one at a time, in runs (`apply_many`) or from steps.f64 (cockpit/series_file.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cockpit.goodput import fold_ledger
from cockpit.ranks import MAX_ALERTS, RanksFold
from cockpit.sanitize import clean
from cockpit.series import Series
from cockpit.step_fold import fold, from_events
from cockpit.step_fold import number as _number, numbers_only as _numbers_only

#: Checkpoint events remembered (plus the newest best): far more than any keep_last.
MAX_CHECKPOINTS = 64
CHECKPOINT_NUMBERS = ("t", "step", "seconds", "bytes")
PROJECTION_NUMBERS = ("step", "target", "value", "projected_step", "projected_s", "projected_dollars", "asymptote",
                      "points")
COST_NUMBERS = ("price_per_hour", "accumulated", "projected", "price_age_s", "savings", "lost", "lost_steps",
                "per_epoch", "per_1k_samples", "on_demand_per_hour")


@dataclass
class RunHistory:
    """Everything the panes show about one run, updated one event at a time."""

    run: Path | None = None  # the run's directory (its checkpoints and engine.log are there)
    state: str = "unknown"
    reason: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    last_step: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, Any] = field(default_factory=dict)
    loss: Series = field(default_factory=Series)
    smooth: Series = field(default_factory=Series)
    lr: Series = field(default_factory=Series)
    throughput: Series = field(default_factory=lambda: Series(512))
    val_loss: Series = field(default_factory=lambda: Series(1024))
    val_accuracy: Series = field(default_factory=lambda: Series(1024))
    #: Training accuracy at logging steps (step events' `accuracy`; older engines send none).
    accuracy: Series = field(default_factory=Series)
    #: The step the newest state event named (a pause, a checkpoint), which may be past last_step's.
    state_step: float | None = None
    #: One series per named loss part (`"losses": {"ce": 0.41}` in step events), like `loss`.
    parts: dict[str, Series] = field(default_factory=dict)
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: deque = field(default_factory=lambda: deque(maxlen=500))
    error: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    spot: dict[str, Any] = field(default_factory=dict)
    doctor: dict[str, Any] = field(default_factory=dict)
    #: Config changes on resume (`config_change` events: the doctor's remedy, `resume --set`), newest last.
    changes: list = field(default_factory=list)
    #: The teacher of a distilled run: its source, T, alpha and its own validation metrics.
    distill: dict[str, Any] = field(default_factory=dict)
    #: The newest `ranks` event (several processes) and each rank's recent busy times.
    ranks: RanksFold = field(default_factory=RanksFold)
    #: The run's `alert` events, newest last (at most MAX_ALERTS), and how many came in all.
    alerts: deque = field(default_factory=lambda: deque(maxlen=MAX_ALERTS))
    alerts_total: int = 0
    #: A Slurm job's life (`slurm` and `requeue` events): its id, starts, time waited, requeues.
    slurm: dict[str, Any] = field(default_factory=dict)
    #: The newest `projection` event (train.target): what reaching the target will take.
    projection: dict[str, Any] = field(default_factory=dict)
    #: The newest `target` event (a target set live): metric (None: cleared), value, stop, by, step.
    target: dict[str, Any] = field(default_factory=dict)
    #: The newest `ledger` event (cockpit/goodput.py): where the run's time and dollars went.
    ledger: dict[str, Any] = field(default_factory=dict)
    events_seen: int = 0
    ema: float | None = None

    def apply(self, event: dict[str, Any]) -> str:
        """Fold one event in; returns its type (unknown types are counted and ignored)."""
        self.events_seen += 1
        kind = event.get("type", "")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            try:
                handler(event)
            except (KeyError, TypeError, ValueError, AttributeError):
                pass  # a malformed event of a known type is ignored like an unknown one
        return kind

    def apply_many(self, events: list[dict[str, Any]]) -> set[str]:
        """apply() for each event in turn, with runs of step events folded in bulk (a replay of a
        million steps); returns the types seen. The same history as apply(), point for point."""
        kinds: set[str] = set()
        steps: list[dict[str, Any]] = []
        ranks: list[dict[str, Any]] = []  # only the newest is drawn: folded together at the end
        for event in events:
            if event.get("type") == "step":
                steps.append(event)
                continue
            if event.get("type") == "ranks":
                ranks.append(event)
                continue
            if steps:
                self.fold_steps(steps)
                kinds.add("step")
                steps = []
            kinds.add(self.apply(event))
        if steps:
            self.fold_steps(steps)
            kinds.add("step")
        if ranks:
            self.events_seen += len(ranks)
            self.ranks.fold_many(ranks)
            kinds.add("ranks")
        return kinds

    def fold_steps(self, events: list[dict[str, Any]]) -> None:
        """Consecutive step events, each series extended once (step_fold: the one rule)."""
        self.events_seen += len(events)
        fold(self, from_events(events, self.parts))

    def _on_state(self, e: dict[str, Any]) -> None:
        self.state = str(e["state"])
        self.reason = e.get("reason")
        self.exit_code = e.get("exit_code")
        pid = e.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool):
            self.pid = pid
        self.state_step = _number(e.get("step"))

    @property
    def current_step(self) -> float | None:
        """The newest step the events name: the last step event's, or a later state event's."""
        steps = [s for s in (_number(self.last_step.get("step")), self.state_step) if s is not None]
        return max(steps) if steps else None

    def _on_step(self, e: dict[str, Any]) -> None:
        fold(self, from_events([e], self.parts))

    def _on_ranks(self, e: dict[str, Any]) -> None:
        self.ranks.fold(e)

    def _on_alert(self, e: dict[str, Any]) -> None:
        alert = {k: e[k] for k in ("t", "step", "kind", "severity", "message", "rank", "host") if k in e}
        self.alerts.append(alert)
        self.alerts_total += 1

    def _on_eval(self, e: dict[str, Any]) -> None:
        self.last_eval = e
        metrics, step = e["metrics"], _number(e.get("step"))
        if step is None:
            return
        for series, key in ((self.val_loss, "loss"), (self.val_accuracy, "accuracy")):
            value = _number(metrics.get(key))
            if value is not None:
                series.add(step, value)

    def _on_resume(self, e: dict[str, Any]) -> None:
        step = _number(e.get("step"))
        if step is None:
            return  # (a NaN step would drop every point)
        self.state_step = step
        for series in (*(s for s in vars(self).values() if isinstance(s, Series)), *self.parts.values()):
            series.drop_after(step)  # every series, one added later too
        ys = self.smooth.ys
        self.ema = ys[-1] if ys else None
        self.logs.append(("info", f"resumed from {e.get('checkpoint')} at step {int(step)}"))
        self.spot = {}  # the notice was for the session before; this one says where it runs
        if (_number(self.projection.get("step")) or 0) > step:
            self.projection = {}  # made from evaluations this resume superseded

    def _on_checkpoint(self, e: dict[str, Any]) -> None:
        self.checkpoints[str(e["path"])] = _numbers_only(e, CHECKPOINT_NUMBERS)
        if len(self.checkpoints) > MAX_CHECKPOINTS:
            # The engine keeps a handful on disk; remembering every one ever saved would
            # make the pane stat thousands of files per refresh on a long run.
            best = [p for p, c in self.checkpoints.items() if c.get("best")][-1:]
            recent = list(self.checkpoints)[-MAX_CHECKPOINTS:]
            self.checkpoints = {p: self.checkpoints[p] for p in self.checkpoints if p in best or p in recent}

    def _on_log(self, e: dict[str, Any]) -> None:
        self.logs.append((str(e.get("level", "info")), str(e.get("message", ""))))

    def _on_error(self, e: dict[str, Any]) -> None:
        self.error = e
        self.logs.append(("error", str(e.get("message", ""))))

    def _on_slurm(self, e: dict[str, Any]) -> None:
        s = self.slurm
        s["job_id"] = str(e.get("job_id"))[:20]
        s["starts"] = s.get("starts", 0) + 1
        s["restart_count"] = _number(e.get("restart_count")) or 0
        s["node_list"] = str(e.get("node_list") or "")[:60]
        waited = _number(e.get("waited_s"))
        if waited is not None:
            s["waited_s"] = s.get("waited_s", 0.0) + waited

    def _on_requeue(self, e: dict[str, Any]) -> None:
        if e.get("ok"):
            self.slurm["requeues"] = self.slurm.get("requeues", 0) + 1

    def _on_projection(self, e: dict[str, Any]) -> None:
        interval = e.get("interval") if isinstance(e.get("interval"), dict) else {}
        self.projection = {
            **_numbers_only(e, PROJECTION_NUMBERS),
            "metric": clean(str(e.get("metric", ""))), "message": clean(str(e.get("message", ""))),
            "reached": e.get("reached") is True,
            "low": _number(interval.get("low")), "high": _number(interval.get("high")),
        }

    def _on_target(self, e: dict[str, Any]) -> None:
        metric, value = e.get("metric"), _number(e.get("value"))
        self.target = {"metric": clean(str(metric)) if metric is not None and value is not None else None,
                       "value": value, "stop": e.get("stop") is True, "by": clean(str(e.get("by") or "command")),
                       "step": _number(e.get("step"))}
        what = f"{self.target['metric']} {value:g}" if self.target["metric"] else "none"
        if self.target["metric"] is None or self.projection.get("metric") != self.target["metric"] \
                or self.projection.get("target") != value:
            self.projection = {}  # for the target before (a fresh one follows when there are evaluations)
        step = self.target["step"]
        self.logs.append(("info", f"target set at step {'?' if step is None else int(step)} by {self.target['by']}: "
                                  f"{what}"
                                  + (", stop when reached" if self.target["stop"] and self.target["metric"] else "")))

    def _on_ledger(self, e: dict[str, Any]) -> None:
        self.ledger = fold_ledger(e)  # cumulative over the sessions: the newest is the whole story

    def _on_cost(self, e: dict[str, Any]) -> None:
        self.cost = _numbers_only(e, COST_NUMBERS)

    def _on_spot(self, e: dict[str, Any]) -> None:
        # a status starts afresh (a new session, maybe a new instance); the others add to it
        self.spot = dict(e) if e.get("kind", "status") == "status" else {**self.spot, **e}

    def _on_distill(self, e: dict[str, Any]) -> None:
        metrics = e.get("metrics")
        metrics = {k: v for k, v in metrics.items() if _number(v) is not None} if isinstance(metrics, dict) else {}
        self.distill = {**_numbers_only(e, ("temperature", "alpha")), "metrics": metrics}

    def _on_doctor(self, e: dict[str, Any]) -> None:
        before = self.doctor
        self.doctor = _numbers_only(e, ("step", "share"))
        if self.changes and "after" not in self.changes[-1] and before.get("bound") and self.doctor.get("bound"):
            # the first verdict after a config change says whether it helped
            self.changes[-1].update(before=before, after=self.doctor)
            was = f"{before['bound']}-bound {float(before.get('share') or 0):.0%}"
            now = f"{self.doctor['bound']}-bound {float(self.doctor.get('share') or 0):.0%}"
            self.logs.append(("info", f"doctor after the change: {now} (before it: {was})"))

    def _on_config_change(self, e: dict[str, Any]) -> None:
        changes = e.get("changes")
        if not isinstance(changes, dict):
            return
        self.changes = [*self.changes[-63:], {"step": _number(e.get("step")), "changes": changes}]
        for name, pair in changes.items():
            old, new = pair if isinstance(pair, list) and len(pair) == 2 else (None, pair)
            self.logs.append(("info", f"step {e.get('step')}: {name} {old} \u2192 {new}"
                                      + ("" if e.get("exact", True) else " (not an exact resume)")))
