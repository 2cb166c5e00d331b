"""The config schema as a commented example TOML file and as a Markdown field reference."""

from __future__ import annotations

import json
from typing import Any, Iterator

from pydantic import BaseModel

from engine.config.schema import Config


def _sections(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            path = f"{prefix}{name}"
            yield path, ann
            yield from _sections(ann, f"{path}.")


def _leaves(model: type[BaseModel]) -> Iterator[tuple[str, Any, str]]:
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            continue
        default = field.get_default(call_default_factory=True)
        yield name, default, field.description or ""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{}" if not value else "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def example_toml() -> str:
    """A complete config file: every field at its default, each with its description."""
    out = ["# Training Cockpit run config. Every field is shown at its default.",
           "# Run it: cockpit-engine run THIS_FILE [--set section.key=value ...]", ""]
    for path, model in _sections(Config):
        out.append(f"[{path}]")
        if model.__doc__:
            out.append(f"# {model.__doc__.strip().splitlines()[0]}")
        for name, default, desc in _leaves(model):
            out.append(f"# {desc}")
            line = f"{name} = {_toml_value(default)}"
            out.append(f"# {name} = ..." if default is None else line)
        out.append("")
    return "\n".join(out)


def markdown_reference() -> str:
    """The field reference table for the README."""
    out = ["| field | default | meaning |", "|---|---|---|"]
    for path, model in _sections(Config):
        for name, default, desc in _leaves(model):
            shown = "—" if default is None else f"`{_toml_value(default)}`"
            out.append(f"| `{path}.{name}` | {shown} | {desc.replace('|', '/')} |")
    return "\n".join(out)
