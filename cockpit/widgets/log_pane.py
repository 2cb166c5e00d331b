"""The tail of engine.log, warnings and errors highlighted; every line shown as plain text."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

from rich.text import Text

from contracts.layout import RunLayout
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


#: engine.log's time stamp: the pane shows the time of day only (the date is the run's).
STAMP = re.compile(r"^\d{4}-\d\d-\d\d (\d\d:\d\d:\d\d) ")


def short_line(line: str, run_name: str | None) -> str:
    """A log line as the pane shows it: the time without the date, and any absolute path into
    the run's directory (wherever it was recorded) shortened to `…/` plus the part inside it."""
    line = STAMP.sub(r"\1 ", line, count=1)
    if run_name:
        line = re.sub(r"(?<!\S)\S*/" + re.escape(run_name) + r"/", "…/", line)
    return line


def wrap_rows(lines: list[tuple[str, str]], width: int, height: int) -> list[tuple[str, str]]:
    """The newest messages that fit in `height` rows of `width`, each wrapped whole (continuation
    rows indented); (row, style) pairs, oldest first. The newest is shown even if it alone is taller."""
    rows: list[tuple[str, str]] = []
    for text, style in reversed(lines):
        wrapped = textwrap.wrap(text, max(10, width), subsequent_indent="  ", break_on_hyphens=False) or [""]
        if rows and len(rows) + len(wrapped) > height:
            break
        rows[:0] = [(r, style) for r in wrapped]
    return rows[:height] if len(rows) > height else rows


class LogPane(TextPane):
    """engine.log's last lines."""

    TITLE = "engine.log"
    PLACEHOLDER = "no log yet"

    def show(self, h: RunHistory) -> None:
        if h.run is not None:
            self.show_file(RunLayout(h.run).log)

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
        styled = []
        for line in tail_lines(path, n):
            low = line.lower()
            style = "bold red" if ("error" in low or "traceback" in low) else (
                "yellow" if "warning" in low else "")
            styled.append((short_line(clean(line), path.parent.name), style))
        width = self.content_size.width or max(20, self.size.width - 2)
        for i, (row, style) in enumerate(wrap_rows(styled, width, n)):
            t.append(("\n" if i else "") + row[:width], style=style)
        self.text = t if t.plain else Text(self.PLACEHOLDER)
