"""Shared by the cockpit snapshot and behaviour tests: the recorded run, a fake NVML, waiting."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from pathlib import Path
from types import SimpleNamespace

DATA = Path(__file__).resolve().parent / "data"
RECORDED = DATA / "recorded_run"

_spec = importlib.util.spec_from_file_location("make_recorded_run", DATA / "make_recorded_run.py")
recorded = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recorded)

RUN_NAME: str = recorded.RUN_NAME
FIXED_NOW: float = recorded.FIXED_NOW
ENGINE_PID: int = recorded.PID
N_EVENTS = sum(1 for line in (RECORDED / "events.jsonl").read_text().splitlines() if line.strip())


def copy_recorded(tmp_path: Path) -> Path:
    """The recorded run, copied to tmp_path/runs/<its run id>; returns the run directory."""
    run = tmp_path / "runs" / RUN_NAME
    shutil.copytree(RECORDED, run)
    return run


async def until(pilot, predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Let the app run until predicate() holds; the timeout is only a safety net."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.05)


def notes(app) -> list[str]:
    """The texts of the notifications the app is showing."""
    return [str(n.message) for n in app._notifications]


class FakeNvml:
    """pynvml's interface with fixed answers: two GPUs, the engine (pid ENGINE_PID) on GPU 0.

    Utilization follows a fixed sequence per call, so a fixed number of samples always draws
    the same sparkline.
    """

    NVML_TEMPERATURE_GPU = 0
    UTIL = [91, 94, 88, 97, 99, 96, 72, 35, 64, 93, 98, 97]

    def __init__(self) -> None:
        self.calls = 0
        self.initialised = False

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUtilizationRates(self, h: int):
        if h == 1:
            return SimpleNamespace(gpu=3, memory=0)
        value = self.UTIL[self.calls % len(self.UTIL)]
        self.calls += 1
        return SimpleNamespace(gpu=value, memory=40)

    def nvmlDeviceGetMemoryInfo(self, h: int):
        total = 80 * 2**30
        used = (61.5 if h == 0 else 0.5) * 2**30
        return SimpleNamespace(total=total, used=int(used), free=int(total - used))

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return 71 if h == 0 else 34

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 612_000 if h == 0 else 71_000  # milliwatts

    def nvmlDeviceGetComputeRunningProcesses(self, h: int):
        if h == 1:
            return []
        return [SimpleNamespace(pid=ENGINE_PID, usedGpuMemory=60 * 2**30),
                SimpleNamespace(pid=4242, usedGpuMemory=1 * 2**30)]
