"""Themes are palettes in files (themes/*.toml), loaded into Textual Theme objects."""

from __future__ import annotations

import tomllib
from pathlib import Path

from textual.theme import Theme

THEMES_DIR = Path(__file__).resolve().parent.parent / "themes"


def load_themes(folder: Path = THEMES_DIR) -> list[Theme]:
    """Every theme file in the folder, sorted by name."""
    out = []
    for path in sorted(folder.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        variables = {str(k): str(v) for k, v in data.pop("variables", {}).items()}
        out.append(Theme(variables=variables, **data))
    return out
