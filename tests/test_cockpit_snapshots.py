"""What the cockpit looks like, pinned as SVG snapshots (pytest-textual-snapshot).

Every snapshot attaches to tests/data/recorded_run (a finished run with a crash and a resume
in its history) with a fixed clock, no GPU polling and no user settings, and waits until the
whole history is folded in and drawn, so the screens are the same on every machine and run.
Update them after a deliberate UI change with `pytest tests/test_cockpit_snapshots.py
--snapshot-update`, and look at the report before committing.
"""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from cockpit.app import CockpitApp
from cockpit.gpu import GpuSampler
from cockpit.settings import Settings
from cockpit.widgets.gpu_pane import GpuPane
from cockpit_helpers import (ENGINE_PID, FIXED_NOW, N_EVENTS, RECORDED, FakeNvml, copy_recorded,
                             recorded, until)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def run(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # never the user's settings
    return copy_recorded(tmp_path)


def cockpit(run: Path | None, runs_root: Path, **kwargs) -> CockpitApp:
    kwargs.setdefault("user", Settings())
    kwargs.setdefault("poll_gpu", False)
    return CockpitApp(runs_root, run=run, clock=lambda: FIXED_NOW, **kwargs)


async def history_drawn(pilot) -> None:
    """Wait until every recorded event is folded in, then for the (2 Hz) refresh to draw it."""
    app = pilot.app
    await until(pilot, lambda: app.link is not None and app.link.history.events_seen == N_EVENTS,
                what="the recorded history")
    await pilot.pause(1.2)


def test_the_recorded_run_is_what_the_generator_writes(tmp_path: Path):
    """tests/data/recorded_run is reproducible from make_recorded_run.py (and not edited by hand)."""
    fresh = recorded.write(tmp_path / "fresh")
    cmp = filecmp.dircmp(RECORDED, fresh)
    assert not (cmp.diff_files or cmp.left_only or cmp.right_only), cmp.report()
    for sub in cmp.subdirs.values():
        assert not (sub.diff_files or sub.left_only or sub.right_only), sub.report()
    assert sum(p.stat().st_size for p in RECORDED.rglob("*") if p.is_file()) < 200_000


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_attached_to_the_recorded_run(snap_compare, run: Path, size):
    assert snap_compare(cockpit(run, run.parent), terminal_size=size, run_before=history_drawn)


def test_terminal_too_small(snap_compare, run: Path):
    assert snap_compare(cockpit(run, run.parent), terminal_size=(50, 15), run_before=history_drawn)


def test_help_screen(snap_compare, run: Path):
    async def help_open(pilot) -> None:
        await history_drawn(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.2)

    assert snap_compare(cockpit(run, run.parent), terminal_size=(100, 30), run_before=help_open)


@pytest.mark.parametrize("theme", ["cockpit-dark", "cockpit-light", "cockpit-contrast"])
def test_each_theme(snap_compare, run: Path, theme: str):
    app = cockpit(run, run.parent, user=Settings(theme=theme))
    assert snap_compare(app, terminal_size=(80, 24), run_before=history_drawn)
    assert app.theme == theme


def test_runs_list_without_a_run(snap_compare, run: Path):
    async def listed(pilot) -> None:
        await until(pilot, lambda: pilot.app.query_one("#runs").row_count == 1, what="the runs list")
        await pilot.pause(1.0)  # a loaded machine can take longer to apply the cursor row's style

    assert snap_compare(cockpit(None, run.parent), terminal_size=(100, 24), run_before=listed)


def test_gpu_pane_with_nvml(snap_compare, run: Path):
    """Two GPUs from a fake NVML: utilization, memory, temperature, power, a sparkline of the
    last samples, and the processes on each GPU with the engine's own highlighted."""
    app = cockpit(run, run.parent, gpu=GpuSampler(nvml=FakeNvml()))

    shown = {}

    async def sampled(pilot) -> None:
        await history_drawn(pilot)
        pane = app.query_one(GpuPane)
        for _ in range(24):  # what 12 s of polling shows (the poll loop itself: test_cockpit_behaviour)
            pane.show_devices(app.gpu.devices(), ENGINE_PID)
        shown["text"] = pane.text.plain
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=(100, 30), run_before=sampled)
    text = shown["text"]
    assert "GPU0  97% 61.5/80 GiB 71°C 612W" in text and "GPU1   3%" in text
    assert f"pid {ENGINE_PID} 60.0 GiB" in text


@pytest.mark.parametrize("theme", ["cockpit-dark", "cockpit-light", "cockpit-contrast"])
def test_loss_log_scale(snap_compare, run: Path, theme: str):
    """`y`: the loss chart on a log scale; validation points keep their own marker in every theme."""
    async def log_scale(pilot) -> None:
        await history_drawn(pilot)
        await pilot.press("y")
        await pilot.pause(1.2)

    app = cockpit(run, run.parent, user=Settings(theme=theme))
    assert snap_compare(app, terminal_size=(80, 24), run_before=log_scale)
