"""The tail of engine.log, warnings and errors highlighted; every line shown as plain text."""

from __future__ import annotations

import os
from pathlib import Path

from rich.text import Text

from cockpit.history import RunHistory
from cockpit.sanitize import clean
from cockpit.widgets.pane import TextPane


def tail_lines(path: Path, n: int, max_bytes: int = 65536) -> list[str]:
    """The last n lines of a file, reading only its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            data = f.read()
    except OSError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-n:]


class LogPane(TextPane):
    """engine.log's last lines."""

    TITLE = "engine.log"
    PLACEHOLDER = "no log yet"

    def show(self, h: RunHistory) -> None:
        if h.run is not None:
            self.show_file(h.run / "engine.log")

    def show_file(self, path: Path, n: int | None = None) -> None:
        """The last n lines (default: as many as the pane has rows, so the newest line shows)."""
        n = n or self.content_size.height or 8
        try:
            stat = path.stat()
            key = (str(path), stat.st_size, stat.st_mtime_ns, n, self.size.width)
        except OSError:
            key = None
        if key is not None and key == getattr(self, "_shown", None):
            return  # unchanged since the last refresh: no re-read
        self._shown = key
        t = Text(no_wrap=True, overflow="ellipsis")
        for i, line in enumerate(tail_lines(path, n)):
            low = line.lower()
            style = "bold red" if ("error" in low or "traceback" in low) else (
                "yellow" if "warning" in low else "")
            t.append(("\n" if i else "") + clean(line)[: max(20, self.size.width - 2)], style=style)
        self.text = t if t.plain else Text(self.PLACEHOLDER)
