"""The user's cockpit settings: theme and key remapping, in a small TOML file.

    # ~/.config/training-cockpit/settings.toml
    theme = "cockpit-light"
    [keys]
    checkpoint = "C"      # binding id = key(s)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


def settings_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "training-cockpit" / "settings.toml"


@dataclass
class Settings:
    theme: str | None = None
    keys: dict[str, str] = field(default_factory=dict)


def load(path: Path | None = None) -> Settings:
    """Read settings; a missing or broken file gives the defaults."""
    path = path or settings_path()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return Settings()
    keys = {str(k): str(v) for k, v in (data.get("keys") or {}).items()}
    theme = data.get("theme") if isinstance(data.get("theme"), str) else None
    return Settings(theme, keys)


def save_theme(theme: str, path: Path | None = None) -> None:
    """Remember the theme, keeping the key remapping."""
    path = path or settings_path()
    if path.exists():
        try:
            tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            return  # never overwrite a file the user is still fixing (their keymap is in it)
    current = load(path)
    lines = [f'theme = "{theme}"']
    if current.keys:
        lines.append("[keys]")
        lines += [f'{k} = "{v}"' for k, v in current.keys.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
