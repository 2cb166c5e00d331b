"""One trial's engine: start (or resume) its run, follow its events, report each evaluation to
Optuna, prune it through its control socket, and keep the trial's heartbeat while it lives."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from contracts.layout import RunLayout
from contracts.control import send_command
from contracts.events import read_events

#: The eval event's metric for each sweep.metric.
METRIC_KEYS = {"val_accuracy": "accuracy", "val_loss": "loss", "val_perplexity": "perplexity"}

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn: the engine gets SIGTERM (a stop with a checkpoint) when the worker dies,
    even by SIGKILL (Linux's PR_SET_PDEATHSIG; elsewhere the worker's exit handler stops it)."""
    def preexec() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the worker died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec


@dataclass
class Outcome:
    """How a trial's engine ended."""

    state: str                      # the run's final state (finished, pruned, stopped, failed, ...) or "bad-input"
    exit_code: int
    value: float | None = None      # the last evaluation's metric
    epochs: int = 0                 # evaluations seen
    pruned_by_us: bool = False
    message: str = ""
    reported: dict[int, float] = field(default_factory=dict)
    #: Every objective metric seen: the last evaluation's val_*, params and latency_ms (a
    #: `measures` event), cost (the last ledger's dollars, or its seconds when unpriced)
    measured: dict[str, float] = field(default_factory=dict)
    cost_unit: str = ""             # "dollars" or "seconds"


class TrialEngine:
    """Runs one trial's engine to its end (call `run()` on the trial's own thread)."""

    def __init__(self, argv: list[str], run_dir: Path, metric: str | None, report: Callable[[int, float], bool],
                 heartbeat: Callable[[], None], heartbeat_s: float, env: dict[str, str], log: Callable[[str], None]):
        # metric: the evaluation metric reported to Optuna after each epoch (None: none is, as in a
        # multi-objective study, which Optuna cannot prune)
        self.argv, self.run_dir, self.metric_key = argv, run_dir, METRIC_KEYS.get(metric or "")
        self.report, self.heartbeat, self.heartbeat_s, self.env, self.log = report, heartbeat, heartbeat_s, env, log
        self.proc: subprocess.Popen | None = None
        self.done = threading.Event()
        self.outcome = Outcome("starting", -1)
        self._offset = 0
        self._buf = b""
        self._prune_sent = False
        self.on_dir: Callable[[], None] | None = None  # called once the run directory exists

    # -- the engine process -------------------------------------------------------------------
    def start(self) -> None:
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *self.argv], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self._stderr, env=self.env,
            preexec_fn=_die_with_parent(os.getpid()))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the engine (SIGTERM: it checkpoints and exits 3)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def run(self) -> Outcome:
        self.start()
        beat = threading.Thread(target=self._beat, name="sweep-heartbeat", daemon=True)
        beat.start()
        try:
            assert self.proc is not None
            while self.proc.poll() is None:
                self._follow()
                time.sleep(0.2)
            self._follow()
            return self._end(self.proc.returncode)
        finally:
            self.done.set()
            beat.join(timeout=5)

    def _beat(self) -> None:
        while not self.done.wait(self.heartbeat_s):
            try:
                self.heartbeat()
            except Exception as exc:  # a storage hiccup must not kill the trial
                self.log(f"heartbeat failed: {exc}")

    # -- events -------------------------------------------------------------------------------
    def _follow(self) -> None:
        path = RunLayout(self.run_dir).events
        if self.on_dir is not None and RunLayout(self.run_dir).status.is_file():
            self.on_dir, on_dir = None, self.on_dir
            on_dir()
        try:
            with open(path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        self._offset += len(chunk)
        data = self._buf + chunk
        complete, _, self._buf = data.rpartition(b"\n")
        if not complete:
            return
        for event in read_events(complete.split(b"\n")):
            self._measured(event)
            if event.get("type") != "eval" or self.metric_key is None or event.get("partial"):
                continue
            value = (event.get("metrics") or {}).get(self.metric_key)
            if not isinstance(value, (int, float)):
                continue
            epoch = int(event.get("epoch", 0)) + 1  # epochs counted from 1
            self.outcome.value, self.outcome.epochs = float(value), epoch
            if epoch in self.outcome.reported:
                continue
            self.outcome.reported[epoch] = float(value)
            if self.report(epoch, float(value)) and not self._prune_sent:
                self._prune(epoch, float(value))

    def _measured(self, event: dict[str, Any]) -> None:
        """Keep what an event says of the objectives (the newest value of each wins)."""
        kind, got = event.get("type"), self.outcome.measured
        if kind == "eval":
            metrics = event.get("metrics") or {}
            got.update({name: float(metrics[key]) for name, key in METRIC_KEYS.items()
                        if isinstance(metrics.get(key), (int, float))})
        elif kind == "measures":
            for name, key in (("params", "parameters"), ("latency_ms", "latency_ms")):
                if isinstance(event.get(key), (int, float)):
                    got[name] = float(event[key])
        elif kind == "ledger":
            dollars, seconds = event.get("dollars"), event.get("total_s")
            if isinstance(dollars, (int, float)):
                got["cost"], self.outcome.cost_unit = float(dollars), "dollars"
            elif isinstance(seconds, (int, float)):
                got["cost"], self.outcome.cost_unit = float(seconds), "seconds"

    def _prune(self, epoch: int, value: float) -> None:
        self._prune_sent = True
        self.outcome.pruned_by_us = True
        why = f"pruned by the sweep's pruner after epoch {epoch} ({value:.4g})"
        self.log(f"{self.run_dir.name}: {why}")
        try:
            socket_path = json.loads(RunLayout(self.run_dir).status.read_text())["socket"]
            threading.Thread(target=self._send_prune, args=(socket_path, why), daemon=True).start()
        except (OSError, ValueError, KeyError) as exc:
            self.log(f"{self.run_dir.name}: could not reach the engine to prune it: {exc}")

    def _send_prune(self, socket_path: str, why: str) -> None:
        try:
            send_command(socket_path, "prune", timeout=120, reason=why)
        except (OSError, ValueError):
            pass  # the run ended first (or closed the socket before answering): its state says how

    def _end(self, code: int) -> Outcome:
        try:
            status = json.loads(RunLayout(self.run_dir).status.read_text())
        except (OSError, ValueError):
            status = {}
        self._stderr.seek(0)
        tail = self._stderr.read()[-4000:].decode(errors="replace").strip()
        self._stderr.close()
        state = status.get("state") if status else None
        self.outcome.exit_code = code
        # exit 2: refused before training (the status.json seen may be an older session's)
        self.outcome.state = "bad-input" if code == 2 else (state or "failed")
        self.outcome.message = str(status.get("reason") or tail)
        return self.outcome
