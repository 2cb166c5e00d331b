"""Modal screens: help, stop confirmation, new-run prompt."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class HelpScreen(ModalScreen[None]):
    """Every key the cockpit answers to."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close", id="help-close")]

    def __init__(self, rows: list[tuple[str, str, str]]):
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        text = Text("Keys\n\n", style="bold")
        for key, description, tooltip in self.rows:
            text.append(f"{key:>8}  ", style="bold")
            text.append(f"{description:<22} {tooltip}\n")
        text.append("\nCtrl+P opens the command palette. Remap keys in ~/.config/training-cockpit/settings.toml.")
        with Vertical(id="help-box"):
            yield Static(text)

    def action_dismiss(self) -> None:
        self.dismiss(None)


class ConfirmStop(ModalScreen[bool]):
    """Stop needs a second yes: it ends the training run (after a checkpoint)."""

    BINDINGS = [Binding("y", "answer(True)", "Yes", id="confirm-yes"),
                Binding("n,escape", "answer(False)", "No", id="confirm-no")]

    def __init__(self, run: str):
        super().__init__()
        self.run = run

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label(f"Stop the run? (y/n)\n{self.run} checkpoints, then its engine exits.")
            yield Button("Stop the run", id="yes", variant="error")
            yield Button("Keep training", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class NewRunScreen(ModalScreen[str | None]):
    """Ask for a config file to start a new run from."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="new-cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="new-box"):
            yield Label("Config file for the new run (Enter to start, Esc to cancel):")
            yield Input(placeholder="run.toml", id="config-path")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
