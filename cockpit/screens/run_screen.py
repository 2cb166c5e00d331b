"""The live view of one run: its banner, every pane, and the keys that drive it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from cockpit.gpu import GpuSampler
from cockpit.gpu_worker import GpuWatch
from cockpit.link import RunLink
from cockpit.sanitize import clean
from cockpit.messages import EngineVanished, GpuSampled, GpuUnderused, HistoryUpdated, HostSampled
from cockpit.screens.alerts_screen import AlertsScreen
from cockpit.screens.ranks_screen import RanksScreen
from cockpit.screens.run_control import RunControl
from cockpit.screens.sized import SizedScreen
from cockpit.widgets.accuracy_pane import AccuracyPane
from cockpit.widgets.banner import RunBanner
from cockpit.widgets.checkpoints_pane import CheckpointsPane
from cockpit.widgets.cost_pane import CostPane
from cockpit.widgets.distill_pane import DistillPane
from cockpit.widgets.goodput_pane import GoodputPane
from cockpit.widgets.gpu_pane import GpuPane
from cockpit.widgets.log_pane import LogPane
from cockpit.widgets.loss_pane import LossPane
from cockpit.widgets.lr_pane import LrPane
from cockpit.widgets.pane import Pane
from cockpit.widgets.ranks_pane import RanksPane
from cockpit.widgets.spot_pane import SpotPane
from cockpit.widgets.steptime_pane import StepTimePane
from cockpit.widgets.throughput_pane import ThroughputPane
from contracts.events import FINAL_STATES

#: Panes redraw at most this often, so tmux never flickers and a fast run cannot flood the terminal.
REFRESH_HZ = 2
#: Checkpoint ages and the log move on even when no event arrives: redraw at least this often.
IDLE_REDRAW_S = 2.0
#: Narrower than this, the learning-rate and accuracy charts take turns (`a`); wider, side by side.
SIDE_BY_SIDE_WIDTH = 120
#: What a launched engine is doing before the cockpit can follow it, and once it can.
#: New alerts notified one by one at most; more at once (a burst) get one line that counts them.
NOTIFY_ALERTS = 3
STARTING_PHASES = ("loading torch, building the model and the data…", "training: waiting for the first step…")


class RunScreen(RunControl, SizedScreen):
    """Follows one run (chosen from the runs list, given on the command line, or just started)
    and shows it; the keys act on that run (see RunControl)."""

    BINDINGS = [
        Binding("c", "checkpoint", "Checkpoint", id="checkpoint", tooltip="Save a checkpoint now"),
        Binding("p", "pause", "Pause/continue", id="pause", tooltip="Pause training, or continue it"),
        Binding("s", "stop", "Stop", id="stop", tooltip="Checkpoint, then stop the run (asks first)"),
        Binding("r", "resume", "Resume", id="resume",
                tooltip="Resume a stopped, failed or preempted run from its latest checkpoint"),
        Binding("n", "new_run", "New run", id="new-run", tooltip="Start a new run from a config file"),
        Binding("f", "fix", "Fix", id="fix",
                tooltip="Apply the doctor's remedy: checkpoint, stop and resume with the field it names changed"),
        Binding("T", "target", "Target", id="target",
                tooltip="Set the run's target (metric, value, stop when reached) while it trains; the "
                        "projection beside the ETA follows it"),
        Binding("l", "runs", "Runs", id="runs", tooltip="Show the runs list, to follow another run"),
        Binding("y", "log_scale", "Log y", id="log-scale", tooltip="Toggle a logarithmic scale on the loss chart"),
        Binding("a", "swap_chart", "Acc/lr", id="swap-chart",
                tooltip="Show the accuracy chart or the learning-rate chart (both side by side when wide)"),
        Binding("R", "ranks", "Ranks", id="ranks", show=False,
                tooltip="Every rank in a table (several processes)"),
        Binding("exclamation_mark", "alerts", "Alerts", id="alerts", show=False,
                tooltip="The run's alerts, newest first"),
    ]

    def __init__(self, runs_root: Path, run: Path | None = None, launch: tuple[str, list[str]] | None = None,
                 gpu: GpuSampler | None = None, poll_gpu: bool = True, clock: Callable[[], float] = time.time,
                 closing: threading.Event | None = None):
        super().__init__()
        self.runs_root, self.initial_run, self.initial_launch = runs_root, run, launch
        self.poll_gpu, self.clock = poll_gpu, clock
        #: Set when the app shuts down: thread workers poll it (a cancelled asyncio task
        #: cannot stop a thread, and a thread left looping would keep the process alive).
        self.closing = closing or threading.Event()
        #: The run followed, or None before one is chosen.
        self.link: RunLink | None = None
        self.dirty = False
        self.gpu_watch = GpuWatch(self.post_message, gpu)
        #: While a run the cockpit launched starts: (what, time.monotonic() at the key press, attached).
        self.starting: tuple[str, float, bool] | None = None
        #: (the link, how many of its alerts were notified or were its past when attached).
        self.alerts_seen: tuple[RunLink | None, int] = (None, 0)

    def compose(self) -> ComposeResult:
        yield self.too_small()
        with Vertical(id="main"):
            yield RunBanner()
            yield Static(id="starting")
            with Horizontal(id="body"):
                with Vertical(id="charts"):
                    yield LossPane()
                    with Horizontal(id="lower-charts"):
                        yield AccuracyPane()
                        yield LrPane()
                    yield RanksPane()
                with VerticalScroll(id="side"):
                    yield GpuPane()
                    yield ThroughputPane()
                    yield StepTimePane()
                    yield CostPane()
                    yield GoodputPane()
                    yield SpotPane(clock=self.clock)
                    yield DistillPane()
            with Horizontal(id="bottom"):
                yield LogPane()
                yield CheckpointsPane(clock=self.clock)
        yield Footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(1 / REFRESH_HZ, self.refresh_panes)
        self.set_interval(IDLE_REDRAW_S, self.mark_dirty)
        self.set_interval(1.0, self.tick_starting)
        if self.poll_gpu:
            self.run_worker(self._sample_gpus, thread=True, group="gpu", name="gpu")
        if self.initial_launch:
            self.launch(*self.initial_launch)
        elif self.initial_run:
            self.attach(self.initial_run)

    # ---- following a run --------------------------------------------------------------

    def attach(self, run: Path) -> None:
        """Follow a run: replay its events.jsonl, then keep up with it."""
        self.link = self.gpu_watch.link = RunLink(run)
        self.checkpoint_in_flight = False
        self.app.sub_title = run.name
        self.run_worker(self._follow, thread=True, exclusive=True, group="follow", name="follow")

    def _follow(self) -> None:
        link, worker = self.link, get_current_worker()
        if link is None:
            return
        link.follow(
            on_update=lambda kinds: self.post_message(HistoryUpdated(link.name, frozenset(kinds))),
            on_gone=lambda: self.post_message(EngineVanished(link.name, None)),
            stop=lambda: worker.is_cancelled or self.link is not link or self.closing.is_set())

    def _sample_gpus(self) -> None:
        worker = get_current_worker()
        self.gpu_watch.run(stop=lambda: worker.is_cancelled or self.closing.is_set())

    def on_history_updated(self, message: HistoryUpdated) -> None:
        self.dirty = True
        if self.starting is not None:
            self.tick_starting()
        if "state" in message.kinds or "error" in message.kinds:
            self.refresh_banner()

    # ---- a run the cockpit launched, before its first step ----------------------------

    def begin_starting(self, what: str) -> None:
        """Say what is happening until the launched run's first step (then the live view shows)."""
        self.starting = (what, time.monotonic(), False)
        self.starting_wall = time.time()  # a resumed run's history has steps from before: not those
        self.add_class("starting")
        self.tick_starting()

    def starting_attached(self) -> None:
        """The launch returned and the run is followed: wait for its first step."""
        if self.starting is not None:
            self.starting = (*self.starting[:2], True)
            self.tick_starting()

    def end_starting(self) -> None:
        self.starting = None
        self.remove_class("starting")
        self.dirty = True
        if self.link is None:
            banner = self.query_one(RunBanner)
            banner.set_classes("")
            banner.text = Text(RunBanner.NO_RUN)
        else:
            self.refresh_banner()

    def tick_starting(self) -> None:
        """Once a second while starting: the elapsed seconds; the live view at the first step
        (or a final state: a run that failed early shows why)."""
        if self.starting is None or not self.app.is_running:
            return
        what, since, attached = self.starting
        link = self.link if attached else None
        if link is not None:
            with link.lock:
                h = link.history
                t = h.last_step.get("t")
                new_step = bool(h.last_step) and (not isinstance(t, (int, float)) or t >= self.starting_wall - 2)
                live = new_step or h.state in FINAL_STATES or link.vanished
            if live:
                self.end_starting()
                return
        text = f"{what}: {STARTING_PHASES[attached]} {int(time.monotonic() - since)} s"
        self.query_one(RunBanner).show_starting(text)
        self.query_one("#starting", Static).update(
            text + "\n\nthe live view appears at the first step; the engine runs on its own "
                   "(quitting the cockpit does not stop it)")

    def on_engine_vanished(self, message: EngineVanished) -> None:
        self.refresh_banner()
        self.notify("the engine exited unexpectedly; press r to resume from its latest checkpoint",
                    severity="error", markup=False, timeout=10)

    # ---- drawing ----------------------------------------------------------------------

    def mark_dirty(self) -> None:
        """Redraw at the next refresh even if no event arrived (while a run is followed)."""
        if self.link is not None:
            self.dirty = True

    def refresh_banner(self) -> None:
        if self.link and self.app.is_running:
            with self.link.lock:
                self.query_one(RunBanner).show(self.link.name, self.link.history, self.link.vanished)

    def refresh_panes(self) -> None:
        """Push the history down into the banner and every pane (at most REFRESH_HZ times a
        second, and each pane at most once every INTERVAL_S)."""
        link = self.link
        if link is None or not self.dirty or not self.app.is_running:
            return  # not running: shutting down, the panes may be gone while a timer still fires
        self.dirty = False
        now = time.monotonic()
        with link.lock:
            h = link.history
            self.query_one(RunBanner).show(link.name, h, link.vanished)
            for pane in self.query(Pane):
                if now - pane.drawn_at < pane.INTERVAL_S:
                    self.dirty = True  # come back for it
                    continue
                pane.drawn_at = now
                pane.show(h)
            self.notify_alerts(link, h)

    def notify_alerts(self, link: RunLink, h) -> None:
        """A notification for each alert that came while attached (the run's past ones: one line
        that counts them and names the newest; `!` lists them all)."""
        if link.alerts_at_attach is None:
            return  # the first read of the events file is not over: those are the past
        if self.alerts_seen[0] is not link:
            self.alerts_seen = (link, link.alerts_at_attach)
            if link.alerts_at_attach and h.alerts:
                last = h.alerts[-1]
                self.notify(f"{link.alerts_at_attach} alert(s) earlier in this run (! lists them); the newest: "
                            f"{clean(str(last.get('message', '')))}", severity="warning", timeout=10, markup=False)
        new = h.alerts_total - self.alerts_seen[1]
        if new <= 0:
            return
        self.alerts_seen = (link, h.alerts_total)
        for a in list(h.alerts)[-min(new, NOTIFY_ALERTS):]:
            critical = a.get("severity") == "critical"
            self.notify(f"alert ({clean(str(a.get('kind', '?')))}, step {a.get('step', '?')}): "
                        f"{clean(str(a.get('message', '')))}", severity="error" if critical else "warning",
                        timeout=30 if critical else 15, markup=False)
        if new > NOTIFY_ALERTS:
            self.notify(f"{new - NOTIFY_ALERTS} more alert(s): ! lists them", severity="warning", markup=False)

    # ---- GPU --------------------------------------------------------------------------

    def on_gpu_sampled(self, message: GpuSampled) -> None:
        self.query_one(GpuPane).show_devices(message.devices, message.engine_pids)

    def on_host_sampled(self, message: HostSampled) -> None:
        self.query_one(GpuPane).show_host(message.sample, message.reason)

    def on_gpu_underused(self, message: GpuUnderused) -> None:
        self.notify(message.advice, severity="warning", timeout=15, markup=False)

    # ---- keys -------------------------------------------------------------------------

    def on_resize(self, event) -> None:
        super().on_resize(event)
        self.set_class(event.size.width < SIDE_BY_SIDE_WIDTH, "narrow")

    def action_log_scale(self) -> None:
        """Toggle a logarithmic y axis on the loss chart."""
        pane = self.query_one(LossPane)
        pane.log_y = not pane.log_y
        self.mark_dirty()
        self.refresh_panes()

    def action_swap_chart(self) -> None:
        """Narrow: show the learning-rate chart instead of the accuracy chart, or back."""
        self.toggle_class("show-lr")
        self.mark_dirty()

    def action_ranks(self) -> None:
        """Every rank in a table (a screen of its own; Esc comes back)."""
        self.app.push_screen(RanksScreen(lambda: self.link))

    def action_alerts(self) -> None:
        """The run's alerts, newest first (a screen of its own; Esc comes back)."""
        self.app.push_screen(AlertsScreen(lambda: self.link))

    def action_runs(self) -> None:
        """Show the runs list (a screen of its own)."""
        self.app.switch_mode("runs")
