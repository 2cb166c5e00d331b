"""The search space: Optuna suggestions for [sweep.space], and the --set overrides they become.

When the space chooses the architecture (`model.name`), a `model.factory_args.X` is suggested
only for a model that takes X (define-by-run: Optuna sees the conditional space it is), and the
trial's whole factory_args table is written: the base config's arguments the chosen model takes,
plus the suggested ones (small_cnn's `norm` is not handed to an MLP).
"""

from __future__ import annotations

import re
from typing import Any

from contracts.errors import BadInput
from engine.config.schema import Config, SpaceParam
from engine.config.sweep import MODEL_ARGS, model_choices, takes

FACTORY_ARGS = "model.factory_args."


def suggest(trial: Any, space: dict[str, SpaceParam], model: str = "") -> dict[str, Any]:
    """One value per dotted key, asked of the trial (a retried trial gets its old values back);
    model.name first, and a factory argument only where the chosen model takes it."""
    values: dict[str, Any] = {}
    keys = sorted(space, key=lambda k: k != "model.name")
    for key in keys:
        p = space[key]
        chosen = values.get("model.name", model)
        if key.startswith(FACTORY_ARGS) and chosen and not takes(str(chosen), key[len(FACTORY_ARGS):]):
            continue
        if p.choices is not None:
            values[key] = trial.suggest_categorical(key, list(p.choices))
        elif p.is_int:
            values[key] = trial.suggest_int(key, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            values[key] = trial.suggest_float(key, float(p.low), float(p.high),
                                              step=None if p.step is None else float(p.step), log=p.log)
    return values


def overrides(cfg: Config, values: dict[str, Any]) -> dict[str, Any]:
    """The dotted overrides of a trial: `values`, except that with model.name among them the
    factory arguments become one table (the base's that the chosen model takes, then the suggested)."""
    if "model.name" not in values:
        return dict(values)
    model = str(values["model.name"])
    table = {k: v for k, v in cfg.model.factory_args.items() if takes(model, k)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key.startswith(FACTORY_ARGS):
            table[key[len(FACTORY_ARGS):]] = value
        else:
            out[key] = value
    out["model.factory_args"] = table
    return out


def check_model_names(cfg: Config) -> None:
    """Refuse, before any trial, a model name that is neither built in, a factory, nor torchvision's
    (torchvision is imported only when a name needs it)."""
    names = [n for n in model_choices(cfg) if n not in MODEL_ARGS and ":" not in n]
    if not names:
        return
    import torchvision

    known = set(torchvision.models.list_models(module=torchvision.models))
    where = "sweep.space.'model.name'" if "model.name" in cfg.sweep.space else "model.name"
    for name in names:
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, sorted(known) + sorted(MODEL_ARGS), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise BadInput(f"{where}: {name!r} is not a model: expected {', '.join(MODEL_ARGS)}, a torchvision "
                           f"classification model or 'package.module:factory'{hint}")


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_value(value: Any) -> str:
    """A value as the TOML literal `--set` reads back exactly."""
    import tomli_w

    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k if _BARE_KEY.match(str(k)) else toml_value(str(k))} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    return tomli_w.dumps({"v": value}).strip()[len("v = "):]


def set_args(values: dict[str, Any]) -> list[str]:
    return [f"--set={key}={toml_value(value)}" for key, value in values.items()]
