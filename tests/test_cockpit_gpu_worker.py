"""The GPU worker: each sample is a message for the GPU pane; a GPU left idle while the run trains
is reported once, as advice; and the run screen shows both."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from cockpit.app import CockpitApp
from cockpit.diagnosis import LOW_UTIL_SECONDS as LOW_UTIL_S
from cockpit.gpu import GpuSampler
from cockpit.gpu_worker import GpuWatch
from cockpit.link import RunLink
from cockpit.messages import GpuSampled, GpuUnderused, HostSampled
from cockpit.settings import Settings
from cockpit.widgets.gpu_pane import GpuPane
from cockpit_helpers import ENGINE_PID, FIXED_NOW, N_EVENTS, FakeNvml, copy_recorded, notes, until

pytestmark = pytest.mark.timeout(60)


class IdleNvml(FakeNvml):
    """Both GPUs at 5%."""

    def nvmlDeviceGetUtilizationRates(self, h: int):
        return SimpleNamespace(gpu=5, memory=0)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def followed(tmp_path: Path, state: str = "running") -> RunLink:
    """The recorded run, folded in, as if it were still in `state`."""
    link = RunLink(copy_recorded(tmp_path))
    link.poll()
    link.history.state = state
    return link


def test_a_sample_is_one_message_naming_the_runs_processes(tmp_path: Path):
    posted: list = []
    watch = GpuWatch(posted.append, GpuSampler(nvml=FakeNvml()))
    watch.sample()  # no run followed yet
    watch.link = followed(tmp_path, "finished")
    watch.sample()
    assert [type(m) for m in posted] == [GpuSampled, GpuSampled]
    assert posted[0].engine_pids == frozenset() and posted[1].engine_pids == {ENGINE_PID}
    assert [d.index for d in posted[1].devices] == [0, 1]
    newer = GpuSampled([], frozenset())
    assert posted[1].can_replace(newer) and not posted[1].can_replace(HostSampled(None, ""))


def test_without_nvml_the_engine_process_is_sampled_and_the_reason_given(tmp_path: Path):
    posted: list = []
    watch = GpuWatch(posted.append, GpuSampler(nvml=object()))
    watch.link = followed(tmp_path)
    watch.sample()  # the recorded pid cannot exist: no process to sample
    watch.link.history.pid = os.getpid()
    watch.sample()
    assert [type(m) for m in posted] == [HostSampled, HostSampled]
    assert posted[0].sample is None and "NVML unavailable" in posted[0].reason
    assert posted[1].sample is not None and posted[1].sample.rss_gib > 0


def test_idle_gpus_while_training_post_advice_once_and_a_new_run_starts_its_own_clock(tmp_path: Path):
    posted: list = []
    clock = Clock()
    watch = GpuWatch(posted.append, GpuSampler(nvml=IdleNvml()), clock=clock)
    watch.link = followed(tmp_path / "one")

    def advice_after(seconds: float) -> list[str]:
        for _ in range(int(seconds)):
            watch.sample()
            clock.now += 1.0
        return [m.advice for m in posted if isinstance(m, GpuUnderused)]

    assert advice_after(LOW_UTIL_S) == []
    (advice,) = advice_after(LOW_UTIL_S)
    assert advice.startswith("GPU under") and "train.batch_size" in advice
    posted.clear()
    watch.link = followed(tmp_path / "two")
    assert advice_after(LOW_UTIL_S) == [], "the new run has not idled long enough yet"
    assert len(advice_after(2)) == 1

    posted.clear()
    watch.link = followed(tmp_path / "three", "paused")
    assert advice_after(3 * LOW_UTIL_S) == [], "a paused run is meant to leave the GPU idle"


async def test_the_run_screen_hands_samples_to_the_gpu_pane_and_shows_the_advice(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    run = copy_recorded(tmp_path)
    app = CockpitApp(run.parent, run=run, user=Settings(), poll_gpu=False, clock=lambda: FIXED_NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        screen, pane = app.run_screen, app.query_one(GpuPane)
        watch = GpuWatch(screen.post_message, GpuSampler(nvml=FakeNvml()))
        watch.link = app.link
        await until(pilot, lambda: app.link.history.events_seen == N_EVENTS, what="the history")
        watch.sample()
        await until(pilot, lambda: "GPU1" in pane.text.plain, what="the sample in the pane")
        assert f"pid {ENGINE_PID} 60.0 GiB" in pane.text.plain
        screen.post_message(GpuUnderused("GPU under 30% for 30 s: check data.num_workers"))
        await until(pilot, lambda: any(n.startswith("GPU under 30%") for n in notes(app)), what="the advice")
