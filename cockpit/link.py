"""The one place that talks to an engine: follows its events and sends its commands."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from contracts.layout import RunLayout
from cockpit import series_file
from cockpit.follower import EventFollower
from cockpit.history import RunHistory
from cockpit.runs import pid_alive, read_status
from contracts import command_files
from contracts.events import FINAL_STATES

#: An engine on another host whose status.json stays unchanged this long is taken for gone.
REMOTE_SILENCE_S = 300.0


class RunLink:
    """A run's history, kept current from events.jsonl by `follow` (run in a worker thread)."""

    def __init__(self, run: Path):
        self.run = run
        self.history = RunHistory(run=run)
        self.lock = threading.Lock()
        self.follower = EventFollower(RunLayout(run).events)
        self.vanished = False
        #: How many alerts the history held once the first poll had read the whole file (None
        #: before): the ones after it are live, the ones before it are the run's past.
        self.alerts_at_attach: int | None = None

    @property
    def name(self) -> str:
        return self.run.name

    def poll(self) -> set[str]:
        """Fold in whatever is new; returns the event types seen (empty: nothing new)."""
        kinds: set[str] = set()
        if self.follower.offset == 0 and not self.history.events_seen:
            replayed = series_file.replay(self.run)  # the engine's steps.f64, when it matches the events
            if replayed is not None:  # folded off the lock (the screen draws meanwhile), swapped in under it
                with self.lock:
                    self.history = replayed.history
                    self.follower.go_on_from(replayed.offset, replayed.inode)
                kinds |= replayed.kinds
        while True:
            events = self.follower.read()
            if not events:
                if self.alerts_at_attach is None:
                    self.alerts_at_attach = self.history.alerts_total
                return kinds
            with self.lock:
                kinds |= self.history.apply_many(events)

    def engine_gone(self) -> bool:
        """True once the engine is dead without having written a final state."""
        if self.vanished or self.history.state in FINAL_STATES:
            return False
        status = read_status(self.run)
        if status.get("state") in FINAL_STATES or not status.get("pid"):
            return False
        self.poll()  # its last words may have landed since
        if self.history.state in FINAL_STATES:
            return False
        if status.get("host") not in (None, socket.gethostname()):
            # an engine on another host (a Slurm node): its pid means nothing here; it is gone once
            # its status.json has not been rewritten for REMOTE_SILENCE_S
            if time.time() - float(status.get("updated_at") or time.time()) > REMOTE_SILENCE_S:
                self.vanished = True
        elif not pid_alive(status["pid"]):
            self.vanished = True
        return self.vanished

    def follow(self, on_update: Callable[[set[str]], None], on_gone: Callable[[], None],
               stop: Callable[[], bool], interval: float = 0.1) -> None:
        """Loop until stop(): fold new events in, report them, watch the engine's pid."""
        last_check = 0.0
        while not stop():
            kinds = self.poll()
            if kinds:
                on_update(kinds)
            now = time.monotonic()
            if now - last_check >= 0.5:
                last_check = now
                if self.engine_gone():
                    on_gone()
            time.sleep(interval)

    def send(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command; never raises (a failure is an {"ok": false} reply)."""
        status = read_status(self.run)
        if not status.get("socket") and not command_files.via_file(status):
            return {"ok": False, "error": "the engine is not running (no control socket)"}
        try:  # the socket on this host; the run directory's commands folder for an engine elsewhere
            return command_files.send(self.run, cmd, timeout=600.0, **args)
        except (OSError, ValueError, TimeoutError) as exc:
            return {"ok": False, "error": f"the engine did not answer: {exc}"}
