"""GPUs: utilization, memory, temperature, power, a history sparkline, and their processes.

With several processes on GPUs, every node's GPUs come from the run's `ranks` events (one row per
host:local_rank); otherwise this machine's NVML (or the engine's CPU without one).
"""

from __future__ import annotations

from collections import deque
import statistics
from collections.abc import Collection

from rich.text import Text

from cockpit.gpu import Device, HostSample, RankGpu, rank_gpus
from cockpit.history import RunHistory
from cockpit.ranks import LIST_ALL, WORST, size
from cockpit.sanitize import clean
from cockpit.sparkline import spark
from cockpit.widgets.pane import TextPane


class GpuPane(TextPane):
    """Per-device lines, the engine's own process highlighted; CPU/memory when there is no NVML.
    Fed by the screen from GpuSampled and HostSampled messages, not from the run's history."""

    TITLE = "GPU"
    PLACEHOLDER = "reading GPUs..."

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.util_history: dict[int, deque] = {}
        #: True once the run's ranks events carry GPU readings: those are shown, not local NVML.
        self.from_ranks = False
        self.ranks_version: tuple[int, int] | None = None
        self.rank_history: dict[tuple[str, object], deque] = {}

    def show(self, h: RunHistory) -> None:
        """Every node's GPUs from the newest ranks event, when its records have NVML readings."""
        fold = h.ranks
        if fold.mark == self.ranks_version:
            return
        self.ranks_version = fold.mark
        gpus = rank_gpus(fold.records)
        self.from_ranks = bool(gpus)
        if gpus:
            self.border_title = f"{self.TITLE}: {len(gpus)} on {len({g.host for g in gpus})} host(s)"
            self.text = self.draw_ranks(gpus)

    def draw_ranks(self, gpus: list[RankGpu]) -> Text:
        """One line per GPU (host:local_rank), or over LIST_ALL the spread and the least busy."""
        t = Text(no_wrap=True, overflow="crop")
        if len(gpus) > LIST_ALL:
            utils = sorted(g.util for g in gpus)
            t.append(f"util min {utils[0]:.0f}% med {statistics.median(utils):.0f}% max {utils[-1]:.0f}%\n")
            throttled = sum(g.throttled for g in gpus)
            if throttled:
                t.append(f"{throttled} throttled\n", style="bold")
            t.append(f"{WORST} least busy:\n", style="dim")
            gpus = sorted(gpus, key=lambda g: g.util)[:WORST]
        for g in gpus:
            key = (g.host, g.local_rank)
            if len(self.rank_history) < 4 * LIST_ALL or key in self.rank_history:
                self.rank_history.setdefault(key, deque(maxlen=60)).append(g.util)
            t.append(f"{clean(g.host)[:10]}:{g.local_rank} {g.util:3.0f}% ", style="bold")
            t.append(f"{size(g.mem_bytes)} ")
            if g.temperature is not None:
                t.append(f"{g.temperature:.0f}°C ")
            if g.power_w is not None:
                t.append(f"{g.power_w:.0f}W")
            t.append("\n" + spark(list(self.rank_history.get(key, ())), 22))
            t.append(" throttled\n" if g.throttled else "\n", style="bold")
        t.rstrip()
        return t

    def show_devices(self, devices: list[Device], engine_pids: Collection[int] | int | None) -> None:
        """Devices, with the run's own processes (every rank's) highlighted."""
        if self.from_ranks:
            return  # every node's GPUs, from the ranks events, are shown instead
        ours = engine_pids if isinstance(engine_pids, Collection) else {engine_pids}
        t = Text()
        for d in devices:
            hist = self.util_history.setdefault(d.index, deque(maxlen=60))
            hist.append(d.util)
            t.append(f"GPU{d.index} {d.util:3.0f}% ", style="bold")
            t.append(f"{d.mem_used_gib:.1f}/{d.mem_total_gib:.0f} GiB ")  # one line in the side column
            if d.temperature is not None:
                t.append(f"{d.temperature:.0f}°C ")
            if d.power_w is not None:
                t.append(f"{d.power_w:.0f}W")
            t.append("\n" + spark(list(hist), 30) + "\n")
            for pid, gib in d.processes[:3]:
                t.append(f"  pid {pid} {gib:.1f} GiB\n", style="reverse" if pid in ours else "")
        self.text = t if devices else Text("NVML reports no GPUs")

    def show_host(self, sample: HostSample | None, reason: str) -> None:
        """Without NVML: the engine process's CPU and memory, and why there is no GPU."""
        if self.from_ranks:
            return
        t = Text("no GPU (NVML unavailable)", style="dim")
        t.append("\n")
        if sample:
            hist = self.util_history.setdefault(-1, deque(maxlen=60))
            hist.append(sample.cpu_percent)
            t.append(f"engine CPU {sample.cpu_percent:3.0f}% RSS {sample.rss_gib:.2f} GiB ")
            t.append(spark(list(hist), 30))
        else:
            t.append("engine process not running here")
        self.tooltip = reason
        self.text = t
