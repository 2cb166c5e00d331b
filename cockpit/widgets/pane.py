"""The pane base classes: a bordered box with a title that shows one run's history."""

from __future__ import annotations

import math
from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from cockpit.history import RunHistory


class Pane(Static):
    """A pane of the run screen. The screen calls `show` with the run's history whenever it
    changed, at most once every `INTERVAL_S` seconds; a pane fed otherwise (the GPU's) ignores it."""

    #: The pane's border title.
    TITLE: ClassVar[str] = ""
    #: The shortest time between two draws, in seconds (charts are costly to redraw).
    INTERVAL_S: ClassVar[float] = 0.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: When the pane last drew (time.monotonic()); the screen keeps it.
        self.drawn_at = -math.inf

    def on_mount(self) -> None:
        self.border_title = self.TITLE

    def show(self, h: RunHistory) -> None:
        """Draw what the pane shows of the run's history (called with the history locked)."""


class TextPane(Pane):
    """A pane that draws one Text."""

    #: What the pane says before the first `show`.
    PLACEHOLDER: ClassVar[str] = ""

    text: reactive[Text] = reactive(Text(), layout=True)
    """What the pane shows (plain text to tests; its styles carry the colours)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_reactive(TextPane.text, Text(self.PLACEHOLDER))

    def render(self) -> Text:
        return self.text
