"""A screen that stands aside for a "terminal too small" notice when the terminal is too small."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Static

MIN_WIDTH, MIN_HEIGHT = 60, 20


class SizedScreen(Screen):
    """Shows #too-small instead of #main below MIN_WIDTH x MIN_HEIGHT (see app.tcss)."""

    @staticmethod
    def too_small() -> Static:
        """The notice, for compose (hidden unless the screen has the class "too-small")."""
        return Static(f"terminal too small: the cockpit needs at least {MIN_WIDTH}x{MIN_HEIGHT}",
                      id="too-small")

    def on_mount(self) -> None:
        self.check_size(self.app.size.width, self.app.size.height)

    def on_resize(self, event) -> None:
        self.check_size(event.size.width, event.size.height)

    def check_size(self, width: int, height: int) -> None:
        self.set_class(width < MIN_WIDTH or height < MIN_HEIGHT, "too-small")
