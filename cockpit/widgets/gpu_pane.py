"""GPUs: utilization, memory, temperature, power, a history sparkline, and their processes."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection

from rich.text import Text

from cockpit.gpu import Device, HostSample
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

    def show_devices(self, devices: list[Device], engine_pids: Collection[int] | int | None) -> None:
        """Devices, with the run's own processes (every rank's) highlighted."""
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
