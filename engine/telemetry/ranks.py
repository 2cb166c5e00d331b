"""Every rank in view: a fixed-size record per rank at each logging step, and stragglers.

Each rank fills its own slot of a vector that rides on the all-reduce the logging step already
makes (`StepMeter.report`), so no other step synchronises and nothing else travels: rank 0 gets
every rank's step-time split (seconds per micro-batch), peak memory and, on a GPU, its NVML
readings. Who a rank is (host, local rank, pid) does not change and is gathered once.
"""

from __future__ import annotations

import functools
import os
import socket
import statistics
from typing import Any

import torch

#: One rank's record, in slot order; -1 where a value is unknown (no GPU, no NVML).
FIELDS = ("data_s", "h2d_s", "compute_s", "comm_s", "optim_s", "mem_peak_bytes", "gpu_util", "gpu_mem_bytes",
          "gpu_temp_c", "gpu_power_w", "gpu_sm_mhz", "gpu_throttle", "gpu_ecc_errors", "gpu_xid")
UNKNOWN = -1.0
INTEGERS = ("mem_peak_bytes", "gpu_mem_bytes", "gpu_throttle", "gpu_ecc_errors", "gpu_xid")
HOST_ENV = "COCKPIT_HOSTNAME"  # a host name to report instead of the machine's (containers, tests)


def identity() -> dict[str, Any]:
    """This rank's host, local rank and pid."""
    return {"host": os.environ.get(HOST_ENV) or socket.gethostname(),
            "local_rank": int(os.environ.get("LOCAL_RANK", "0")), "pid": os.getpid()}


@functools.lru_cache(maxsize=None)
def _nvml_handle(index: int) -> Any:
    """NVML started once per process, and the GPU's handle looked up once."""
    import pynvml

    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def gpu_reading(device: torch.device) -> list[float]:
    """(util %, memory used bytes, temperature C, power W, SM clock MHz, throttle reason bits) of
    this rank's own GPU from NVML; UNKNOWN for each where there is none."""
    out = [UNKNOWN] * 8
    if device.type != "cuda":
        return out
    readers = (
        lambda p, h: p.nvmlDeviceGetUtilizationRates(h).gpu,
        lambda p, h: p.nvmlDeviceGetMemoryInfo(h).used,
        lambda p, h: p.nvmlDeviceGetTemperature(h, p.NVML_TEMPERATURE_GPU),
        lambda p, h: p.nvmlDeviceGetPowerUsage(h) / 1000.0,
        lambda p, h: p.nvmlDeviceGetClockInfo(h, p.NVML_CLOCK_SM),
        lambda p, h: p.nvmlDeviceGetCurrentClocksThrottleReasons(h),
        lambda p, h: p.nvmlDeviceGetTotalEccErrors(h, p.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, p.NVML_VOLATILE_ECC),
        lambda p, h: _last_xid(p, h),
    )
    try:
        import pynvml

        h = _nvml_handle(torch.cuda._get_nvml_device_index(device))  # honours CUDA_VISIBLE_DEVICES
    except Exception:  # noqa: BLE001 - no NVML: nothing known
        return out
    for i, read in enumerate(readers):
        try:
            out[i] = float(read(pynvml, h))
        except Exception:  # noqa: BLE001 - a reading this GPU or driver lacks (ECC off, old NVML)
            pass
    return out


_XIDS: dict[Any, Any] = {}  # a GPU handle's NVML event set for critical XID errors, and the last XID seen
_NO_XID = 0.0


def _last_xid(p: Any, h: Any) -> float:
    """The newest critical XID error NVML reported for this GPU since the run started (0: none);
    read without waiting from an event set registered once."""
    key = id(h)
    if key not in _XIDS:
        events = p.nvmlEventSetCreate()
        p.nvmlDeviceRegisterEvents(h, p.nvmlEventTypeXidCriticalError, events)
        _XIDS[key] = [events, _NO_XID]
    entry = _XIDS[key]
    while True:
        try:
            data = p.nvmlEventSetWait_v2(entry[0], 0)
        except p.NVMLError:  # a timeout: nothing new
            return entry[1]
        entry[1] = float(data.eventData)


def gpu_slots(device: torch.device) -> list[float]:
    """One process's record with only its GPU's readings (a single-process run's GPU alerts)."""
    return [UNKNOWN] * (len(FIELDS) - 8) + gpu_reading(device)


def records(values: list[float], world: int, ids: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank 0: the summed slot vector as one dict per rank (with its identity and busy time)."""
    n = len(FIELDS)
    out = []
    for rank in range(world):
        slot = values[rank * n:(rank + 1) * n]
        rec: dict[str, Any] = {"rank": rank, **(ids[rank] if rank < len(ids) else {})}
        for name, value in zip(FIELDS, slot):
            rec[name] = None if value == UNKNOWN else (int(value) if name in INTEGERS else value)
        rec["busy_s"] = sum(rec[k] or 0.0 for k in ("data_s", "h2d_s", "compute_s", "optim_s"))
        out.append(rec)
    return out


PARTS = {"input": ("data_s", "h2d_s"), "compute": ("compute_s",), "optimizer": ("optim_s",)}


def _part(rec: dict[str, Any], keys: tuple[str, ...]) -> float:
    return sum(rec[k] for k in keys)


#: Where a straggler's extra time goes, and what to look at.
CAUSES = {"input": "waiting for data: that host's data loader or disk (data.num_workers, the storage)",
          "compute": "compute: a slower or throttled GPU, or more work on that rank",
          "optimizer": "the optimizer step"}


class Stragglers:
    """A rank whose busy time passes `ratio` x the median of the others' for `steps` logging steps
    in a row; one alert per episode (it ends when the rank keeps up again)."""

    def __init__(self, ratio: float, steps: int, min_s: float = 0.0):
        self.ratio, self.steps, self.min_s = ratio, steps, min_s
        self.streak: dict[int, int] = {}
        self.alerted: set[int] = set()

    def feed(self, ranks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The new stragglers among these records: (rank, host, how much slower, where, ...)."""
        found = []
        if len(ranks) < 2:
            return found
        order = sorted(range(len(ranks)), key=lambda i: ranks[i]["busy_s"])
        place = {i: k for k, i in enumerate(order)}
        busy = [ranks[i]["busy_s"] for i in order]
        for i, rec in enumerate(ranks):
            median = _median_without(busy, place[i])
            r = rec["rank"]
            if median > 0 and rec["busy_s"] > self.ratio * median and rec["busy_s"] - median >= self.min_s:
                self.streak[r] = self.streak.get(r, 0) + 1
            else:
                self.streak[r] = 0
                self.alerted.discard(r)
            if self.streak[r] >= self.steps and r not in self.alerted:
                self.alerted.add(r)
                others = ranks[:i] + ranks[i + 1:]
                extra = {name: _part(rec, keys) - statistics.median(_part(o, keys) for o in others)
                         for name, keys in PARTS.items()}
                where = max(extra, key=extra.get)
                found.append({"rank": r, "host": rec.get("host"), "ratio": rec["busy_s"] / median,
                              "busy_s": rec["busy_s"], "median_s": median, "where": where,
                              "extra_s": extra[where]})
        return found


def _median_without(values: list[float], k: int) -> float:
    """The median of sorted `values` without the one at index `k` (no copy: one rank's look at
    the others stays O(1), so a logging step of 1,024 ranks does not sort 1,024 lists)."""
    n = len(values) - 1

    def at(j: int) -> float:  # the j-th of the others
        return values[j if j < k else j + 1]

    return at(n // 2) if n % 2 else (at(n // 2 - 1) + at(n // 2)) / 2


def straggler_message(s: dict[str, Any]) -> str:
    return (f"rank {s['rank']} on {s['host']} is a straggler: {s['ratio']:.1f}x the other ranks' median busy time "
            f"({s['busy_s'] * 1000:.0f} ms vs {s['median_s'] * 1000:.0f} ms a micro-batch); its extra "
            f"{s['extra_s'] * 1000:.0f} ms is {CAUSES[s['where']]}")


#: NVML's clock-throttle reasons that mean a GPU is held back against the user's will (not idle,
#: not an application clock setting): software power cap 0x4, hardware slowdown 0x8, software
#: thermal slowdown 0x20, hardware thermal 0x40, hardware power brake 0x80.
THROTTLES = {0x4: "power cap", 0x8: "hardware slowdown", 0x20: "thermal (software)", 0x40: "thermal (hardware)",
             0x80: "power brake"}


class GpuHealth:
    """From each rank's NVML readings: throttling (one alert per rank and episode), new
    uncorrected ECC errors and new critical XID errors (each one an alert)."""

    def __init__(self) -> None:
        self.throttled: set[int] = set()
        self.ecc: dict[int, int] = {}
        self.xid: dict[int, int] = {}

    def feed(self, ranks: list[dict[str, Any]]) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(kind, severity, message, fields) for each new finding."""
        found = []
        for rec in ranks:
            r, where = rec["rank"], f"rank {rec['rank']} on {rec.get('host')} (GPU {rec.get('local_rank')})"
            bits = rec.get("gpu_throttle") or 0
            reasons = [name for bit, name in THROTTLES.items() if bits & bit]
            if reasons and r not in self.throttled:
                self.throttled.add(r)
                found.append(("gpu_throttle", "warning", f"{where} is throttled: {', '.join(reasons)} (SM clock "
                              f"{rec.get('gpu_sm_mhz')} MHz, {rec.get('gpu_temp_c')} C, {rec.get('gpu_power_w')} W)",
                              {"rank": r, "host": rec.get("host"), "reasons": reasons, "throttle_bits": bits}))
            elif not reasons:
                self.throttled.discard(r)
            ecc = rec.get("gpu_ecc_errors")
            if ecc is not None:
                if ecc > self.ecc.get(r, ecc):
                    found.append(("gpu_ecc", "critical", f"{where}: {ecc - self.ecc[r]} new uncorrected ECC "
                                  f"error(s) ({ecc} since the driver loaded)", {"rank": r, "host": rec.get("host"),
                                                                                "ecc_errors": ecc}))
                self.ecc[r] = ecc
            xid = rec.get("gpu_xid")
            if xid and xid != self.xid.get(r):
                found.append(("gpu_xid", "critical", f"{where}: NVML reported XID {xid}, a critical GPU error "
                              "(see NVIDIA's XID table)", {"rank": r, "host": rec.get("host"), "xid": xid}))
            if xid is not None:
                self.xid[r] = xid
        return found
