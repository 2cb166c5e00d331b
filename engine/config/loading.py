"""Reading a config: TOML file, --set overrides, validation with errors that name the field.

Every error names the field path, the value given and what was expected; unknown keys get a
"did you mean"; an error at a path given with --set is attributed to --set. Nothing here
imports torch, so a bad config is refused in a fraction of a second, before anything is written.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.config.base import suggest
from engine.config.schema import Config
from contracts.errors import BadInput


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = Config
    for part in path:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _format_error(err: dict[str, Any], source: str) -> str:
    loc = tuple(p for p in err["loc"])
    path = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = parent.model_fields if parent else {}
        hint = suggest(str(loc[-1]), known) or f"; known keys: {', '.join(known)}"
        return f"{source}: {path} = {err['input']!r}: unknown key{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "int_type" and isinstance(err["input"], float):
        value = err["input"]
        hint = f" (write {int(value)})" if value.is_integer() and abs(value) < 1e18 else ""
        return f"{source}: {path} = {value!r}: expected an integer, got a float{hint}"
    if err["type"] == "value_error":
        prefix = f"{path}." if path else ""
        return f"{source}: {prefix}{msg}"
    return f"{source}: {path} = {err['input']!r}: {msg[0].lower()}{msg[1:]}"


def validate(data: dict[str, Any], source: str = "config", overridden: tuple[str, ...] = ()) -> Config:
    """Validate a raw dict into a Config, raising BadInput listing every problem.

    Errors at a path given with --set are attributed to --set rather than to the file.
    """
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        def origin(err: dict[str, Any]) -> str:
            path = ".".join(str(p) for p in err["loc"])
            if any(path == o or path.startswith(o + ".") for o in overridden):
                return "--set"
            # a section-level check (loc is the section) that names a field given with --set
            named = [o for o in overridden if o.startswith(path + ".") if path and
                     o.rsplit(".", 1)[-1] in err["msg"]]
            return "--set" if named else source

        lines = [_format_error(e, origin(e)) for e in exc.errors()]
        raise BadInput("invalid config:\n  " + "\n  ".join(lines)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``--set section.key=value``; the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise BadInput(f"--set {text!r}: expected section.key=value, e.g. train.epochs=5")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return [p.strip() for p in key.strip().split(".")], value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw config dict with each ``--set`` applied."""
    out = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise BadInput(f"--set {text!r}: {part} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file, turning a missing file or a syntax error into BadInput."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"config file {str(p)!r}: not found (write one with `cockpit-engine example-config > run.toml`)")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"config file {str(p)!r}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"config file {str(p)!r}: not UTF-8 text: {exc}") from None


def load(path: str | os.PathLike[str] | None, overrides: list[str] = ()) -> Config:
    """Load a config file (or the defaults when path is None) with overrides applied."""
    raw = read_toml(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    overridden = tuple(".".join(parse_override(o)[0]) for o in overrides)
    return validate(apply_overrides(raw, list(overrides)), source, overridden)


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML text (None values are left out: they are defaults)."""
    import tomli_w

    return tomli_w.dumps(cfg.model_dump(exclude_none=True))


def positive_int(text: str) -> int:
    """An argparse type for a count on the command line (--repeats, --calibration-batches):
    a whole number, 1 or more."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number, 1 or more")
    return value
