"""The trials of an Optuna sweep (App mode "trials"): pick a study, watch its trials, steer them.

The storage is read in a thread worker every REFRESH_S seconds while the screen is shown
(optuna is imported there, lazily); the same timer fails stale trials (heartbeats) as the
workers do. Keys act on the highlighted trial's engine through its control socket (prune,
stop), or start engines through `cockpit-engine` (a sweep worker, the promoted best trial).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Label, Static

from cockpit import launcher
from cockpit.link import RunLink
from cockpit.messages import RunChosen
from cockpit.sanitize import clean
from cockpit.screens.modals import ConfirmStop
from cockpit.screens.sized import SizedScreen
from cockpit.sweeps import (StudySummary, StudyView, SweepReader, TrialRow, base_config, base_epochs, fmt_value,
                            mask_url, promoted_config, promoted_path, storage_url, write_promoted)
from cockpit.widgets.trials_table import BestChartPane, ImportancePane, TrialsTable, sort_keys

#: Seconds between two reads of the storage while the screen is shown.
REFRESH_S = 2.0


class LaunchTrialsScreen(ModalScreen[dict | None]):
    """Ask for a sweep config, the number of trials and how many run at once."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="sweep-launch-cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="sweep-box"):
            yield Label("Launch trials of a sweep config (cockpit-engine sweep ... --detach). "
                        "Enter in the last field launches, Esc cancels.", markup=False)
            yield Input(placeholder="sweep config file, e.g. sweep.toml", id="sweep-config")
            yield Input(value="8", placeholder="number of trials", id="sweep-trials")
            yield Input(value="1", placeholder="trials at once (parallel)", id="sweep-parallel")
            yield Label("", id="sweep-error", markup=False)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        config = self.query_one("#sweep-config", Input).value.strip()
        if not config:
            self.query_one("#sweep-config", Input).focus()
            return
        numbers = {}
        for field, what in (("sweep-trials", "trials"), ("sweep-parallel", "parallel")):
            raw = self.query_one(f"#{field}", Input).value.strip()
            if not raw.isdigit() or int(raw) < 1:
                self.query_one("#sweep-error", Label).update(f"{what}: expected a whole number of 1 or more")
                self.query_one(f"#{field}", Input).focus()
                return
            numbers[what] = int(raw)
        self.dismiss({"config": config, **numbers})

    def action_cancel(self) -> None:
        self.dismiss(None)


class PromoteScreen(ModalScreen[dict | None]):
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
        self.dismiss({"config": path, "epochs": int(raw)})

    def action_cancel(self) -> None:
        self.dismiss(None)


class TrialsScreen(SizedScreen):
    """The studies in the sweep storage, and the chosen study's trials, best one starred."""

    BINDINGS = [
        Binding("escape", "back", "Back", id="trials-back", tooltip="Back to the run being followed"),
        Binding("l", "runs", "Runs", id="trials-runs", tooltip="Show the runs list"),
        Binding("n", "launch", "Launch trials", id="trials-launch",
                tooltip="Start a sweep worker: N trials of a config (cockpit-engine sweep --detach)"),
        Binding("o", "sort", "Sort", id="trials-sort", tooltip="Order the trials by the next column"),
        Binding("x", "prune", "Prune", id="trials-prune",
                tooltip="Prune the highlighted running trial (its engine checkpoints and stops; the worker tells Optuna)"),
        Binding("s", "stop", "Stop trial", id="trials-stop",
                tooltip="Checkpoint, then stop the highlighted running trial (asks first)"),
        Binding("p", "promote", "Promote best", id="trials-promote",
                tooltip="A new full run with the best trial's parameters and more epochs"),
    ]

    def __init__(self, runs_root: Path, clock: Callable[[], float] = time.time, storage: str | None = None,
                 closing: threading.Event | None = None):
        super().__init__()
        self.runs_root, self.clock = runs_root, clock
        self.url = storage_url(runs_root, storage)
        self.reader = SweepReader(self.url, clock=clock)
        self.closing = closing or threading.Event()
        #: The study shown (None: not chosen yet), what was last read, and the sort order.
        self.study: str | None = None
        self.studies: list[StudySummary] = []
        self.view: StudyView | None = None
        self.sort = "number"
        self.error = ""

    def compose(self) -> ComposeResult:
        yield self.too_small()
        with Vertical(id="main"):
            yield Static("", id="trials-title", markup=False)
            with Horizontal(id="trials-body"):
                yield DataTable(cursor_type="row", id="studies")
                yield TrialsTable(id="trials")
            with Horizontal(id="trials-bottom"):
                yield BestChartPane()
                yield ImportancePane()
        yield Footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#studies", DataTable).add_columns("study", "trials")
        self.query_one("#studies", DataTable).border_title = "studies"
        self.query_one(TrialsTable).border_title = "trials"
        self.show_title()
        self.set_interval(REFRESH_S, self.reread)

    def on_screen_resume(self) -> None:
        self.reread(force=True)

    # ---- reading the storage (worker thread) ------------------------------------------

    def reread(self, force: bool = False) -> None:
        if not self.app.is_running or self.closing.is_set() or not (force or self.is_current):
            return
        self.run_worker(self._read, thread=True, exclusive=True, group="sweep-read", name="read sweeps")

    def _read(self) -> None:
        study = self.study
        try:
            studies = self.reader.studies()
            if study is None and len(studies) == 1:
                study = studies[0].name  # one study: no need to pick
            view = self.reader.read(study) if study and any(s.name == study for s in studies) else None
            error = ""
        except Exception as exc:  # noqa: BLE001 - a storage that is not there, locked, or refuses
            studies, view, error = self.studies, self.view, mask_url(f"cannot read {self.url}: {exc}")
        if not self.closing.is_set():
            self.app.call_from_thread(self._show, studies, study, view, error)

    def _show(self, studies: list[StudySummary], study: str | None, view: StudyView | None, error: str) -> None:
        if not self.is_attached:
            return
        self.studies, self.error = studies, error
        if self.study is None and study is not None:
            self.study = study
        if view is not None and view.name != self.study:
            view = None  # the person picked another study meanwhile
        self.view = view
        table = self.query_one("#studies", DataTable)
        selected = self.study
        table.clear()
        for s in studies:
            table.add_row(Text(clean(s.name)[:40]), Text(str(s.trials)), key=s.name)
        if selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected), animate=False)
        self.query_one(TrialsTable).show(view, self.sort)
        self.query_one(BestChartPane).show_study(view)
        self.query_one(ImportancePane).show_study(view)
        self.show_title()

    def show_title(self) -> None:
        if self.error:
            text = self.error
        elif not self.studies:
            text = f"No studies in {mask_url(self.url)} yet: press n to launch trials of a sweep config."
        elif self.view is None:
            text = "Pick a study (Enter)."
        else:
            v = self.view
            counts: dict[str, int] = {}
            for r in v.trials:
                counts[r.state] = counts.get(r.state, 0) + 1
            states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            best = f"best: trial {v.best.number} ({fmt_value(v.best.value)})" if v.best else "no complete trial yet"
            text = f"{v.name}: {len(v.trials)} trials ({states}) · {v.direction} {v.metric} · {best} · sort: {self.sort}"
        self.query_one("#trials-title", Static).update(Text(clean(text)))

    # ---- choosing -----------------------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.data_table.id == "studies":
            self.study = str(event.row_key.value)
            self.view = None
            self.query_one(TrialsTable).show(None, self.sort)
            self.query_one(TrialsTable).focus()
            self.reread(force=True)
            return
        trial = self.trial(int(str(event.row_key.value)))
        if trial is None:
            return
        if not trial.run_dir:
            self.notify(f"trial {trial.number} has no run directory yet", severity="warning")
            return
        if not Path(trial.run_dir).is_dir():  # its worker ran on another machine
            self.notify(f"trial {trial.number}'s run {trial.run_dir} is not on this machine",
                        severity="warning", markup=False)
            return
        self.post_message(RunChosen(Path(trial.run_dir)))

    def trial(self, number: int | None) -> TrialRow | None:
        if self.view is None or number is None:
            return None
        return next((r for r in self.view.trials if r.number == number), None)

    def highlighted(self) -> TrialRow | None:
        return self.trial(self.query_one(TrialsTable).highlighted_number())

    # ---- keys ---------------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.switch_mode("run")

    def action_runs(self) -> None:
        self.app.switch_mode("runs")

    def action_sort(self) -> None:
        keys = sort_keys(self.view) if self.view else list(("number",))
        self.sort = keys[(keys.index(self.sort) + 1) % len(keys)] if self.sort in keys else keys[0]
        self.query_one(TrialsTable).show(self.view, self.sort)
        self.show_title()

    def _running_trial(self, what: str) -> TrialRow | None:
        trial = self.highlighted()
        if trial is None:
            self.notify("no trial highlighted", severity="warning")
            return None
        if trial.state != "running" or not trial.run_dir:
            self.notify(f"trial {trial.number} is {trial.state}: only a running trial can be {what}",
                        severity="warning", markup=False)
            return None
        return trial

    def _send(self, trial: TrialRow, cmd: str) -> None:
        def work() -> None:
            reply = RunLink(Path(trial.run_dir)).send(cmd)
            self.app.call_from_thread(self._answered, trial, cmd, reply)

        self.run_worker(work, thread=True, group="trial-commands", name=f"{cmd} trial {trial.number}")

    def _answered(self, trial: TrialRow, cmd: str, reply: dict) -> None:
        if not reply.get("ok"):
            self.notify(f"{cmd} trial {trial.number}: {clean(str(reply.get('error', 'failed')))}",
                        severity="error", markup=False)
            return
        done = "pruned" if cmd == "prune" else reply.get("state", "stopped")
        self.notify(f"trial {trial.number} {done} at step {reply.get('step')}; checkpoint {reply.get('path')}",
                    markup=False)
        self.reread(force=True)

    def action_prune(self) -> None:
        """Prune the highlighted running trial through its engine's control socket."""
        trial = self._running_trial("pruned")
        if trial is not None:
            self.notify(f"pruning trial {trial.number}...", timeout=3)
            self._send(trial, "prune")

    def action_stop(self) -> None:
        """Stop the highlighted running trial (checkpoint first), once the user says yes."""
        trial = self._running_trial("stopped")
        if trial is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._send(trial, "stop")

        self.app.push_screen(ConfirmStop(trial.run_id or Path(trial.run_dir).name), answered)

    def action_launch(self) -> None:
        """Ask for a sweep config, N trials and K at once; start a detached worker in a thread."""
        def chosen(answer: dict | None) -> None:
            if answer is None:
                return

            def work() -> None:
                result = launcher.start_sweep(answer["config"], self.runs_root, answer["trials"], answer["parallel"],
                                              storage=self.reader.url if self.url != storage_url(self.runs_root)
                                              else None)
                self.app.call_from_thread(self._launched, answer, result)

            self.notify(f"starting a sweep worker for {answer['config']}...", markup=False, timeout=5)
            self.run_worker(work, thread=True, group="sweep-launch", name="launch sweep")

        self.app.push_screen(LaunchTrialsScreen(), chosen)

    def _launched(self, answer: dict, result: launcher.Launch) -> None:
        if result.code != 0:
            self.notify(f"the sweep worker did not start (exit {result.code}):\n{clean(result.message)}",
                        severity="error", markup=False, timeout=20)
            return
        self.notify(clean(result.message), markup=False, timeout=10)
        words = result.message.split("started sweep worker ", 1)
        if len(words) == 2 and words[1].split():
            self.study = words[1].split()[0]  # show the study the worker runs
        self.reread(force=True)

    def action_promote(self) -> None:
        """The new-run form prefilled for the best trial; a config written next to the study."""
        view = self.view
        if view is None or view.best is None:
            self.notify("no complete trial to promote yet", severity="warning")
            return
        best = view.best
        try:
            base = base_config(best)
        except ValueError as exc:
            self.notify(f"cannot promote trial {best.number}: {clean(str(exc))}", severity="error", markup=False)
            return
        default = promoted_path(self.runs_root, view.name)

        def chosen(answer: dict | None) -> None:
            if answer is not None:
                self.promote(view.name, best, base, Path(answer["config"]), answer["epochs"])

        self.app.push_screen(PromoteScreen(best, view.metric, default, 2 * base_epochs(base)), chosen)

    def promote(self, study: str, best: TrialRow, base: dict, path: Path, epochs: int) -> None:
        cfg = promoted_config(base, best.params, epochs)

        def work() -> None:
            try:
                written = write_promoted(self.runs_root, study, cfg, path)
            except OSError as exc:
                self.app.call_from_thread(self.notify, f"cannot write {path}: {exc}", severity="error", markup=False)
                return
            result = launcher.start_run(written, self.runs_root)
            self.app.call_from_thread(self._promoted, written, result)

        self.notify(f"promoting trial {best.number}: {epochs} epochs, config {path}", markup=False, timeout=5)
        self.run_worker(work, thread=True, group="promote", name="promote")

    def _promoted(self, config: Path, result: launcher.Launch) -> None:
        if result.code == 0 and result.run is not None:
            self.notify(f"promoted run {result.run.name} started from {config}", markup=False)
            self.post_message(RunChosen(result.run))
        else:
            self.notify(f"the promoted run did not start (exit {result.code}):\n{clean(result.message)}",
                        severity="error", markup=False, timeout=20)
