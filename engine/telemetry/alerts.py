"""Alerts, one mechanism: an `alert` event (kind, severity, step, one-line message) that the
cockpit shows, the console prints, and `alerts.command` receives as JSON on standard input.

The detectors here judge the run against its own history (a loss spike, a throughput drop);
stragglers come from every rank's record (engine.telemetry.ranks). Each fires once per episode:
again only after the condition has cleared.
"""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
import threading
from collections import deque
from typing import Any, Callable


class Alerts:
    """Rank 0's alerts: events, and the user's command (never blocking the loop)."""

    def __init__(self, cfg: Any, emit: Callable[..., Any], log: Any = None, active: bool = True):
        """`active`: this process tells (rank 0); elsewhere every call is a no-op."""
        self.cfg, self.emit, self.active = cfg, emit, active
        self.log = log or sys.stderr
        self.losses: deque[float] = deque(maxlen=50)  # the last logged losses, a spike's yardstick
        self.spiking = False
        self.calm = 0  # logged losses in a row back near the median (5 end a spike's episode)
        self.speeds: list[float] = []  # logged rates until the baseline is known (logging steps 5 to 20)
        self.base: float | None = None
        self.slow = 0
        self.dropped = False

    def fire(self, kind: str, severity: str, step: int, message: str, **fields: Any) -> None:
        if not self.active:
            return
        event = {"kind": kind, "severity": severity, "step": step, "message": message, **fields}
        self.emit("alert", **event)
        if self.cfg.command:  # not a daemon: a run that ends right after (a non-finite loss) still tells
            threading.Thread(target=self._tell, args=({"type": "alert", **event},)).start()

    def _tell(self, event: dict[str, Any]) -> None:
        try:
            done = subprocess.run(shlex.split(self.cfg.command), input=json.dumps(event) + "\n", text=True,
                                  capture_output=True, timeout=60)
            if done.returncode:
                print(f"cockpit-engine: warning: alerts.command exited {done.returncode}: {done.stderr.strip()[-500:]}",
                      file=self.log, flush=True)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"cockpit-engine: warning: alerts.command could not run: {exc}", file=self.log, flush=True)

    def loss(self, step: int, loss: float) -> None:
        """A logged loss: a spike is `loss_spike_z` robust deviations above the recent median."""
        history = list(self.losses)
        self.losses.append(loss)
        if not self.cfg.loss_spike or len(history) < 10:
            return
        median = statistics.median(history)
        spread = 1.4826 * statistics.median(abs(v - median) for v in history)
        z = (loss - median) / spread if spread > 0 else 0.0
        self.calm = self.calm + 1 if z <= self.cfg.loss_spike_z / 2 else 0
        if z > self.cfg.loss_spike_z and not self.spiking:
            self.spiking = True
            self.fire("loss_spike", "warning", step,
                      f"loss spike at step {step}: {loss:.4g}, {z:.0f} robust deviations above the median "
                      f"{median:.4g} of the last {len(history)} logged losses", loss=loss, median=median, z=z)
        elif self.calm >= 5:
            self.spiking = False

    def throughput(self, step: int, samples_per_s: float) -> None:
        """A logged rate: three in a row under `throughput_drop_ratio` of the baseline (the median
        of this session's logging steps 5 to 20) is a drop."""
        if not self.cfg.throughput_drop:
            return
        if self.base is None:
            self.speeds.append(samples_per_s)
            if len(self.speeds) <= 20:
                return
            self.base = statistics.median(self.speeds[4:20])
        base = self.base
        low = base > 0 and samples_per_s < self.cfg.throughput_drop_ratio * base
        self.slow = self.slow + 1 if low else 0
        if self.slow >= 3 and not self.dropped:
            self.dropped = True
            self.fire("throughput_drop", "warning", step,
                      f"throughput dropped at step {step}: {samples_per_s:,.0f} samples/s, "
                      f"{samples_per_s / base:.0%} of this run's baseline {base:,.0f}", samples_per_s=samples_per_s,
                      baseline=base)
        elif not low:
            self.dropped = False
