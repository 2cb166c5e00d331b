"""The one rule that folds step events into a RunHistory, wherever their numbers come from.

A step event's numbers reach the history two ways: decoded from events.jsonl (the follower, one
event or a run of them; a replay without steps.f64) and as steps.f64's records (the fast replay,
cockpit/series_file.py). Either becomes a `StepBatch` (`from_events`, `from_records`): for each
series, the (steps, values) of the events that had a finite number there. `fold` puts a batch
into the history: every series of STEP_SERIES, the smoothed loss, the named loss parts, and the
newest event as the panes show it.

The history's step series are steps.f64's columns (`contracts.steps.COLUMNS`), checked when this
module is imported: a series the file does not record would make the fast replay differ from the
events, so adding one without its column stops the cockpit from starting rather than going unnoticed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from contracts.steps import COLUMNS
from cockpit.series import Series

if TYPE_CHECKING:
    from cockpit.history import RunHistory

#: Named loss parts followed (a step event's `losses`); further names are ignored.
MAX_PARTS = 16
#: A loss part's name longer than this is malformed: ignored.
MAX_PART_NAME = 64
#: The smoothed loss: ema = DECAY * ema + GAIN * loss (the first loss starts it).
DECAY, GAIN = 0.9, 0.1
#: Fields the panes format as numbers (a malformed event must not take the cockpit down).
STEP_NUMBERS = ("step", "epoch", "batch", "batches_per_epoch", "loss", "lr", "samples_per_s", "steps_per_s",
                "eta_s", "time_data_s", "time_h2d_s", "time_compute_s", "time_optim_s", "time_comm_s",
                "time_bubble_s", "accuracy", "tflops", "mfu")
#: The history's step series: its attribute and the step event's field, a column of steps.f64. A new
#: step series is one line here and one in contracts.steps.COLUMNS (checked below).
STEP_SERIES = (("loss", "loss"), ("lr", "lr"), ("throughput", "samples_per_s"), ("accuracy", "accuracy"))

Points = tuple[list[float], list[float]]


def check_columns(series: Iterable[tuple[str, str]] = STEP_SERIES, columns: Iterable[str] = COLUMNS) -> None:
    """Raise unless every step series is a column of steps.f64 (the fast replay folds those)."""
    missing = [key for _, key in series if key not in tuple(columns)]
    if missing:
        raise RuntimeError(f"the cockpit's step series {missing} are not columns of steps.f64: add them to "
                           "contracts.steps.COLUMNS (the engine records them), or the fast replay would drop them")


check_columns()


def number(value: Any) -> float | None:
    """A finite number, or None (JSON readers accept NaN and Infinity; the engine writes them as strings)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value) if math.isfinite(value) else None
        except OverflowError:  # an integer past float's range (json reads any)
            return None
    return None


def numbers_only(e: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The event without those of `keys` that are not finite numbers: panes format them as numbers."""
    return {k: v for k, v in e.items() if k not in keys or number(v) is not None}


@dataclass
class StepBatch:
    """Consecutive step events' numbers, series by series: for each field of STEP_SERIES (`series`)
    and each named loss part (`parts`), the (steps, values) of the events with a finite number there."""

    series: dict[str, Points]
    parts: dict[str, Points]
    #: The newest event that had a step, as decoded (the panes show it); None from steps.f64.
    newest: dict[str, Any] | None = None


def from_events(events: Iterable[dict[str, Any]], kept: dict[str, Series]) -> StepBatch:
    """Decoded step events as a batch; events without a finite step are skipped. `kept`: the parts
    the history follows already (at most MAX_PARTS in all are followed, the first named first)."""
    series: dict[str, Points] = {key: ([], []) for _, key in STEP_SERIES}
    columns = [(key, xs, ys) for key, (xs, ys) in series.items()]
    parts: dict[str, Points] = {}
    room, newest = MAX_PARTS - len(kept), None
    for e in events:
        step = e.get("step")
        if not (step.__class__ is float and step - step == 0.0 or (step := number(step)) is not None):
            continue
        newest = e
        for key, xs, ys in columns:
            value = e.get(key)
            if value.__class__ is float and value - value == 0.0 or (value := number(value)) is not None:
                xs.append(step)
                ys.append(value)
        losses = e.get("losses")
        if not isinstance(losses, dict):
            continue  # older engines send no parts
        for name, value in losses.items():
            if (value := number(value)) is None or not isinstance(name, str) or len(name) > MAX_PART_NAME:
                continue
            points = parts.get(name)
            if points is None:
                if name not in kept:
                    if room <= 0:
                        continue  # a malformed event must not grow memory without bound
                    room -= 1
                points = parts[name] = ([], [])
            points[0].append(step)
            points[1].append(value)
    return StepBatch(series, parts, newest)


def _present(xs: list[float], ys: list[float]) -> Points:
    """The points whose value is a number (NaN: the event had none)."""
    if not ys or not math.isnan(sum(ys)):
        return xs, ys
    kept = [(x, y) for x, y in zip(xs, ys) if y == y]
    return [p[0] for p in kept], [p[1] for p in kept]


def from_records(cols: list, parts: list[str], a: int, b: int) -> StepBatch:
    """steps.f64's records a..b-1 as a batch. `cols`: the file's columns (arrays of float64: start,
    end, then COLUMNS, then one per loss part, named by `parts`); NaN where an event had no number."""
    steps = cols[2][a:b].tolist()
    rows = None
    if steps and math.isnan(sum(steps)):  # an event without a step: skipped, as from_events does
        rows = [i for i, s in enumerate(steps) if s == s]
        steps = [steps[i] for i in rows]

    def column(index: int) -> Points:
        values = cols[index][a:b].tolist()
        return _present(steps, values if rows is None else [values[i] for i in rows])

    series = {key: column(2 + COLUMNS.index(key)) for _, key in STEP_SERIES}
    return StepBatch(series, {name: column(2 + len(COLUMNS) + k) for k, name in enumerate(parts)})


def _admit(parts: dict[str, Series], name: str) -> bool:
    """Whether the history follows this loss part (a new one gets its series while there is room)."""
    if name in parts:
        return True
    if not isinstance(name, str) or len(name) > MAX_PART_NAME or len(parts) >= MAX_PARTS:
        return False
    parts[name] = Series()
    return True


def fold(h: RunHistory, batch: StepBatch) -> None:
    """Put a batch into the history, each series extended once (the same points as one event at a
    time: Series.extend is Series.add in bulk). The caller counts the events (events_seen)."""
    lx, ly = batch.series["loss"]
    ema, sy = h.ema, []
    for y in ly:
        ema = y if ema is None else DECAY * ema + GAIN * y
        sy.append(ema)
    h.ema = ema
    h.smooth.extend(lx, sy)
    for attr, key in STEP_SERIES:
        getattr(h, attr).extend(*batch.series[key])
    for name, (xs, ys) in batch.parts.items():
        if xs and _admit(h.parts, name):
            h.parts[name].extend(xs, ys)
    if batch.newest is not None:
        h.last_step = numbers_only(batch.newest, STEP_NUMBERS)
