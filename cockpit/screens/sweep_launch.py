"""The trials screen's launch form (`n`): a sweep config, its trials, how many at once, the study.

Every field has a label; the trials and the study name come from the config being swept (its
`[sweep] trials`, its file name), read with tomllib as the path is typed (the cockpit never
imports the engine). The engine validates the config again when the worker starts.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

#: (input id, label) of each field, in order.
FIELDS = [
    ("sweep-config", "Sweep config file"),
    ("sweep-trials", "Trials"),
    ("sweep-parallel", "Parallel workers"),
    ("sweep-study", "Study name"),
]
LABELS = dict(FIELDS)


@dataclass(frozen=True)
class SweepLaunch:
    """LaunchTrialsScreen's answer: `cockpit-engine sweep CONFIG --trials N --parallel K --study S`."""

    config: str
    trials: int
    parallel: int
    study: str = ""


@dataclass(frozen=True)
class SweepFile:
    """What the form shows of a sweep config: its [sweep] section as written (None: not set)."""

    trials: int | None
    metric: str
    pruner: str
    space: list[str]


def read_sweep(path: str) -> SweepFile:
    """The config's [sweep] section; ValueError says why it is no sweep config."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"no file at {path}")
    try:
        raw = tomllib.loads(p.read_text(errors="replace"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path} is not a TOML config: {exc}") from None
    sweep = raw.get("sweep")
    if not isinstance(sweep, dict) or sweep.get("enabled") is not True:
        raise ValueError(f"{path} has no [sweep] with enabled = true")
    space = sweep.get("space")
    if not isinstance(space, dict) or not space:
        raise ValueError(f"{path} has no [sweep.space] to search")
    trials = sweep.get("trials")
    return SweepFile(trials if isinstance(trials, int) and not isinstance(trials, bool) else None,
                     str(sweep.get("metric", "val_accuracy")), str(sweep.get("pruner", "median")),
                     [str(k) for k in space])


class LaunchTrialsScreen(ModalScreen[SweepLaunch | None]):
    """Ask for a sweep config, the number of trials, how many run at once and the study's name."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="sweep-launch-cancel")]

    def __init__(self, storage: str = "", config: str = ""):
        super().__init__()
        self.storage, self.config = storage, config
        #: The values the config filled in (a field still showing one follows the next config).
        self.filled = {"sweep-trials": "", "sweep-study": ""}

    def compose(self) -> ComposeResult:
        cores = os.cpu_count() or 1
        hints = {"sweep-config": "path of a TOML config with [sweep] enabled = true, e.g. sweep.toml",
                 "sweep-trials": "trials in the study (from the config's sweep.trials)",
                 "sweep-parallel": f"trials at once (this machine has {cores} CPU core{'s' * (cores != 1)})",
                 "sweep-study": "the Optuna study (default: the config file's name)"}
        with Vertical(id="sweep-box"):
            yield Static("Launch trials of a sweep config: cockpit-engine sweep CONFIG --detach. Enter launches, "
                         "Esc cancels.", markup=False)
            for field, label in FIELDS:
                with Horizontal(classes="form-row"):
                    yield Label(label, classes="form-label", markup=False)
                    yield Input(value="1" if field == "sweep-parallel" else "", placeholder=hints[field], id=field,
                                tooltip=hints[field])
            yield Static("", id="sweep-about", markup=False)  # Static: a long line wraps
            yield Static("", id="sweep-error", markup=False)

    def on_mount(self) -> None:
        if self.config:
            self.query_one("#sweep-config", Input).value = self.config
        self.query_one("#sweep-config", Input).focus()
        self.describe()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "sweep-config":
            self.describe()

    def _fill(self, field: str, value: str) -> None:
        box = self.query_one(f"#{field}", Input)
        if box.value in ("", self.filled[field]):  # the person's own value stays
            box.value = value
        self.filled[field] = value

    def describe(self) -> None:
        """Fill the trials and the study from the config typed so far; say what it sweeps."""
        path = self.query_one("#sweep-config", Input).value.strip()
        about = self.query_one("#sweep-about", Static)
        where = f" Study stored in {self.storage}." if self.storage else ""
        if not path:
            about.update("The trials and the study name come from the config." + where)
            return
        try:
            sweep = read_sweep(path)
        except ValueError as exc:
            about.update(str(exc) + where)
            return
        self._fill("sweep-trials", "" if sweep.trials is None else str(sweep.trials))
        self._fill("sweep-study", Path(path).stem)
        trials = (f"sweep.trials = {sweep.trials}" if sweep.trials is not None
                  else "no sweep.trials: blank Trials takes the engine's default")
        about.update(f"Sweeps {', '.join(sweep.space)}; {sweep.metric}, pruner {sweep.pruner}; {trials}.{where}")

    def refuse(self, field: str, why: str) -> None:
        self.query_one("#sweep-error", Static).update(f"{LABELS[field]}: {why}")
        self.query_one(f"#{field}", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        config = self.query_one("#sweep-config", Input).value.strip()
        if not config:
            self.refuse("sweep-config", "expected the path of a sweep config")
            return
        try:
            sweep = read_sweep(config)
        except ValueError as exc:
            self.refuse("sweep-config", str(exc))
            return
        numbers: dict[str, int] = {}
        for field in ("sweep-trials", "sweep-parallel"):
            raw = self.query_one(f"#{field}", Input).value.strip()
            if field == "sweep-trials" and not raw and sweep.trials is None:
                numbers[field] = 0  # the engine's default
                continue
            if not raw.isdigit() or int(raw) < 1:
                self.refuse(field, f"{raw!r} is not a whole number of 1 or more")
                return
            numbers[field] = int(raw)
        study = self.query_one("#sweep-study", Input).value.strip()
        if study and (study.startswith(("-", ".")) or any(c in study for c in "/\\\0") or not study.isprintable()):
            self.refuse("sweep-study", f"{study!r}: expected a name without '/', not starting with '-' or '.'")
            return
        self.dismiss(SweepLaunch(config, numbers["sweep-trials"], numbers["sweep-parallel"],
                                 "" if study == Path(config).stem else study))

    def action_cancel(self) -> None:
        self.dismiss(None)
