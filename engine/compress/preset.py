"""The "half-width" student preset: the teacher's model with its width-like factory args halved.

small_cnn: `width` (default 32) halved; mlp: every `hidden` width halved (default [256, 256]);
gpt: `dim` halved (default 128), with `heads` halved too where they would no longer divide it.
Any other model (a torchvision name, a factory of yours) has no width we know how to halve: the
preset refuses it, naming model.name, and `--student CONFIG` gives the student instead.
"""

from __future__ import annotations

from typing import Any

from contracts.errors import BadInput

PRESETS = ("half-width",)
DEFAULTS = {"small_cnn": {"width": 32}, "mlp": {"hidden": [256, 256]}, "gpt": {"dim": 128, "heads": 4}}


def _half(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        raise BadInput(f"--preset half-width: model.factory_args.{field} = {value!r}: expected a whole number, "
                       "2 or more, to halve")
    return value // 2


def half_width(name: str, factory_args: dict[str, Any]) -> dict[str, Any]:
    """The student's factory_args (only the keys that change): width-like args halved."""
    if name not in DEFAULTS:
        raise BadInput(f"--preset half-width: model.name = {name!r}: the preset halves small_cnn's width, mlp's "
                       "hidden widths and gpt's dim, and knows no width of this model; give the student "
                       "with --student CONFIG")
    args = {**DEFAULTS[name], **factory_args}
    if name == "small_cnn":
        return {"width": _half(args["width"], "width")}
    if name == "mlp":
        hidden = args["hidden"]
        if not isinstance(hidden, list) or not hidden:
            raise BadInput(f"--preset half-width: model.factory_args.hidden = {hidden!r}: expected a list of widths")
        return {"hidden": [_half(h, "hidden") for h in hidden]}
    dim, heads = _half(args["dim"], "dim"), args["heads"]
    while isinstance(heads, int) and heads > 1 and dim % heads:
        heads //= 2
    return {"dim": dim, "heads": heads}


def as_sets(args: dict[str, Any]) -> list[str]:
    """The factory args as `--set model.factory_args.KEY=VALUE` overrides (TOML values)."""
    import json

    return [f"model.factory_args.{k}={json.dumps(v)}" for k, v in args.items()]
