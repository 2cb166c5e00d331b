"""The cockpit: a Textual app that launches, watches and drives training runs."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Iterable

from rich.text import Text
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from cockpit import launcher, settings as settings_mod
from cockpit.diagnosis import LowUtilWatch, low_util_advice, split
from cockpit.gpu import GpuSampler
from cockpit.link import RunLink
from cockpit.messages import CommandAnswered, EngineVanished, HistoryUpdated
from cockpit.runs import list_runs
from cockpit.sanitize import clean
from cockpit.screens import ConfirmStop, HelpScreen, NewRunScreen
from cockpit.tensorboard import TensorBoardServer
from cockpit.themes import load_themes
from cockpit.widgets.banner import RunBanner
from cockpit.widgets.checkpoints_pane import CheckpointsPane, fmt_age
from cockpit.widgets.cost_pane import CostPane
from cockpit.widgets.gpu_pane import GpuPane
from cockpit.widgets.log_pane import LogPane
from cockpit.widgets.loss_pane import LossPane
from cockpit.widgets.lr_pane import LrPane
from cockpit.widgets.steptime_pane import StepTimePane
from cockpit.widgets.throughput_pane import ThroughputPane

MIN_WIDTH, MIN_HEIGHT = 60, 20
#: Panes redraw at most this often, so tmux never flickers and a fast run cannot flood the terminal.
REFRESH_HZ = 2
#: Charts are the costly panes (plotext redraws its whole canvas): at most once a second.
CHART_INTERVAL_S = 1.0
RESUMABLE = ("stopped", "failed", "preempted")


class CockpitApp(App):
    """Runs list, live panes, and one-key control of the selected run."""

    CSS_PATH = "app.tcss"
    TITLE = "Training Cockpit"
    BINDINGS = [
        Binding("c", "checkpoint", "Checkpoint", id="checkpoint", tooltip="Save a checkpoint now"),
        Binding("p", "pause", "Pause/continue", id="pause", tooltip="Pause training, or continue it"),
        Binding("s", "stop", "Stop", id="stop", tooltip="Checkpoint, then stop the run (asks first)"),
        Binding("r", "resume", "Resume", id="resume",
                tooltip="Resume a stopped, failed or preempted run from its latest checkpoint"),
        Binding("n", "new_run", "New run", id="new-run", tooltip="Start a new run from a config file"),
        Binding("l", "runs", "Runs", id="runs", tooltip="Show or hide the runs list"),
        Binding("b", "tensorboard", "TensorBoard", id="tensorboard",
                tooltip="Start TensorBoard on the runs directory and show its address"),
        Binding("ctrl+t", "cycle_theme", "Theme", id="theme", tooltip="Switch to the next theme"),
        Binding("question_mark", "help", "Help", id="help", tooltip="Every key, explained"),
        Binding("q", "quit", "Quit", id="quit", tooltip="Quit the cockpit; the engine keeps training"),
    ]

    def __init__(self, runs_root: Path, run: Path | None = None,
                 launch: tuple[str, list[str]] | None = None, user: settings_mod.Settings | None = None,
                 poll_gpu: bool = True, gpu: GpuSampler | None = None, clock=time.time):
        super().__init__()
        self.gpu, self.clock = gpu, clock
        self.runs_root, self.initial_run, self.launch = runs_root, run, launch
        self._ranks_for: tuple[object, set[int]] = (None, set())  # (run, engine pid) -> rank pids
        self.user = user or settings_mod.load()
        self.poll_gpu = poll_gpu
        self.link: RunLink | None = None
        self.dirty = False
        self.charts_drawn = -10.0
        self.checkpoint_in_flight = False
        self.last_checkpoint_press = -10.0
        self.tb = TensorBoardServer(runs_root)
        self.cockpit_themes = [t.name for t in load_themes()]
        self.low_util = LowUtilWatch()
        #: Set when the app shuts down: thread workers poll it (a cancelled asyncio task
        #: cannot stop a thread, and a thread left looping would keep the process alive).
        self.closing = threading.Event()

    # ---- layout ---------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(f"terminal too small: the cockpit needs at least {MIN_WIDTH}x{MIN_HEIGHT}",
                     id="too-small")
        with Vertical(id="main"):
            yield RunBanner()
            yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
            with Horizontal(id="body"):
                with Vertical(id="charts"):
                    yield LossPane()
                    yield LrPane()
                with VerticalScroll(id="side"):
                    yield GpuPane()
                    yield ThroughputPane()
                    yield StepTimePane()
                    yield CostPane()
            with Horizontal(id="bottom"):
                yield LogPane()
                yield CheckpointsPane()
        yield Footer()

    def on_mount(self) -> None:
        for theme in load_themes():
            self.register_theme(theme)
        wanted = self.user.theme if self.user.theme in self.available_themes else "cockpit-dark"
        self.user.theme = wanted  # starting up is not a choice: only a change is written to settings
        self.theme = wanted
        if self.user.keys:
            self.set_keymap(self.user.keys)
        for pane, title in ((LossPane, "loss"), (LrPane, "learning rate"), (GpuPane, "GPU"),
                            (ThroughputPane, "throughput"), (StepTimePane, "step time"),
                            (CostPane, "spot & cost"), (CheckpointsPane, "checkpoints"),
                            (LogPane, "engine.log")):
            self.query_one(pane).border_title = title
        table = self.query_one("#runs", DataTable)
        table.add_columns("run", "state", "step", "loss", "acc", "age", "host")
        self.set_interval(1 / REFRESH_HZ, self.refresh_panes)
        self.set_interval(2.0, self.refresh_runs)
        self.refresh_runs(force=True)
        self._check_size(self.size.width, self.size.height)
        if self.poll_gpu:
            self.run_worker(self._poll_gpu, thread=True, group="gpu", name="gpu")
        if self.launch:
            self.run_worker(self._launch, thread=True, group="launch", name="launch")
        elif self.initial_run:
            self.attach(self.initial_run)
        else:
            self.query_one("#runs").add_class("shown")

    def on_resize(self, event) -> None:
        self._check_size(event.size.width, event.size.height)

    def _check_size(self, width: int, height: int) -> None:
        self.screen.set_class(width < MIN_WIDTH or height < MIN_HEIGHT, "too-small")

    # ---- following a run --------------------------------------------------------------

    def attach(self, run: Path) -> None:
        """Follow a run: replay its events.jsonl, then keep up with it."""
        self.link = RunLink(run)
        self.checkpoint_in_flight = False
        self.low_util = LowUtilWatch()
        self.sub_title = run.name
        self.run_worker(self._follow, thread=True, exclusive=True, group="follow", name="follow")

    def _follow(self) -> None:
        link, worker = self.link, get_current_worker()
        if link is None:
            return
        link.follow(
            on_update=lambda kinds: self.post_message(HistoryUpdated(link.name, frozenset(kinds))),
            on_gone=lambda: self.post_message(EngineVanished(link.name, None)),
            stop=lambda: worker.is_cancelled or self.link is not link or self.closing.is_set())

    def on_history_updated(self, message: HistoryUpdated) -> None:
        self.dirty = True
        if "state" in message.kinds or "error" in message.kinds:
            self.refresh_banner()

    def on_engine_vanished(self, message: EngineVanished) -> None:
        self.refresh_banner()
        self.notify("the engine exited unexpectedly; press r to resume from its latest checkpoint",
                    severity="error", markup=False, timeout=10)

    def refresh_banner(self) -> None:
        if self.link and self.is_running:
            with self.link.lock:
                self.query_one(RunBanner).show(self.link.name, self.link.history, self.link.vanished)

    def refresh_panes(self) -> None:
        """Push the history down into the panes (at most REFRESH_HZ times a second)."""
        link = self.link
        if link is None or not self.dirty or not self.is_running:
            return  # not running: shutting down, the panes may be gone while a timer still fires
        self.dirty = False
        with link.lock:
            h = link.history
            self.query_one(RunBanner).show(link.name, h, link.vanished)
            now = time.monotonic()
            if now - self.charts_drawn >= CHART_INTERVAL_S:
                self.charts_drawn = now
                self.query_one(LossPane).show(h)
                self.query_one(LrPane).show(h)
            else:
                self.dirty = True  # come back for the charts
            self.query_one(ThroughputPane).show(h)
            self.query_one(StepTimePane).show(h)
            self.query_one(CostPane).show(h)
            self.query_one(CheckpointsPane).show(h, now=self.clock(), run=link.run)
        self.query_one(LogPane).show(link.run / "engine.log")

    def refresh_runs(self, force: bool = False) -> None:
        """Re-read the runs directory into the runs list (only while it is shown)."""
        if not self.is_running:
            return
        table = self.query_one("#runs", DataTable)
        if not (force or table.has_class("shown")):
            if self.link is not None:
                self.dirty = True  # checkpoint ages and the log move on even when no event arrives
            return
        selected = None
        if table.row_count and table.is_valid_row_index(table.cursor_row):
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for info in list_runs(self.runs_root):
            metrics = info.last_eval.get("metrics")
            metrics = metrics if isinstance(metrics, dict) else {}
            loss = info.status.get("loss")
            acc = metrics.get("accuracy")
            updated = info.status.get("updated_at")
            updated = updated if isinstance(updated, (int, float)) and math.isfinite(updated) else 0
            cells = (
                info.name, info.state, str(info.status.get("step", "")),
                f"{loss:.4f}" if isinstance(loss, (int, float)) else "",
                f"{acc:.3f}" if isinstance(acc, (int, float)) else "",
                fmt_age(max(0.0, self.clock() - updated)),
                str(info.status.get("host", "")))
            # Text cells: a DataTable parses plain strings as markup, and these come from disk.
            table.add_row(*(Text(clean(c)[:80]) for c in cells), key=str(info.path))
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected), animate=False)  # stay on the run
        if self.link is not None:
            self.dirty = True  # checkpoint ages and the log move on even when no event arrives

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.attach(Path(str(event.row_key.value)))
        self.query_one("#runs").remove_class("shown")

    # ---- launching ----------------------------------------------------------------------

    def _launch(self) -> None:
        kind, args = self.launch or ("demo", [])
        self.call_from_thread(self.notify, f"starting the {kind} engine...", timeout=5)
        result = (launcher.start_demo(self.runs_root, args) if kind == "demo"
                  else launcher.start_run(Path(args[0]), self.runs_root, args[1:]))
        self.call_from_thread(self._launched, result)

    def _launched(self, result: launcher.Launch) -> None:
        if result.code == 0 and result.run is not None:
            self.attach(result.run)
        else:
            self.notify(f"the engine did not start (exit {result.code}):\n{clean(result.message)}",
                        severity="error", markup=False, timeout=20)

    # ---- actions ----------------------------------------------------------------------

    def _send(self, cmd: str, **args) -> None:
        link = self.link

        def work() -> None:
            reply = link.send(cmd, **args)
            self.post_message(CommandAnswered(cmd, reply))

        self.run_worker(work, thread=True, group="commands", name=f"send {cmd}")

    def _need_link(self) -> bool:
        if self.link is None:
            self.notify("no run selected: press l for the runs list", severity="warning")
            return False
        return True

    def action_checkpoint(self) -> None:
        """Checkpoint now; presses within a second, or while one is being saved, fold into it."""
        if not self._need_link():
            return
        now = time.monotonic()
        if self.checkpoint_in_flight or now - self.last_checkpoint_press < 1.0:
            self.notify("checkpoint already requested", timeout=2)
            return
        self.checkpoint_in_flight, self.last_checkpoint_press = True, now
        self._send("checkpoint")

    def action_pause(self) -> None:
        if self._need_link():
            self._send("continue" if self.link.history.state == "paused" else "pause")

    def action_stop(self) -> None:
        if not self._need_link():
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._send("stop")

        self.push_screen(ConfirmStop(self.link.name), answered)

    def action_resume(self) -> None:
        if not self._need_link():
            return
        link = self.link
        if not (link.vanished or link.history.state in RESUMABLE):
            self.notify(f"the run is {link.history.state}; only stopped, failed or preempted runs resume",
                        severity="warning", markup=False)
            return

        def work() -> None:
            result = launcher.resume_run(link.run)
            self.call_from_thread(self._launched, result)

        self.notify(f"resuming {link.name} from its latest checkpoint...", markup=False)
        self.run_worker(work, thread=True, group="launch", name="resume")

    def action_new_run(self) -> None:
        def chosen(path: str | None) -> None:
            if path:
                self.launch = ("run", [path])
                self.run_worker(self._launch, thread=True, group="launch", name="launch")

        self.push_screen(NewRunScreen(), chosen)

    def action_runs(self) -> None:
        self.refresh_runs(force=True)
        self.query_one("#runs").toggle_class("shown")

    def action_tensorboard(self) -> None:
        try:
            address = self.tb.start()
        except OSError as exc:
            self.notify(f"TensorBoard did not start: {exc}", severity="error", markup=False)
            return
        self.notify(f"TensorBoard at {address} ; {self.tb.ssh_hint()}", timeout=20, markup=False)

    def action_cycle_theme(self) -> None:
        names = self.cockpit_themes
        nxt = names[(names.index(self.theme) + 1) % len(names)] if self.theme in names else names[0]
        self.theme = nxt

    def watch_theme(self, theme: str) -> None:
        if theme in self.cockpit_themes and theme != self.user.theme:
            self.user.theme = theme
            settings_mod.save_theme(theme)

    def action_help(self) -> None:
        rows = [(self.get_key_display(b), b.description, b.tooltip or "") for b in self._bindings_shown()]
        self.push_screen(HelpScreen(rows))

    def _bindings_shown(self) -> list[Binding]:
        keymap = self.user.keys
        out = []
        for b in self.BINDINGS:
            out.append(b.with_key(keymap[b.id]) if b.id in keymap else b)
        return out

    async def action_quit(self) -> None:
        """Leave; the engine keeps training (it is its own process session)."""
        self.closing.set()
        self.tb.stop()
        self.exit()

    def on_unmount(self) -> None:
        self.closing.set()
        self.tb.stop()

    def on_command_answered(self, message: CommandAnswered) -> None:
        reply = message.reply
        if message.cmd == "checkpoint":
            self.checkpoint_in_flight = False
        if not reply.get("ok"):
            self.notify(f"{message.cmd}: {clean(str(reply.get('error', 'failed')))}", severity="error",
                        markup=False)
            return
        if message.cmd == "checkpoint":
            size = reply.get("bytes")
            size_text = f"{size / 1e6:.1f} MB" if isinstance(size, (int, float)) else "already on disk"
            self.notify(f"checkpoint saved at step {reply.get('step')} ({size_text}, "
                        f"{float(reply.get('seconds') or 0):.2f} s)", markup=False)
        elif message.cmd in ("pause", "continue"):
            self.notify(f"{reply.get('state')} at step {reply.get('step')}", markup=False)
        elif message.cmd == "stop":
            self.notify(f"stopped at step {reply.get('step')}; checkpoint {reply.get('path')}", markup=False)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for b in self.BINDINGS:
            if b.id not in ("quit", "help"):
                yield SystemCommand(b.description, b.tooltip or b.description,
                                    lambda a=b.action: self.run_action(a))
        for name in self.cockpit_themes:
            yield SystemCommand(f"Theme: {name}", f"Switch to the {name} theme",
                                lambda n=name: setattr(self, "theme", n))

    # ---- GPU ----------------------------------------------------------------------------

    def _poll_gpu(self) -> None:
        """Sample NVML (or the engine's CPU use) twice a second, in a thread."""
        sampler, worker = self.gpu or GpuSampler(), get_current_worker()
        pane = self.query_one(GpuPane)
        while not (worker.is_cancelled or self.closing.is_set()):
            link = self.link
            pid = link.history.pid if link else None
            if pid is None and link is not None:
                from cockpit.runs import read_status

                pid = read_status(link.run).get("pid")
            if sampler.available:
                devices = sampler.devices()
                self.call_from_thread(pane.show_devices, devices, self._rank_pids(pid))
                util = sum(d.util for d in devices) / len(devices) if devices else None
                self._watch_utilization(util)
            else:
                self.call_from_thread(pane.show_host, sampler.host(pid), sampler.reason)
            time.sleep(0.5)

    def _rank_pids(self, pid: int | None) -> set[int]:
        """The engine's pid, plus every rank's when it trains as several processes (read from
        status.json once per run and engine pid: a resume starts new ranks)."""
        pids = {pid} if isinstance(pid, int) else set()
        link = self.link
        if link is None or not (link.history.last_step or {}).get("world_size"):
            return pids
        key = (link.run, pid)
        if self._ranks_for[0] != key:
            from cockpit.runs import read_status

            ranks = read_status(link.run).get("rank_pids")
            found = {p for p in ranks if isinstance(p, int) and not isinstance(p, bool)} if isinstance(ranks, list) else set()
            self._ranks_for = (key, found) if found else (None, set())
        return pids | self._ranks_for[1]

    def _watch_utilization(self, util: float | None) -> None:
        link = self.link
        training = link is not None and link.history.state == "running"
        if self.low_util.update(time.monotonic(), util, training):
            step = link.history.last_step
            secs = step.get("steps_per_s")
            advice = low_util_advice(split(step), 1 / secs if secs else None)
            self.call_from_thread(self.notify, advice, severity="warning", timeout=15, markup=False)
