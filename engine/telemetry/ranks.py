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
          "gpu_temp_c", "gpu_power_w", "gpu_sm_mhz", "gpu_throttle")
UNKNOWN = -1.0
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
    out = [UNKNOWN] * 6
    if device.type != "cuda":
        return out
    try:
        import pynvml

        h = _nvml_handle(torch.cuda._get_nvml_device_index(device))  # honours CUDA_VISIBLE_DEVICES
        out[0] = float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
        out[1] = float(pynvml.nvmlDeviceGetMemoryInfo(h).used)
        out[2] = float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))
        out[3] = pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0
        out[4] = float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM))
        out[5] = float(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h))
    except Exception:  # noqa: BLE001 - NVML missing, old or partial: what was read stands
        pass
    return out


def records(values: list[float], world: int, ids: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank 0: the summed slot vector as one dict per rank (with its identity and busy time)."""
    n = len(FIELDS)
    out = []
    for rank in range(world):
        slot = values[rank * n:(rank + 1) * n]
        rec: dict[str, Any] = {"rank": rank, **(ids[rank] if rank < len(ids) else {})}
        for name, value in zip(FIELDS, slot):
            rec[name] = None if value == UNKNOWN else (int(value) if name in ("mem_peak_bytes", "gpu_mem_bytes", "gpu_throttle") else value)
        rec["busy_s"] = sum(rec[k] for k in ("data_s", "h2d_s", "compute_s", "optim_s"))
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

    def __init__(self, ratio: float, steps: int):
        self.ratio, self.steps = ratio, steps
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
            if median > 0 and rec["busy_s"] > self.ratio * median:
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
