"""What reaching the target will cost: a learning curve fitted to the run's own evaluations.

After each evaluation (`eval` event) the `Projection` sink fits a saturating curve to the run's
evaluation history, metric against optimizer step, and emits a `projection` event: the step at
which the curve reaches `train.target`, the wall time and the dollars from now to get there, an
interval, the curve's asymptote and the fit's residuals; or why the target is out of reach.

**The law.** An inverse power law with an asymptote, in the direction of improvement::

    y(step) = a - b * (step / s0) ** (-c)        (accuracy: y = the metric; loss, perplexity: y = -metric)

with b >= 0 (the curve improves), 0.05 <= c <= 3 and a bounded by what the metric can be
(accuracy at most 1, loss at least 0, perplexity at least 1); s0 is the first evaluation's step,
so the numbers stay of order one. Why this law: learning curves of a fixed model and data set
against the amount of training are, in the literature (Hestness et al. 2017, Kaplan et al. 2020;
Viering and Loog's 2022 survey of learning-curve shapes) and in our own runs, well described by
a power law that saturates at an irreducible error; three parameters are as many as three
evaluations can pin down, the asymptote `a` is the number a user wants to see ("levels off near
0.962"), and the inverse gives the target's step in closed form. Exponential saturation
(a - b e^(-c step)) levels off too early for the slow tails of real runs and makes every far
target look unreachable.

**The fit.** For a fixed c the law is linear in (a, b), so the fit is a profile: for each of 64
values of c (log-spaced) a weighted least-squares fit of (a, b) in closed form, reweighted with
Huber weights (delta = 1.345 robust standard deviations from the residuals' median absolute
deviation) for 8 rounds, so a noisy evaluation does not drag the curve; the c with the least
Huber loss wins, then a finer grid around it, twice. The residuals are relative: each is divided
by the point's distance from the metric's bound (the error rate 1 - accuracy, the loss, the
perplexity - 1), which is a least-squares fit on the log scale to first order; without it the
first, steep evaluations outweigh the flat tail that decides where the curve levels off (on the
bench's runs it halved the error at 50% progress on two of five curves and changed none for the
worse). numpy only (scipy is not a dependency).

**The interval.** From 200 refits on residual-bootstrap resamples (the fitted curve plus the
residuals drawn with replacement, scaled by sqrt(n / (n - 3)) for the three fitted parameters):
the 10th and 90th percentiles of the projected step. Nothing is projected before the fourth
evaluation: with three the three-parameter law passes through every point, leaves no residuals
to judge it by, and extrapolated wildly on the bench's runs (the gpt's +76% to +226% at 30%); the
message says how many evaluations it waits for. A resample whose curve never reaches the target makes the high
end open (null) once more than one in ten do.

Limitations, measured in bench/projection_accuracy.py (numbers in bench/RESULTS.md): a learning
rate schedule that decays to the end (cosine, the demos') bends the last part of the curve down
faster than any law fitted to its first part can know, so early projections of a far target are
pessimistic for such runs (often "levels off" below a value the run does reach); a target near a
noisy plateau (accuracy on a few hundred validation images) is crossed by chance as much as by
learning.

Rank 0 only: the sink sees every event of the run (`step` for the measured seconds per step,
`cost` for the price per hour). The stop at the target is an evaluation hook of the loop
(engine/train/target.py), agreed by every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

MIN_POINTS = 4  # see 'The interval' above: three points leave the law unjudged
C_GRID = np.exp(np.linspace(math.log(0.05), math.log(3.0), 64))
HUBER_K = 1.345
ROUNDS = 8
BOOTSTRAPS = 200
RELATIVE = True
#: Where the law's asymptote may lie, in the direction of improvement (y = metric or -metric).
UPPER = {"val_accuracy": 1.0, "val_loss": 0.0, "val_perplexity": -1.0}


@dataclass
class Curve:
    """A fitted law y = a - b (step / s0)^-c, y in the direction of improvement."""

    a: float
    b: float
    c: float
    s0: float
    residuals: list[float] = field(default_factory=list)  # y - fit, in y's units, in step order

    def at(self, step: float) -> float:
        return self.a - self.b * (step / self.s0) ** (-self.c)

    def step_for(self, y: float) -> float | None:
        """The step at which the curve reaches y (None: it levels off below y)."""
        if self.a <= y:
            return None
        if self.b <= 0:
            return 0.0
        return self.s0 * (self.b / (self.a - y)) ** (1.0 / self.c)


def _wls(z: np.ndarray, y: np.ndarray, w: np.ndarray, upper: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares of y = a - b z for every row of z (and w) at once: (a, b), b >= 0,
    a <= upper. z, w: (..., n); y: (..., n) broadcastable."""
    sw = w.sum(-1)
    sz, sy = (w * z).sum(-1), (w * y).sum(-1)
    szz, szy = (w * z * z).sum(-1), (w * z * y).sum(-1)
    den = sw * szz - sz * sz
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(np.abs(den) > 1e-300, (sw * szy - sz * sy) / den, 0.0)  # y = a + slope z
        a = (sy - slope * sz) / sw
        b = -slope
        flat = b < 0  # no improvement: a flat line at the weighted mean
        a = np.where(flat, sy / sw, a)
        b = np.where(flat, 0.0, b)
        capped = a > upper  # the asymptote past what the metric can be: fix it there, refit b
        b_cap = np.maximum(0.0, np.where(szz > 0, (upper * sz - szy) / szz, 0.0))
        a = np.where(capped, upper, a)
        b = np.where(capped, b_cap, b)
    return a, b


def _fit_many(x: np.ndarray, y: np.ndarray, upper: float, cs: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Huber-IRLS fits of y (B, n) for every c in cs: the best (a, b, c, loss) per row."""
    z = x[None, None, :] ** (-cs[None, :, None])                     # (1, C, n)
    yy = y[:, None, :]                                                # (B, 1, n)
    # relative residuals: each point's residual over its distance from the metric's bound (the error
    # rate, the loss), so the flat tail counts as much as the steep start
    gap = np.maximum(upper - yy, 1e-6) if RELATIVE and math.isfinite(upper) else np.ones_like(yy)
    w0 = 1.0 / gap ** 2
    w = w0 * np.ones((1, len(cs), 1))                                 # (B, C, n)
    for _ in range(ROUNDS):
        a, b = _wls(z, yy, w, upper)
        r = (yy - (a[..., None] - b[..., None] * z)) / gap
        mad = np.median(np.abs(r - np.median(r, -1, keepdims=True)), -1, keepdims=True) * 1.4826
        scale = np.maximum(mad, 1e-9 + 1e-6 * np.abs(yy / gap).mean(-1, keepdims=True))
        delta = HUBER_K * scale
        ar = np.abs(r)
        w = w0 * np.where(ar <= delta, 1.0, delta / np.maximum(ar, 1e-300))
    a, b = _wls(z, yy, w, upper)
    r = (yy - (a[..., None] - b[..., None] * z)) / gap
    ar = np.abs(r)
    loss = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum(-1)  # (B, C)
    best = np.argmin(loss, -1)
    rows = np.arange(y.shape[0])
    return a[rows, best], b[rows, best], cs[best], loss[rows, best]


def fit(steps: Iterable[float], values: Iterable[float], metric: str = "val_accuracy") -> Curve | None:
    """The law fitted to (step, metric value) pairs (None with fewer than MIN_POINTS usable ones).
    The curve's a and residuals are in the direction of improvement (loss: negated)."""
    pts = sorted((float(s), float(v)) for s, v in zip(steps, values)
                 if s > 0 and math.isfinite(float(v)))
    if len(pts) < MIN_POINTS:
        return None
    sign = 1.0 if UPPER.get(metric, 1.0) > 0 else -1.0
    s0 = pts[0][0]
    x = np.array([s for s, _ in pts]) / s0
    y = np.array([sign * v for _, v in pts])
    upper = UPPER.get(metric, math.inf)
    grid = C_GRID
    a, b, c, _ = _fit_many(x, y[None, :], upper, grid)
    for _ in range(2):  # twice finer around the best c
        i = int(np.searchsorted(grid, c[0]))
        grid = np.exp(np.linspace(math.log(grid[max(0, i - 1)]), math.log(grid[min(len(grid) - 1, i + 1)]), 33))
        a, b, c, _ = _fit_many(x, y[None, :], upper, grid)
    curve = Curve(float(a[0]), float(b[0]), float(c[0]), s0)
    curve.residuals = [float(v - curve.at(s * s0)) for s, v in zip(x, y)]
    return curve


def interval(curve: Curve, steps: list[float], y_target: float, metric: str,
             seed: int = 0) -> tuple[float | None, float | None, bool]:
    """(low, high) of the projected step over residual-bootstrap refits; high None when more than
    one resample in ten never reaches the target; the flag says the interval is only the point
    (no residuals to resample: as many evaluations as parameters)."""
    n = len(curve.residuals)
    point = curve.step_for(y_target)
    res = np.array(curve.residuals)
    if n <= 3 or not np.any(np.abs(res) > 0):
        return point, point, True
    rng = np.random.default_rng(seed)
    x = np.array(sorted(steps)) / curve.s0
    fitted = np.array([curve.at(s * curve.s0) for s in x])
    draws = rng.integers(0, n, size=(BOOTSTRAPS, n))
    y = fitted[None, :] + res[draws] * math.sqrt(n / (n - 3))
    around = np.exp(np.linspace(math.log(curve.c) - 0.1, math.log(curve.c) + 0.1, 9))
    a, b, c, _ = _fit_many(x, y, UPPER.get(metric, math.inf), np.union1d(C_GRID, around))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        reach = a > y_target
        s = np.where(reach, curve.s0 * (np.maximum(b, 0) / np.where(reach, a - y_target, 1.0)) ** (1.0 / c), np.inf)
    s = np.where(np.isfinite(s), s, np.inf)
    low = float(np.percentile(s, 10, method="lower"))
    high = float(np.percentile(s, 90, method="higher"))
    if point is not None:  # the interval holds the fit's own projection
        low, high = min(low, point), max(high, point)
    return (low if math.isfinite(low) else None), (high if math.isfinite(high) else None), False


def _steps(n: float) -> str:
    return f"{int(round(n)):,}"


def duration(seconds: float) -> str:
    """A short human duration: 45 s, 12 min, 3.4 h, 2.1 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def project(history: list[tuple[int, float]], metric: str, target: float, total_steps: int | None,
            s_per_step: float | None = None, price_per_hour: float | None = None) -> dict[str, Any]:
    """The `projection` event's fields from the evaluation history [(step, value)] so far."""
    up = UPPER.get(metric, 1.0) > 0
    sign = 1.0 if up else -1.0
    history = [(int(s), float(v)) for s, v in history]
    step, value = history[-1]
    met = [s for s, v in history if (v >= target if up else v <= target)]
    out: dict[str, Any] = {
        "metric": metric, "target": target, "step": step, "value": value, "reached": bool(met),
        "projected_step": None, "projected_s": None, "projected_dollars": None,
        "interval": None, "asymptote": None, "residuals": None, "law": "a - b * step^-c", "points": len(history),
        "s_per_step": None if s_per_step is None else round(s_per_step, 6),
    }
    name = f"target {metric} {target:g}"
    curve = fit([s for s, _ in history], [v for _, v in history], metric)
    if curve is not None:
        out["asymptote"] = round(sign * curve.a, 6)
        out["residuals"] = [round(sign * r, 6) for r in curve.residuals]
        out["params"] = {"a": round(sign * curve.a, 6), "b": round(curve.b, 6), "c": round(curve.c, 4),
                         "s0": curve.s0}
    if met:
        first = met[0]
        out.update(projected_step=first, projected_s=0.0, projected_dollars=0.0 if price_per_hour else None)
        out["message"] = f"{name} reached at step {_steps(first)} ({value:.4g})"
        return out
    if curve is None:
        out["message"] = f"{name}: projected after {MIN_POINTS} evaluations (have {len(history)})"
        return out
    y_target = sign * target
    at = curve.step_for(y_target)
    low, high, exact = interval(curve, [s for s, _ in history], y_target, metric)
    if at is None:
        out["message"] = (f"{name}: not reached within this run's steps: the curve levels off near "
                          f"{sign * curve.a:.4g}")
        return out
    at = max(at, float(step))
    out["projected_step"] = int(math.ceil(at))
    out["interval"] = {"low": None if low is None else int(max(low, step)),
                       "high": None if high is None else int(math.ceil(max(high, step)))}
    when = ""
    if s_per_step is not None:
        out["projected_s"] = round(float((at - step) * s_per_step), 1)
        when = f", {duration(out['projected_s'])}"
        if price_per_hour is not None:
            out["projected_dollars"] = round(out["projected_s"] / 3600 * float(price_per_hour), 4)
            when += f", ${out['projected_dollars']:.2f}"
    iv = out["interval"]
    span = (f" (from {len(history)} evaluations: no interval yet)" if exact else
            f" ({_steps(iv['low']) if iv['low'] is not None else '?'}-"
            f"{_steps(iv['high']) if iv['high'] is not None else 'never'})")
    if total_steps is not None and at > total_steps:
        out["message"] = (f"{name}: not reached within this run's steps ({_steps(total_steps)}): projected at "
                          f"~step {_steps(at)}{span}{when}; the curve levels off near {sign * curve.a:.4g}")
    else:
        out["message"] = f"{name}: ~step {_steps(at)}{span}{when}"
    return out


class Projection:
    """A telemetry sink (rank 0): a `projection` event after every `eval` event while the run has
    a target, and one at once when a `target` event (the live `target` command) changes it.

    Every metric's evaluations are kept (the target may move to another metric): `histories`
    maps a metric's key ("accuracy") to [(step, value)], the evaluations of earlier sessions of
    the run (a resume) when known at the start; `prior`, when they are not (a resumed run without
    a target), reads them at the first `target` event. `clock`-free: times come from the events' `t`.
    """

    def __init__(self, metric: str | None, target: float | None, total_steps: int | None, emit: Callable[..., Any],
                 histories: dict[str, list[tuple[int, float]]] | None = None,
                 prior: Callable[[], dict[str, list[tuple[int, float]]]] | None = None):
        self.total_steps, self.emit_event, self.prior = total_steps, emit, prior
        self.metric: str | None = None
        self.target: float | None = None
        self._aim(metric, target)
        self.histories: dict[str, list[tuple[int, float]]] = {k: list(v) for k, v in (histories or {}).items()}
        self.first: tuple[float, int] | None = None  # (t, step) of this session's first step event
        self.last: tuple[float, int] | None = None
        self.price: float | None = None

    def _aim(self, metric: Any, target: Any) -> None:
        ok = isinstance(metric, str) and isinstance(target, (int, float)) and not isinstance(target, bool)
        self.metric, self.target = (metric, float(target)) if ok else (None, None)

    @property
    def key(self) -> str | None:
        return self.metric.removeprefix("val_") if self.metric else None

    @property
    def history(self) -> list[tuple[int, float]]:
        """The target metric's evaluations so far [(step, value)]."""
        return self.histories.get(self.key or "", [])

    def s_per_step(self) -> float | None:
        """Wall seconds per step this session, evaluations and checkpoints between included."""
        if self.first is None or self.last is None or self.last[1] <= self.first[1]:
            return None
        return (self.last[0] - self.first[0]) / (self.last[1] - self.first[1])

    def emit(self, event: dict[str, Any]) -> None:
        try:
            self._on(event)
        except Exception:  # noqa: BLE001 - a projection must never take training down
            pass

    def _on(self, event: dict[str, Any]) -> None:
        kind, t, step = event.get("type"), event.get("t"), event.get("step")
        if kind == "cost" and isinstance(event.get("price_per_hour"), (int, float)):
            self.price = float(event["price_per_hour"])
        elif kind == "resume" and isinstance(step, int):
            self.histories = {k: [(s, v) for s, v in h if s <= step] for k, h in self.histories.items()}
            self.first = self.last = None
        elif kind == "target":
            self._retarget(event)
        elif kind in ("step", "eval") and isinstance(step, int) and isinstance(t, (int, float)):
            if kind == "step" and self.first is None:
                self.first = (float(t), step)
            if self.first is not None:
                self.last = (float(t), step)
            if kind == "eval":
                self._on_eval(event, step)

    def _on_eval(self, event: dict[str, Any], step: int) -> None:
        metrics = event.get("metrics") or {}
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                h = self.histories.setdefault(key, [])
                h[:] = [(s, v) for s, v in h if s < step] + [(step, float(value))]
        if self.metric is not None and self.key in metrics:
            self._project()

    def _retarget(self, event: dict[str, Any]) -> None:
        """A new target (or none): projected at once from the evaluations so far."""
        if self.prior is not None:  # a resumed run's earlier evaluations, read once
            loaded, self.prior = self.prior(), None
            for key, points in loaded.items():
                merged = dict(points)
                merged.update(dict(self.histories.get(key, [])))
                self.histories[key] = sorted(merged.items())
        self._aim(event.get("metric"), event.get("value"))
        if self.metric is not None and self.history:
            self._project()

    def _project(self) -> None:
        fields = project(self.history, self.metric, self.target, self.total_steps, self.s_per_step(), self.price)
        self.emit_event("projection", **fields)

    def close(self) -> None:
        pass


def prior_histories(path: Any) -> dict[str, list[tuple[int, float]]]:
    """Every metric's evaluations in a run's events file so far (resumes replayed), as
    {key: [(step, value)]}; only the `eval` and `resume` lines are decoded."""
    from contracts.events import decode_event

    out: dict[str, dict[int, float]] = {}
    try:
        with open(path, "rb") as f:
            for line in f:
                if b'"eval"' not in line and b'"resume"' not in line:
                    continue
                e = decode_event(line)
                if e is None or not isinstance(e.get("step"), int):
                    continue
                if e.get("type") == "resume":
                    out = {k: {s: v for s, v in h.items() if s <= e["step"]} for k, h in out.items()}
                elif e.get("type") == "eval":
                    for key, v in (e.get("metrics") or {}).items():
                        if isinstance(v, (int, float)) and not isinstance(v, bool):
                            out.setdefault(key, {})[e["step"]] = float(v)
    except OSError:
        pass
    return {k: sorted(h.items()) for k, h in out.items()}
