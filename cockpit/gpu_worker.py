"""GPU sampling for a screen: NVML (or the engine's CPU use) twice a second, posted as messages."""

from __future__ import annotations

import time
from typing import Callable

from textual.message import Message

from cockpit.diagnosis import LowUtilWatch, low_util_advice, split
from cockpit.gpu import Device, GpuSampler
from cockpit.link import RunLink
from cockpit.messages import GpuSampled, GpuUnderused, HostSampled
from cockpit.runs import read_status

#: Seconds between two samples (NVML calls are cheap; the pane is read by people).
INTERVAL_S = 0.5


class GpuWatch:
    """Samples in a worker thread (`run`) and posts GpuSampled or HostSampled, and GpuUnderused
    once the GPUs have idled while the run trains. Set `link` to the run the screen follows."""

    def __init__(self, post: Callable[[Message], object], sampler: GpuSampler | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.post, self.sampler, self.clock = post, sampler, clock
        #: The run whose processes are highlighted and whose training is watched (set by the screen).
        self.link: RunLink | None = None
        self._watched: RunLink | None = None
        self._low_util = LowUtilWatch()
        self._ranks_for: tuple[object, frozenset[int]] = (None, frozenset())  # (run, engine pid) -> rank pids

    def run(self, stop: Callable[[], bool]) -> None:
        """Sample until stop() (NVML is opened here, in the worker's thread)."""
        while not stop():
            self.sample()
            time.sleep(INTERVAL_S)

    def sample(self) -> None:
        """Take one sample and post it."""
        if self.sampler is None:
            self.sampler = GpuSampler()
        sampler, link = self.sampler, self.link
        if link is not self._watched:  # a new run: its own low-utilization clock
            self._watched, self._low_util = link, LowUtilWatch()
        pid = engine_pid(link)
        if sampler.available:
            devices = sampler.devices()
            self.post(GpuSampled(devices, self._rank_pids(link, pid)))
            self._watch_utilization(link, devices)
        else:
            self.post(HostSampled(sampler.host(pid), sampler.reason))

    def _rank_pids(self, link: RunLink | None, pid: int | None) -> frozenset[int]:
        """The engine's pid, plus every rank's when it trains as several processes (read from
        status.json once per run and engine pid: a resume starts new ranks)."""
        pids = frozenset({pid} if isinstance(pid, int) else ())
        if link is None or not (link.history.last_step or {}).get("world_size"):
            return pids
        key = (link.run, pid)
        if self._ranks_for[0] != key:
            ranks = read_status(link.run).get("rank_pids")
            found = frozenset(p for p in ranks if isinstance(p, int) and not isinstance(p, bool)) \
                if isinstance(ranks, list) else frozenset()
            self._ranks_for = (key, found) if found else (None, frozenset())
        return pids | self._ranks_for[1]

    def _watch_utilization(self, link: RunLink | None, devices: list[Device]) -> None:
        util = sum(d.util for d in devices) / len(devices) if devices else None
        training = link is not None and link.history.state == "running"
        if self._low_util.update(self.clock(), util, training):
            step = link.history.last_step
            secs = step.get("steps_per_s")
            self.post(GpuUnderused(low_util_advice(split(step), 1 / secs if secs else None)))


def engine_pid(link: RunLink | None) -> int | None:
    """The followed run's engine pid: from its events, else from status.json."""
    if link is None:
        return None
    pid = link.history.pid
    return read_status(link.run).get("pid") if pid is None else pid
