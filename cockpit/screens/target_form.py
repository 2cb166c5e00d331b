"""The target form (`T` on the run screen): the metric, the value and whether reaching it finishes
the run, prefilled with the run's current target; it dismisses with a TargetChange (None: cancelled)
that the run screen sends as the `target` command."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select

from cockpit.run_target import Target, check_value


@dataclass(frozen=True)
class TargetChange:
    """TargetScreen's answer: the `target` command's fields (metric None: clear the target)."""

    metric: str | None
    value: float | None
    stop: bool

    def command(self) -> dict:
        """The `target` command's arguments."""
        if self.metric is None:
            return {"clear": True, "by": "cockpit"}
        return {"metric": self.metric, "value": self.value, "stop": self.stop, "by": "cockpit"}


class TargetScreen(ModalScreen["TargetChange | None"]):
    """Set (or clear) the followed run's target while it trains."""

    DEFAULT_CSS = """
    TargetScreen { align: center middle; }
    #target-box { width: 90%; max-width: 80; height: auto; padding: 0 1; border: thick $primary; background: $surface; }
    #target-box .target-row { height: 3; }
    #target-box .target-label { width: 10; padding: 1 1 0 0; text-style: bold; }
    #target-box Select, #target-box Input { width: 1fr; }
    #target-error { color: $error; }
    #target-buttons { height: 3; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="target-cancel")]

    def __init__(self, run: str, metrics: list[str], now: Target):
        super().__init__()
        self.run, self.metrics, self.now = run, metrics, now

    def compose(self) -> ComposeResult:
        metric = self.now.metric if self.now.metric in self.metrics else self.metrics[0]
        now = (f"now: {self.now.metric} {self.now.value:g}" + (", stops the run when reached" if self.now.stop else "")
               if self.now.metric else "now: no target")
        with Vertical(id="target-box"):
            yield Label(f"Target for {self.run} ({now}). The projection beside the ETA follows it. "
                        "Enter sets it, Esc cancels.", markup=False, id="target-about")
            with Horizontal(classes="target-row"):
                yield Label("metric", classes="target-label")
                yield Select([(m, m) for m in self.metrics], value=metric, allow_blank=False, id="target-metric")
            with Horizontal(classes="target-row"):
                yield Label("value", classes="target-label")
                yield Input(value="" if self.now.value is None else f"{self.now.value:g}",
                            placeholder="e.g. 0.98", id="target-value")
            yield Checkbox("stop the run when reached", value=self.now.stop, id="target-stop")
            yield Label("", id="target-error", markup=False)
            with Horizontal(id="target-buttons"):
                yield Button("Set target", id="target-set", variant="primary")
                yield Button("Clear target", id="target-clear", disabled=self.now.metric is None)

    def on_mount(self) -> None:
        self.query_one("#target-value", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "target-clear":
            self.dismiss(TargetChange(None, None, False))
        else:
            self.submit()

    def submit(self) -> None:
        """Dismiss with the new target, or say what is wrong with the value and stay."""
        metric = str(self.query_one("#target-metric", Select).value)
        value = check_value(metric, self.query_one("#target-value", Input).value)
        if isinstance(value, str):
            self.query_one("#target-error", Label).update(value)
            self.query_one("#target-value", Input).focus()
            return
        self.dismiss(TargetChange(metric, value, self.query_one("#target-stop", Checkbox).value))

    def action_cancel(self) -> None:
        self.dismiss(None)
