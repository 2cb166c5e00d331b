"""Checkpoints: step, size and age, latest and best marked."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from rich.text import Text

from contracts.layout import RunLayout
from cockpit.history import RunHistory
from cockpit.widgets.pane import TextPane


def fmt_age(seconds: float) -> str:
    """An age in one unit: 42s, 5m, 3h, 2d."""
    s = int(max(0, seconds))
    if s >= 86400:
        return f"{s // 86400}d"
    if s >= 3600:
        return f"{s // 3600}h"
    return f"{s // 60}m" if s >= 60 else f"{s}s"


def on_disk(path: str, run: Path | None) -> bool:
    """Whether a checkpoint event's file still exists. The engine writes absolute paths; a
    relative path is taken against the run directory, and so is the file name of an absolute
    path that is not there (a run directory copied from another machine, or moved)."""
    p = Path(path)
    if run is None:
        return p.exists()
    if not p.is_absolute():
        return (run / p).exists()
    return p.exists() or (RunLayout(run).checkpoints / p.name).exists()


class CheckpointsPane(TextPane):
    """The checkpoints still on disk."""

    TITLE = "checkpoints"
    PLACEHOLDER = "no checkpoints yet"

    def __init__(self, *args, clock: Callable[[], float] = time.time, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock  # ages are by this clock (the tests fix it)

    def show(self, h: RunHistory) -> None:
        now = self.clock()
        alive = [e for p, e in h.checkpoints.items() if on_disk(p, h.run)]
        if not alive:
            self.text = Text("no checkpoints yet")
            return
        alive.sort(key=lambda e: e.get("step", 0))
        best = max((e for e in alive if e.get("best")), key=lambda e: e.get("step", 0), default=None)
        t = Text()
        for e in alive[-4:]:
            marks = ("latest " if e is alive[-1] else "") + ("best" if e is best else "")
            t.append(f"{e.get('step', '?'):>7} {e.get('bytes', 0) / 1e6:6.1f}MB "
                     f"{fmt_age(now - float(e.get('t', now))):>3} ")
            t.append(marks.strip() + "\n", style="bold")
        self.text = t
