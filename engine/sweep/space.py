"""The search space: Optuna suggestions for [sweep.space], and the --set overrides they become."""

from __future__ import annotations

from typing import Any

from engine.config.schema import SpaceParam


def suggest(trial: Any, space: dict[str, SpaceParam]) -> dict[str, Any]:
    """One value per dotted key, asked of the trial (a retried trial gets its old values back)."""
    values: dict[str, Any] = {}
    for key, p in space.items():
        if p.choices is not None:
            values[key] = trial.suggest_categorical(key, list(p.choices))
        elif p.is_int:
            values[key] = trial.suggest_int(key, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            values[key] = trial.suggest_float(key, float(p.low), float(p.high),
                                              step=None if p.step is None else float(p.step), log=p.log)
    return values


def toml_value(value: Any) -> str:
    """A value as the TOML literal `--set` reads back exactly."""
    import tomli_w

    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).strip()[len("v = "):]


def set_args(values: dict[str, Any]) -> list[str]:
    return [f"--set={key}={toml_value(value)}" for key, value in values.items()]
