"""GPU telemetry from NVML (cheap calls, polled at most twice a second), with a CPU fallback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Device:
    """One GPU's sample."""

    index: int
    name: str
    util: float
    mem_used_gib: float
    mem_total_gib: float
    temperature: float | None
    power_w: float | None
    processes: list[tuple[int, float]] = field(default_factory=list)  # (pid, GiB)


@dataclass
class HostSample:
    """Without NVML: the engine process's CPU and memory."""

    cpu_percent: float
    rss_gib: float
    reason: str


class GpuSampler:
    """Reads NVML if it is there; says plainly why not otherwise."""

    def __init__(self, nvml: Any = None) -> None:
        """`nvml` is the pynvml module (the default) or anything with its interface."""
        self.nvml: Any = None
        self.reason = ""
        try:
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
            self.nvml = nvml
        except Exception as exc:  # noqa: BLE001 - no driver, no library, no GPU: all mean "no NVML"
            self.reason = f"NVML unavailable ({type(exc).__name__}): no NVIDIA GPU or driver here"
        self._procs: dict[int, Any] = {}

    @property
    def available(self) -> bool:
        return self.nvml is not None

    def devices(self) -> list[Device]:
        """One sample per GPU."""
        nv = self.nvml
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            out.append(Device(
                index=i, name=_text(nv.nvmlDeviceGetName(h)),
                util=float(nv.nvmlDeviceGetUtilizationRates(h).gpu),
                mem_used_gib=mem.used / 2**30, mem_total_gib=mem.total / 2**30,
                temperature=_try(lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))),
                power_w=_try(lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                processes=_try(lambda: [(p.pid, (p.usedGpuMemory or 0) / 2**30)
                                        for p in nv.nvmlDeviceGetComputeRunningProcesses(h)]) or [],
            ))
        return out

    def host(self, pid: int | None) -> HostSample | None:
        """CPU and memory of the engine process (psutil), for machines without NVML."""
        import psutil

        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None  # the pid comes from the run's files: anything at all
        try:
            proc = self._procs.get(pid) or psutil.Process(pid)
            self._procs = {pid: proc}
            return HostSample(proc.cpu_percent(None), proc.memory_info().rss / 2**30, self.reason)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OverflowError):
            return None


#: NVML throttle reasons that slow a GPU down (power cap, hardware slowdown, thermal, power brake);
#: idle and application clocks are not a slowdown.
SLOWDOWN_BITS = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


@dataclass
class RankGpu:
    """One rank's GPU as its rank reported it in a `ranks` event (any node, not only this one)."""

    host: str
    local_rank: Any
    rank: Any
    util: float
    mem_bytes: float | None
    temperature: float | None
    power_w: float | None
    sm_mhz: float | None
    throttled: bool


def rank_gpus(records: list[dict[str, Any]]) -> list[RankGpu]:
    """The GPUs of a ranks event's records that carry NVML readings (none without a GPU)."""
    out = []
    for r in records:
        util = _finite(r.get("gpu_util"))
        if util is None:
            continue
        throttle = r.get("gpu_throttle")
        out.append(RankGpu(host=str(r.get("host", "?")), local_rank=r.get("local_rank"), rank=r.get("rank"),
                           util=util, mem_bytes=_finite(r.get("gpu_mem_bytes")), temperature=_finite(r.get("gpu_temp_c")),
                           power_w=_finite(r.get("gpu_power_w")), sm_mhz=_finite(r.get("gpu_sm_mhz")),
                           throttled=isinstance(throttle, int) and bool(throttle & SLOWDOWN_BITS)))
    return out


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf"):
        return float(value)
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _try(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a sensor one GPU lacks is shown as missing
        return None
