"""A run's target (train.target, train.stop_at_target) as the cockpit knows it, and the checks of
a new one before the `target` command carries it to the engine (which checks it again).

The current target is the newest `target` event's (a target set live), else the run's
config.toml; the metrics offered are those the run's evaluations report.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The metrics a target may name, in the engine's order (engine.config.training.TARGET_METRICS).
TARGET_METRICS = ("val_accuracy", "val_loss", "val_perplexity")


@dataclass(frozen=True)
class Target:
    """A run's target: metric None is no target."""

    metric: str | None = None
    value: float | None = None
    stop: bool = False


def from_config(run: Path) -> tuple[Target, str]:
    """The target in the run's config.toml, and its data.name ("" when unreadable)."""
    try:
        cfg = tomllib.loads((Path(run) / "config.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return Target(), ""
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    goal = train.get("target") if isinstance(train.get("target"), dict) else None
    name = str(data.get("name") or "")
    if goal is None or not isinstance(goal.get("value"), (int, float)):
        return Target(), name
    return Target(str(goal.get("metric") or "val_accuracy"), float(goal["value"]),
                  train.get("stop_at_target") is True), name


def current(run: Path, live: dict[str, Any]) -> Target:
    """The run's target now: the newest `target` event's fields (`live`, folded by RunHistory),
    else the config's."""
    if live:
        value = live.get("value")
        if live.get("metric") is None or not isinstance(value, (int, float)):
            return Target()
        return Target(str(live["metric"]), float(value), live.get("stop") is True)
    return from_config(run)[0]


def metrics_of(run: Path, last_eval: dict[str, Any]) -> list[str]:
    """The target metrics the run's evaluation reports: the newest `eval` event's, else what its
    data.name implies (perplexity: a language model's)."""
    reported = last_eval.get("metrics") if isinstance(last_eval.get("metrics"), dict) else {}
    if reported:
        found = [m for m in TARGET_METRICS if m.removeprefix("val_") in reported]
        if found:
            return found
    text = from_config(run)[1] == "text"
    return [m for m in TARGET_METRICS if m != "val_perplexity" or text]


def check_value(metric: str, raw: str) -> float | str:
    """The typed value as a number, or what is wrong with it (naming the field and the value)."""
    try:
        value = float(raw.strip())
    except ValueError:
        return f"value = {raw.strip()!r}: expected a number, such as 0.98"
    if not math.isfinite(value):
        return f"value = {raw.strip()}: expected a finite number"
    if metric == "val_accuracy" and not 0 < value <= 1:
        return f"value = {value:g}: val_accuracy is a share, expected 0 < value <= 1"
    if metric == "val_loss" and value <= 0:
        return f"value = {value:g}: val_loss targets are above 0"
    if metric == "val_perplexity" and value <= 1:
        return f"value = {value:g}: val_perplexity targets are above 1"
    return value
