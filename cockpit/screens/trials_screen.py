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
from textual.widgets import DataTable, Footer, Static

from cockpit.messages import RunChosen
from cockpit.sanitize import clean
from cockpit.screens.sized import SizedScreen
from cockpit.screens.trials_control import TrialsControl
from cockpit.sweeps import StudySummary, StudyView, SweepReader, TrialRow, fmt_value, mask_url, storage_url
from cockpit.widgets.pareto_pane import ParetoPane, axis_pairs
from cockpit.widgets.trials_table import BestChartPane, ImportancePane, TrialsTable, sort_keys

#: Seconds between two reads of the storage while the screen is shown.
REFRESH_S = 2.0


class TrialsScreen(TrialsControl, SizedScreen):
    """The studies in the sweep storage, and the chosen study's trials, best one starred; the keys
    that act on trials are TrialsControl's."""

    BINDINGS = [
        Binding("escape", "back", "Back", id="trials-back", tooltip="Back to the run being followed"),
        Binding("l", "runs", "Runs", id="trials-runs", tooltip="Show the runs list"),
        Binding("n", "launch", "Launch trials", id="trials-launch",
                tooltip="Start a sweep worker: N trials of a config (cockpit-engine sweep --detach)"),
        Binding("o", "sort", "Sort", id="trials-sort", tooltip="Order the trials by the next column"),
        Binding("a", "axes", "Axes", id="trials-axes", show=False,
                tooltip="A study of several objectives: put the next pair of objectives on the Pareto scatter's axes"),
        Binding("x", "prune", "Prune", id="trials-prune",
                tooltip="Prune the highlighted running trial (its engine checkpoints and stops; the worker tells Optuna)"),
        Binding("s", "stop", "Stop trial", id="trials-stop",
                tooltip="Checkpoint, then stop the highlighted running trial (asks first)"),
        Binding("p", "promote", "Promote best", id="trials-promote",
                tooltip="A new full run with the best trial's parameters and more epochs (several objectives: "
                "the highlighted trial's, on the Pareto front or not)"),
    ]

    def __init__(self, runs_root: Path, clock: Callable[[], float] = time.time, storage: str | None = None,
                 closing: threading.Event | None = None, demo_sweep: list[str] | None = None):
        super().__init__()
        self.runs_root, self.clock = runs_root, clock
        #: `cockpit demo --sweep`: its --set overrides (None: no demo sweep to start).
        self.demo_sweep = demo_sweep
        self.url = storage_url(runs_root, storage)
        self.reader = SweepReader(self.url, clock=clock)
        self.closing = closing or threading.Event()
        #: The study shown (None: not chosen yet), what was last read, and the sort order.
        self.study: str | None = None
        self.studies: list[StudySummary] = []
        self.view: StudyView | None = None
        self.sort = "number"
        #: The objectives on the Pareto scatter's axes (a study of several objectives).
        self.axes: tuple[int, int] = (0, 1)
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
                yield ParetoPane()
                yield ImportancePane()
        yield Footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#studies", DataTable).add_columns("study", "trials")
        self.query_one("#studies", DataTable).border_title = "studies"
        self.query_one(TrialsTable).border_title = "trials"
        self.show_title()
        self.set_interval(REFRESH_S, self.reread)
        if self.demo_sweep is not None:
            self.launch_demo(self.demo_sweep)

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
        self.show_front(view)
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
            if v.multi:
                front = ", ".join(str(r.number) for r in v.front)
                best = f"Pareto front: trials {front}" if front else "no complete trial yet"
                text = (f"{v.name}: {len(v.trials)} trials ({states}) · "
                        + ", ".join(f"{d} {m}" for m, d in v.objectives) + f" · {best} · sort: {self.sort}")
                self.query_one("#trials-title", Static).update(Text(clean(text)))
                return
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

    def show_front(self, view: StudyView | None) -> None:
        """A study of several objectives: the Pareto scatter instead of the best-so-far chart and
        the importances."""
        multi = view is not None and view.multi
        self.query_one(BestChartPane).display = not multi
        self.query_one(ImportancePane).display = not multi
        pane = self.query_one(ParetoPane)
        pane.display = multi
        if multi and not (max(self.axes) < len(view.objectives)):
            self.axes = (0, 1)
        pane.show_study(view, self.axes)

    def action_axes(self) -> None:
        """Put the next pair of objectives on the scatter's axes."""
        if self.view is None or not self.view.multi:
            self.notify("the study has one objective: no Pareto front to draw", severity="warning")
            return
        pairs = axis_pairs(len(self.view.objectives))
        self.axes = pairs[(pairs.index(self.axes) + 1) % len(pairs)] if self.axes in pairs else pairs[0]
        self.show_front(self.view)
        x, y = (self.view.objectives[i][0] for i in self.axes)
        self.notify(f"Pareto scatter: {y} against {x}", timeout=3)

    def action_sort(self) -> None:
        keys = sort_keys(self.view) if self.view else list(("number",))
        self.sort = keys[(keys.index(self.sort) + 1) % len(keys)] if self.sort in keys else keys[0]
        self.query_one(TrialsTable).show(self.view, self.sort)
        self.show_title()
