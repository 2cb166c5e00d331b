"""Modal screens: help, stop confirmation, the doctor's remedy, new-run prompt, quantization mode and report, spot launch."""

from __future__ import annotations

from rich.table import Table
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
        keys = Table.grid(padding=(0, 2))  # a long explanation wraps inside its own column
        keys.add_column(justify="right", style="bold", no_wrap=True)
        keys.add_column(no_wrap=True)
        keys.add_column()
        for key, description, tooltip in self.rows:
            keys.add_row(Text(key), Text(description), Text(tooltip))
        with Vertical(id="help-box"):
            yield Static(Text("Keys\n", style="bold"))
            yield Static(keys)
            yield Static(Text("\nCtrl+P opens the command palette. "
                              "Remap keys in ~/.config/training-cockpit/settings.toml."))

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
            yield Label(f"Stop the run? (y/n)\n{self.run} checkpoints, then its engine exits.",
                        markup=False)  # a run's name is a directory name: any text at all
            yield Button("Stop the run", id="yes", variant="error")
            yield Button("Keep training", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ConfirmFix(ModalScreen[bool]):
    """The doctor's remedy needs a yes: it stops the run (after a checkpoint) and resumes it changed."""

    BINDINGS = [Binding("y", "answer(True)", "Yes", id="fix-yes"),
                Binding("n,escape", "answer(False)", "No", id="fix-no")]

    def __init__(self, run: str, field: str, old: str, new: str, exact: bool, why: str = ""):
        super().__init__()
        self.run, self.field, self.old, self.new, self.exact, self.why = run, field, old, new, exact, why

    def compose(self) -> ComposeResult:
        lines = [f"Apply the doctor's remedy? (y/n)", f"{self.field}: {self.old} \u2192 {self.new}"]
        if self.why:
            lines.append(self.why)
        lines.append(f"{self.run} checkpoints, stops, and resumes from that checkpoint with this change.")
        if not self.exact:
            lines.append("This change breaks exact resume: the steps after it differ from a run "
                         "started with the new value.")
        with Vertical(id="confirm-box"):
            yield Label("\n".join(lines), markup=False, id="fix-text")
            yield Button("Apply and resume", id="yes", variant="warning")
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


QUANT_MODES = {"s": ("static", "static int8, calibrated (conv nets)"),
               "d": ("dynamic", "dynamic int8 of the Linear layers (MLPs, transformers)"),
               "a": ("qat-convert", "convert a quantization-aware-trained run")}


class QuantizeScreen(ModalScreen[str | None]):
    """Pick how to quantize a finished run; the run's config suggests one."""

    BINDINGS = [Binding("s", "pick('static')", "Static", id="quant-static"),
                Binding("d", "pick('dynamic')", "Dynamic", id="quant-dynamic"),
                Binding("a", "pick('qat-convert')", "QAT convert", id="quant-qat"),
                Binding("escape", "pick(None)", "Cancel", id="quant-cancel")]

    def __init__(self, run: str, suggested: str):
        super().__init__()
        self.run, self.suggested = run, suggested

    def compose(self) -> ComposeResult:
        lines = [f"Quantize {self.run} to int8 (writes RUN/quantized/, measures it against the float model):", ""]
        for key, (mode, what) in QUANT_MODES.items():
            mark = "  <- suggested" if mode == self.suggested else ""
            lines.append(f"  {key}  {mode:<12} {what}{mark}")
        lines += ["", "Enter takes the suggestion, Esc cancels."]
        with Vertical(id="quant-box"):
            yield Label("\n".join(lines), markup=False)
            yield Button(f"Quantize ({self.suggested})", id="go", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.suggested)

    def action_pick(self, mode: str | None) -> None:
        self.dismiss(mode)


class ReportScreen(ModalScreen[None]):
    """A plain-text report (the quantization table) until Escape."""

    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close", id="report-close")]

    def __init__(self, title: str, text: str):
        super().__init__()
        self.title_text, self.text = title, text

    def compose(self) -> ComposeResult:
        with Vertical(id="report-box"):
            yield Static(Text(self.title_text + "\n", style="bold"))
            yield Static(Text(self.text), id="report-text")
            yield Static(Text("\nEsc closes."))

    def action_dismiss(self) -> None:
        self.dismiss(None)


class SpotLaunchScreen(ModalScreen[dict | None]):
    """Ask for what `cockpit-engine cloud launch --spot` needs: config, instance type, S3 location."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="launch-cancel")]

    def __init__(self, s3_uri: str = "", instance_type: str = "g5.xlarge"):
        super().__init__()
        self.defaults = {"s3": s3_uri, "type": instance_type}

    def compose(self) -> ComposeResult:
        with Vertical(id="launch-box"):
            yield Label("Train a config on an EC2 spot instance, mirrored to S3 (Enter in the last field "
                        "launches, Esc cancels). Credentials come from boto3's usual chain.", markup=False)
            yield Input(placeholder="config file, e.g. run.toml", id="launch-config")
            yield Input(value=self.defaults["type"], placeholder="instance type", id="launch-type")
            yield Input(value=self.defaults["s3"], placeholder="s3://bucket/prefix", id="launch-s3")
            yield Input(placeholder="region (blank: boto3's default)", id="launch-region")
            yield Input(placeholder="AMI id (blank: the AWS Deep Learning AMI with PyTorch)", id="launch-ami")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        order = ["launch-config", "launch-type", "launch-s3", "launch-region", "launch-ami"]
        values = {i: self.query_one(f"#{i}", Input).value.strip() for i in order}
        missing = [i for i in order[:3] if not values[i]]
        if missing:
            self.query_one(f"#{missing[0]}", Input).focus()
            return
        self.dismiss({"config": values["launch-config"], "instance_type": values["launch-type"],
                      "s3_uri": values["launch-s3"], "region": values["launch-region"], "ami": values["launch-ami"]})

    def action_cancel(self) -> None:
        self.dismiss(None)
