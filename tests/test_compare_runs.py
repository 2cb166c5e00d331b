"""Compare runs: mark two runs in the runs list, o overlays their loss and accuracy curves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cockpit.app import CockpitApp
from cockpit.screens.compare_screen import CompareScreen
from cockpit.settings import Settings
from cockpit_helpers import FIXED_NOW, RUN_NAME, copy_recorded, until

pytestmark = pytest.mark.timeout(120)
OTHER = RUN_NAME.replace("small_cnn-rec1", "small_cnn-rec2").replace("120000", "130000")


@pytest.fixture
def runs(tmp_path: Path, monkeypatch) -> Path:
    """Two recorded runs: the second learns faster (lower loss, higher accuracy)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    first = copy_recorded(tmp_path)
    second = first.parent / OTHER
    shutil.copytree(first, second)
    lines = []
    for line in (second / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("type") == "step" and isinstance(e.get("loss"), float):
            e["loss"] *= 0.6
        if e.get("type") == "eval":
            e["metrics"]["accuracy"] = min(1.0, e["metrics"]["accuracy"] + 0.05)
        lines.append(json.dumps(e))
    (second / "events.jsonl").write_text("\n".join(lines) + "\n")
    status = json.loads((second / "status.json").read_text())
    (second / "status.json").write_text(json.dumps({**status, "run_id": OTHER, "updated_at": status.get("updated_at", 0) + 1}))
    return first.parent


def cockpit(root: Path, theme: str | None = None) -> CockpitApp:
    user = Settings(theme=theme) if theme else Settings()
    return CockpitApp(root, run=None, user=user, poll_gpu=False, clock=lambda: FIXED_NOW)


async def compared(pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: app.query_one("#runs").row_count == 2, what="the runs list")
    await pilot.press("space", "down", "space", "o")
    await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.drawn, what="the overlay")
    await pilot.pause(0.5)


async def test_marking_two_runs_overlays_both(runs: Path):
    app = cockpit(runs)
    async with app.run_test(size=(120, 32)) as pilot:
        await compared(pilot)
        screen = app.screen
        assert sorted(r.name for r in screen.runs) == sorted([RUN_NAME, OTHER])
        loss, accuracy = screen.drawn["loss"], screen.drawn["accuracy"]
        assert len(loss) == 2 and len(accuracy) == 2  # two series in each chart
        assert {line[2] for line in loss} == {"small_cnn-rec1", "small_cnn-rec2"}  # the legend
        assert len({line[3] for line in loss}) == 2  # each run its own colour
        by_name = {line[2]: line for line in loss}
        assert by_name["small_cnn-rec2"][1][-1] == pytest.approx(by_name["small_cnn-rec1"][1][-1] * 0.6)
        assert all(len(line[0]) >= 3 for line in accuracy)  # one validation point an epoch
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, CompareScreen), what="back to the list")


async def test_one_marked_run_is_not_a_comparison(runs: Path):
    app = cockpit(runs)
    async with app.run_test(size=(120, 32)) as pilot:
        await until(pilot, lambda: app.query_one("#runs").row_count == 2, what="the runs list")
        await pilot.press("space", "space", "o")  # marked, then unmarked
        await pilot.pause(0.3)
        assert not isinstance(app.screen, CompareScreen)


@pytest.mark.parametrize("theme", ["cockpit-dark", "cockpit-light", "cockpit-contrast"])
def test_the_overlay(snap_compare, runs: Path, theme: str):
    assert snap_compare(cockpit(runs, theme), terminal_size=(120, 32), run_before=compared)
