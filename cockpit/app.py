"""The cockpit: a Textual app that launches, watches and drives training runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.dom import DOMNode
from textual.screen import Screen

from cockpit import settings as settings_mod
from cockpit.gpu import GpuSampler
from cockpit.link import RunLink
from cockpit.screens.modals import HelpScreen
from cockpit.messages import RunChosen
from cockpit.screens.run_screen import RunScreen
from cockpit.screens.runs_screen import RunsScreen
from cockpit.screens.trials_screen import TrialsScreen
from cockpit.tensorboard import TensorBoardServer
from cockpit.themes import load_themes


class CockpitApp(App):
    """Themes, settings, TensorBoard and help; the screens do the rest.

    Each screen is a mode: a module with its own layout and BINDINGS, installed in __init__
    and named in MODES (a sweep's trials screen joins as "trials", shown by `switch_mode`).
    Help and the command palette list the keys of the current mode's screen, then the app's.
    """

    CSS_PATH = "app.tcss"
    TITLE = "Training Cockpit"
    MODES = {"run": "run", "runs": "runs", "trials": "trials"}  # mode -> installed screen
    DEFAULT_MODE = "run"  # "runs" when started without a run (see __init__)
    BINDINGS = [
        Binding("t", "trials", "Trials", id="trials", show=False,
                tooltip="The Optuna sweeps: a study's trials, best starred; launch, prune, promote"),
        Binding("b", "tensorboard", "TensorBoard", id="tensorboard",
                tooltip="Start TensorBoard on the runs directory and show its address"),
        Binding("ctrl+t", "cycle_theme", "Theme", id="theme", tooltip="Switch to the next theme"),
        Binding("question_mark", "help", "Help", id="help", tooltip="Every key, explained"),
        Binding("q", "quit", "Quit", id="quit", tooltip="Quit the cockpit; the engine keeps training"),
    ]

    def __init__(self, runs_root: Path, run: Path | None = None,
                 launch: tuple[str, list[str]] | None = None, user: settings_mod.Settings | None = None,
                 poll_gpu: bool = True, gpu: GpuSampler | None = None, clock=time.time,
                 storage: str | None = None):
        demo_sweep = launch[1] if launch and launch[0] == "demo-sweep" else None
        if demo_sweep is not None:
            launch, self.DEFAULT_MODE = None, "trials"  # the demo sweep's trials, as they come
        elif run is None and launch is None:
            self.DEFAULT_MODE = "runs"  # read by App.__init__: no run yet, so start on the list
        super().__init__()
        self.runs_root, self.gpu = runs_root, gpu
        self.user = user or settings_mod.load()
        self.tb = TensorBoardServer(runs_root)
        self.cockpit_themes = [t.name for t in load_themes()]
        #: Set when the app shuts down: the screens' thread workers poll it.
        self.closing = threading.Event()
        self.install_screen(RunScreen(runs_root, run=run, launch=launch, gpu=gpu, poll_gpu=poll_gpu,
                                      clock=clock, closing=self.closing), "run")
        self.install_screen(RunsScreen(runs_root, clock), "runs")
        self.install_screen(TrialsScreen(runs_root, clock, storage=storage, closing=self.closing,
                                         demo_sweep=demo_sweep), "trials")

    @property
    def run_screen(self) -> RunScreen:
        """The live view of one run."""
        return self.get_screen("run")

    def on_run_chosen(self, message: RunChosen) -> None:
        """Follow the run picked on the runs screen, in the run screen."""
        self.switch_mode("run")
        self.run_screen.attach(message.run)

    @property
    def link(self) -> RunLink | None:
        """The run the run screen follows, if any."""
        return self.run_screen.link

    def on_mount(self) -> None:
        for theme in load_themes():
            self.register_theme(theme)
        wanted = self.user.theme if self.user.theme in self.available_themes else "cockpit-dark"
        self.user.theme = wanted  # starting up is not a choice: only a change is written to settings
        self.theme = wanted
        if self.user.keys:
            self.set_keymap(self.user.keys)

    # ---- keys -------------------------------------------------------------------------

    def action_trials(self) -> None:
        """The trials of the sweeps in the runs directory's storage (a screen of its own)."""
        self.switch_mode("trials")

    def action_tensorboard(self) -> None:
        """Start TensorBoard on the runs directory (once) and show its address."""
        try:
            address = self.tb.start()
        except OSError as exc:
            self.notify(f"TensorBoard did not start: {exc}", severity="error", markup=False)
            return
        self.notify(f"TensorBoard at {address} ; {self.tb.ssh_hint()}", timeout=20, markup=False)

    def action_cycle_theme(self) -> None:
        """Switch to the next of the cockpit's themes."""
        names = self.cockpit_themes
        nxt = names[(names.index(self.theme) + 1) % len(names)] if self.theme in names else names[0]
        self.theme = nxt

    def watch_theme(self, theme: str) -> None:
        if theme in self.cockpit_themes and theme != self.user.theme:
            self.user.theme = theme
            settings_mod.save_theme(theme)

    def action_help(self) -> None:
        """Every key of the current screen and the app, as the user has mapped them."""
        rows = [(self.get_key_display(b), b.description, b.tooltip or "") for _, b in self._bindings_shown()]
        self.push_screen(HelpScreen(rows))

    def _bindings_shown(self) -> list[tuple[DOMNode, Binding]]:
        """(where the action runs, binding) for the main screen's keys, then the app's, remapped."""
        keymap = self.user.keys
        return [(node, b.with_key(keymap[b.id]) if b.id in keymap else b)
                for node in (self.screen_stack[0], self) for b in node.BINDINGS]

    async def action_quit(self) -> None:
        """Leave; the engine keeps training (it is its own process session)."""
        self.closing.set()
        self.tb.stop()
        self.exit()

    def on_unmount(self) -> None:
        self.closing.set()
        self.tb.stop()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for node, b in self._bindings_shown():
            if b.id not in ("quit", "help"):
                yield SystemCommand(b.description, b.tooltip or b.description,
                                    lambda a=b.action, n=node: n.run_action(a))
        for name in self.cockpit_themes:
            yield SystemCommand(f"Theme: {name}", f"Switch to the {name} theme",
                                lambda n=name: setattr(self, "theme", n))
