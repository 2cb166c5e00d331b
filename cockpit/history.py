"""A run's history, folded from its events: bounded in memory however long the run.

Charts need at most a few thousand points, so each series keeps at most `capacity` points and,
when full, merges neighbouring pairs (averaging them). A million step events cost the same
memory as four thousand, and the shape of the curve survives.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


#: Checkpoint events remembered (plus the newest best): far more than any keep_last.
MAX_CHECKPOINTS = 64
#: Named loss parts followed (a step event's `losses`); further names are ignored.
MAX_PARTS = 16


class Series:
    """(x, y) points, downsampled by pairwise merging once `capacity` is reached."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.weights: list[int] = []
        self.stride = 1  # raw points per stored point, once merging started
        self.pending: list[tuple[float, float]] = []

    def add(self, x: float, y: float) -> None:
        """Append one raw point."""
        self.pending.append((x, y))
        if len(self.pending) < self.stride:
            return
        px = self.pending[-1][0]
        py = sum(p[1] for p in self.pending) / len(self.pending)
        self.xs.append(px)
        self.ys.append(py)
        self.weights.append(len(self.pending))
        self.pending = []
        if len(self.xs) >= self.capacity:
            self._halve()

    def _halve(self) -> None:
        xs, ys, ws = [], [], []
        for i in range(0, len(self.xs) - 1, 2):
            w = self.weights[i] + self.weights[i + 1]
            xs.append(self.xs[i + 1])
            ys.append((self.ys[i] * self.weights[i] + self.ys[i + 1] * self.weights[i + 1]) / w)
            ws.append(w)
        if len(self.xs) % 2:
            xs.append(self.xs[-1]), ys.append(self.ys[-1]), ws.append(self.weights[-1])
        self.xs, self.ys, self.weights = xs, ys, ws
        self.stride *= 2

    def extend(self, xs: list[float], ys: list[float]) -> None:
        """add() for each point in turn, in bulk: the same stored points, bit for bit (a replay)."""
        i, n = 0, len(xs)
        while i < n:
            if self.pending:  # top up the partial bucket first, exactly as add() would
                take = min(self.stride - len(self.pending), n - i)
                self.pending.extend(zip(xs[i:i + take], ys[i:i + take]))
                i += take
                if len(self.pending) < self.stride:
                    return
                self.pending, last = [], self.pending
                self._bucket(last)
                continue
            s = self.stride
            full = min(self.capacity - len(self.xs), (n - i) // s)
            bx, by, bw = self.xs.append, self.ys.append, self.weights.append
            for a in range(i, i + full * s, s):
                bx(xs[a + s - 1])
                by(sum(ys[a:a + s]) / s)
                bw(s)
            i += full * s
            if len(self.xs) >= self.capacity:
                self._halve()
            elif i < n:
                self.pending = list(zip(xs[i:], ys[i:]))
                return

    def _bucket(self, pending: list[tuple[float, float]]) -> None:
        """One full bucket from its raw points (add()'s arithmetic)."""
        self.xs.append(pending[-1][0])
        self.ys.append(sum(p[1] for p in pending) / len(pending))
        self.weights.append(len(pending))
        if len(self.xs) >= self.capacity:
            self._halve()

    def drop_after(self, x: float) -> None:
        """Forget points past x (a resume recomputes them)."""
        keep = [i for i, v in enumerate(self.xs) if v <= x]
        self.xs = [self.xs[i] for i in keep]
        self.ys = [self.ys[i] for i in keep]
        self.weights = [self.weights[i] for i in keep]
        self.pending = [p for p in self.pending if p[0] <= x]

    def points(self) -> tuple[list[float], list[float]]:
        """Stored points plus the partial bucket, for drawing."""
        if not self.pending:
            return self.xs, self.ys
        tail_y = sum(p[1] for p in self.pending) / len(self.pending)
        return self.xs + [self.pending[-1][0]], self.ys + [tail_y]

    def __len__(self) -> int:
        return len(self.xs) + (1 if self.pending else 0)


def _number(value: Any) -> float | None:
    """A finite number, or None (JSON readers accept NaN and Infinity; the engine writes them as strings)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


#: Fields the panes format as numbers (a malformed event must not take the cockpit down).
STEP_NUMBERS = ("step", "epoch", "batch", "batches_per_epoch", "loss", "lr", "samples_per_s", "steps_per_s",
                "eta_s", "time_data_s", "time_h2d_s", "time_compute_s", "time_optim_s", "time_comm_s",
                "accuracy", "tflops", "mfu")
#: The series a step event feeds besides the loss (the attribute, the event's field); _on_step and
#: the bulk replay (_fold_steps) both read this table, so a new step series is one line here.
STEP_SERIES = (("lr", "lr"), ("throughput", "samples_per_s"), ("accuracy", "accuracy"))
CHECKPOINT_NUMBERS = ("t", "step", "seconds", "bytes")
COST_NUMBERS = ("price_per_hour", "accumulated", "projected", "price_age_s", "savings", "lost", "lost_steps",
                "per_epoch", "per_1k_samples", "on_demand_per_hour")


def _numbers_only(e: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The event without those of `keys` that are not finite numbers: panes format them as numbers."""
    return {k: v for k, v in e.items() if k not in keys or _number(v) is not None}


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
        for event in events:
            if event.get("type") == "step":
                steps.append(event)
                continue
            if steps:
                self._fold_steps(steps)
                kinds.add("step")
                steps = []
            kinds.add(self.apply(event))
        if steps:
            self._fold_steps(steps)
            kinds.add("step")
        return kinds

    def _fold_steps(self, events: list[dict[str, Any]]) -> None:
        """_on_step for consecutive step events, appending to each series once. The last event goes
        through apply() itself, so whatever _on_step keeps of the newest step is kept as it does."""
        *events, newest = events
        self.events_seen += len(events)
        cols: dict[str, tuple[list[float], list[float]]] = {key: ([], []) for _, key in STEP_SERIES}
        lx, ly, sy = [], [], []
        parts: dict[str, tuple[list[float], list[float]]] = {}
        ema, last = self.ema, None
        for e in events:
            step = e.get("step")
            if not (step.__class__ is int or _number(step) is not None):
                continue
            step = float(step)
            last = e
            loss = e.get("loss")
            if loss.__class__ is float and loss - loss == 0.0 or (loss := _number(loss)) is not None:
                lx.append(step)
                ly.append(loss)
                ema = loss if ema is None else 0.9 * ema + 0.1 * loss
                sy.append(ema)
            for key, (xs, ys) in cols.items():
                value = e.get(key)
                if value.__class__ is float and value - value == 0.0 or (value := _number(value)) is not None:
                    xs.append(step)
                    ys.append(value)
            losses = e.get("losses")
            if losses is not None:
                self._collect_parts(step, losses, parts)
        if last is not None:
            self.last_step = _numbers_only(last, STEP_NUMBERS)
            self.ema = ema
            self.loss.extend(lx, ly)
            self.smooth.extend(lx, sy)
            for attr, key in STEP_SERIES:
                xs, ys = cols[key]
                getattr(self, attr).extend(xs, ys)
            for name, (xs, ys) in parts.items():
                self.parts[name].extend(xs, ys)
        self.apply(newest)

    def _collect_parts(self, step: float, losses: Any, into: dict[str, tuple[list[float], list[float]]]) -> None:
        """_add_parts, into lists for Series.extend."""
        for name, value in self._valid_parts(losses):
            xs, ys = into.setdefault(name, ([], []))
            xs.append(step)
            ys.append(value)

    def _valid_parts(self, losses: Any) -> Any:
        """(name, value) of a step's named loss parts that may be kept; a malformed event must
        not grow memory without bound. Events without parts (older engines) give nothing."""
        if not isinstance(losses, dict):
            return
        for name, value in losses.items():
            value = _number(value)
            if value is None or not isinstance(name, str) or len(name) > 64:
                continue
            if name not in self.parts and len(self.parts) >= MAX_PARTS:
                continue
            self.parts.setdefault(name, Series())
            yield name, value

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
        e = _numbers_only(e, STEP_NUMBERS)
        step, loss = _number(e.get("step")), _number(e.get("loss"))
        if step is None:
            return
        self.last_step = e
        if loss is not None:
            self.loss.add(step, loss)
            self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
            self.smooth.add(step, self.ema)
        for attr, key in STEP_SERIES:
            value = _number(e.get(key))
            if value is not None:
                getattr(self, attr).add(step, value)
        self._add_parts(step, e.get("losses"))

    def _add_parts(self, step: float, losses: Any) -> None:
        """A step's named loss parts; events without them (older engines) add nothing."""
        for name, value in self._valid_parts(losses):
            self.parts[name].add(step, value)

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
        for series in (self.loss, self.smooth, self.lr, self.throughput, self.val_loss, self.val_accuracy,
                       self.accuracy, *self.parts.values()):
            series.drop_after(step)
        ys = self.smooth.ys
        self.ema = ys[-1] if ys else None
        self.logs.append(("info", f"resumed from {e.get('checkpoint')} at step {int(step)}"))
        self.spot = {}  # the notice was for the session before; this one says where it runs

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
