"""Modal screens: help, stop confirmation, the doctor's remedy, new-run prompt (local, or submitted to
Slurm), a Slurm job's cancel confirmation, quantization mode and report, spot launch, and the trials
screen's promote form (its launch form is sweep_launch.py's).

A form that asks for several values dismisses with one of the typed answers below (None: cancelled).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from cockpit.sweeps import TrialRow, fmt_value


@dataclass(frozen=True)
class SpotLaunch:
    """SpotLaunchScreen's answer: what `cockpit-engine cloud launch --spot` needs (blank: its default)."""

    config: str
    instance_type: str
    s3_uri: str
    region: str = ""
    ami: str = ""


@dataclass(frozen=True)
class SlurmSubmit:
    """NewRunScreen's answer when "submit to Slurm" is chosen: `cockpit-engine slurm submit CONFIG
    --nodes N --gpus-per-node G --time T [--partition P]` (blank partition: the cluster's default)."""

    config: str
    nodes: int = 1
    gpus_per_node: int = 0
    time: str = "1:00:00"
    partition: str = ""


@dataclass(frozen=True)
class Promotion:
    """PromoteScreen's answer: where the promoted run's config goes, and its epochs."""

    config: Path
    epochs: int


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


class ConfirmCancelJob(ModalScreen[bool]):
    """Cancelling a Slurm job needs a second yes: `scancel` ends it (a pending job never runs)."""

    BINDINGS = [Binding("y", "answer(True)", "Yes", id="cancel-job-yes"),
                Binding("n,escape", "answer(False)", "No", id="cancel-job-no")]

    def __init__(self, job_id: int, run: str, state: str):
        super().__init__()
        self.job_id, self.run, self.state = job_id, run, state

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label(f"Cancel Slurm job {self.job_id}? (y/n)\n{self.run} is {self.state}; scancel ends the job "
                        "(a running engine gets SIGTERM: it checkpoints and stops; SIGKILL follows after the "
                        "cluster's KillWait).",
                        markup=False)
            yield Button("Cancel the job", id="yes", variant="error")
            yield Button("Keep it", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class NewRunScreen(ModalScreen["str | SlurmSubmit | None"]):
    """Ask for a config file to start a new run from: a path (a local run), or, where `slurm` is
    true (sbatch on PATH) and "submit to Slurm" is chosen, a SlurmSubmit with nodes, GPUs per node,
    time and partition."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="new-cancel")]

    def __init__(self, slurm: bool = False):
        super().__init__()
        self.slurm = slurm

    def compose(self) -> ComposeResult:
        from textual.widgets import RadioButton, RadioSet

        with Vertical(id="new-box"):
            yield Label("Config file for the new run (Enter to start, Esc to cancel):")
            yield Input(placeholder="run.toml", id="config-path")
            if self.slurm:
                with RadioSet(id="new-where"):
                    yield RadioButton("run here (local)", value=True, id="new-local")
                    yield RadioButton("submit to Slurm (sbatch)", id="new-slurm")
                yield Input(value="1", placeholder="nodes", id="slurm-nodes", classes="slurm-field")
                yield Input(value="0", placeholder="GPUs per node", id="slurm-gpus", classes="slurm-field")
                yield Input(value="1:00:00", placeholder="time limit (minutes, H:MM:SS or D-HH:MM:SS)",
                            id="slurm-time", classes="slurm-field")
                yield Input(placeholder="partition (blank: the cluster's default)", id="slurm-partition",
                            classes="slurm-field")
                yield Label("", id="new-error", markup=False)

    def on_mount(self) -> None:
        self.query_one("#config-path", Input).focus()
        self._show_slurm_fields()

    def to_slurm(self) -> bool:
        """Whether "submit to Slurm" is chosen."""
        if not self.slurm:
            return False
        from textual.widgets import RadioButton

        return self.query_one("#new-slurm", RadioButton).value

    def _show_slurm_fields(self) -> None:
        shown = self.to_slurm()
        for field in self.query(".slurm-field"):
            field.display = shown

    def on_radio_set_changed(self, event) -> None:
        self._show_slurm_fields()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        config = self.query_one("#config-path", Input).value.strip()
        if not self.to_slurm():
            self.dismiss(config or None)
            return
        if not config:
            self.query_one("#config-path", Input).focus()
            return
        numbers: dict[str, int] = {}
        for field, what, least in (("slurm-nodes", "nodes", 1), ("slurm-gpus", "GPUs per node", 0)):
            raw = self.query_one(f"#{field}", Input).value.strip()
            if not raw.isdigit() or int(raw) < least:
                self.query_one("#new-error", Label).update(f"{what}: expected a whole number of {least} or more")
                self.query_one(f"#{field}", Input).focus()
                return
            numbers[what] = int(raw)
        time_limit = self.query_one("#slurm-time", Input).value.strip()
        if not time_limit:
            self.query_one("#new-error", Label).update("time: expected a limit such as 30, 1:00:00 or 1-00:00:00")
            self.query_one("#slurm-time", Input).focus()
            return
        self.dismiss(SlurmSubmit(config, numbers["nodes"], numbers["GPUs per node"], time_limit,
                                 self.query_one("#slurm-partition", Input).value.strip()))

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


class SpotLaunchScreen(ModalScreen[SpotLaunch | None]):
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
        self.dismiss(SpotLaunch(values["launch-config"], values["launch-type"], values["launch-s3"],
                                values["launch-region"], values["launch-ami"]))

    def action_cancel(self) -> None:
        self.dismiss(None)


class PromoteScreen(ModalScreen[Promotion | None]):
    """The new-run form, prefilled for the best trial: where its config goes and its epochs."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="promote-cancel")]

    def __init__(self, trial: TrialRow, metric: str, path: Path, epochs: int):
        super().__init__()
        self.trial, self.metric, self.path, self.epochs = trial, metric, path, epochs

    def compose(self) -> ComposeResult:
        params = ", ".join(f"{k}={fmt_value(v)}" for k, v in sorted(self.trial.params.items()))
        with Vertical(id="promote-box"):
            yield Label(f"Promote trial {self.trial.number} ({self.metric} {fmt_value(self.trial.value)}): "
                        f"a new full run with {params or 'its parameters'}. Enter starts it, Esc cancels.",
                        markup=False)
            yield Input(value=str(self.path), placeholder="config file to write", id="promote-config")
            yield Input(value=str(self.epochs), placeholder="epochs", id="promote-epochs")
            yield Label("", id="promote-error", markup=False)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        path = self.query_one("#promote-config", Input).value.strip()
        raw = self.query_one("#promote-epochs", Input).value.strip()
        if not path:
            self.query_one("#promote-config", Input).focus()
            return
        if not raw.isdigit() or int(raw) < 1:
            self.query_one("#promote-error", Label).update("epochs: expected a whole number of 1 or more")
            self.query_one("#promote-epochs", Input).focus()
            return
        self.dismiss(Promotion(Path(path), int(raw)))

    def action_cancel(self) -> None:
        self.dismiss(None)
