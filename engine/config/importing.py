"""User code named in the config as 'package.module:attr' (model, dataset and teacher factories)."""

from __future__ import annotations

import importlib
from typing import Any

from contracts.errors import BadInput


def is_import_path(name: str) -> bool:
    """Whether name reads as 'package.module:attr' (checked at validation, imported only at build)."""
    return ":" in name and all(part.isidentifier() for part in name.replace(":", ".").split("."))


def import_factory(path: str, field: str) -> Any:
    """Import 'package.module:attr', with an error that names the config field."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInput(f"{field} = {path!r}: cannot import module {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise BadInput(f"{field} = {path!r}: module {module_name!r} has no callable {attr!r}")
    return fn
