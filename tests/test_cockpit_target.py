"""`T` on the run screen: the target form, driven by Textual's Pilot against a real engine run."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Checkbox, Input, Label, Select

from cockpit.app import CockpitApp
from cockpit.screens.target_form import TargetScreen
from cockpit.settings import Settings
from cockpit.widgets.throughput_pane import ThroughputPane
from cockpit_helpers import notes
from conftest import TINY, events_of, only_run, run_engine
from test_cockpit_pilot import stop_engine, until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def run_with_target(tmp_path: Path, monkeypatch) -> Path:
    """A detached engine training the tiny config towards val_accuracy 0.9 (no stop)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "tiny.toml").write_text(TINY)
    runs = tmp_path / "runs"
    done = run_engine("run", str(tmp_path / "tiny.toml"), "--set", "train.epochs=400",
                      "--set", "checkpoint.every_steps=1000",
                      "--set", 'train.target={metric="val_accuracy",value=0.9}',
                      "--runs-dir", str(runs), "--detach")
    assert done.returncode == 0, done.stderr
    run = only_run(runs)
    yield run
    stop_engine(run)


def targets(run: Path) -> list[dict]:
    return [e for e in events_of(run) if e["type"] == "target"]


async def test_the_target_form_prefills_refuses_a_bad_value_and_sets_a_new_target(run_with_target: Path):
    run = run_with_target
    app = CockpitApp(run.parent, run=run, user=Settings(), poll_gpu=False)
    async with app.run_test(size=(110, 34)) as pilot:
        h = lambda: app.link.history  # noqa: E731
        await until(pilot, lambda: h().state == "running" and h().last_eval, what="the first evaluation")
        await pilot.press("T")
        await until(pilot, lambda: isinstance(app.screen, TargetScreen), what="the target form")
        form = app.screen
        labels = [str(label.content) for label in form.query(Label)]
        assert "metric" in labels and "value" in labels
        assert any("now: val_accuracy 0.9" in text for text in labels)
        metric = form.query_one("#target-metric", Select)
        assert metric.value == "val_accuracy"
        assert [str(option[0]) for option in metric._options] == ["val_accuracy", "val_loss"]  # digits: no perplexity
        value = form.query_one("#target-value", Input)
        assert value.value == "0.9"
        stop = form.query_one("#target-stop", Checkbox)
        assert stop.value is False and "stop the run when reached" in str(stop.label)

        value.value = "1.5"  # an accuracy above 1: refused here, the form stays
        await pilot.press("enter")
        error = form.query_one("#target-error", Label)
        await until(pilot, lambda: "value = 1.5" in str(error.content), what="the error")
        assert "val_accuracy is a share, expected 0 < value <= 1" in str(error.content)
        value.value = "high"
        await pilot.press("enter")
        await until(pilot, lambda: "value = 'high': expected a number" in str(error.content), what="the error")
        assert app.screen is form and not targets(run)

        metric.value = "val_loss"  # another metric, and stop when reached
        value.value = "0.01"
        stop.value = True
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, TargetScreen), what="the form to close")
        await until(pilot, lambda: any("target val_loss 0.01 from step" in n for n in notes(app)),
                    what="the engine's reply")
        assert any("the run finishes when it is reached" in n for n in notes(app))
        await until(pilot, lambda: h().projection.get("metric") == "val_loss", what="the new projection")
        assert h().projection["target"] == 0.01 and h().target["stop"] is True
        await pilot.pause(0.6)  # the panes redraw at 2 Hz
        assert "target val_loss 0.01" in app.screen.query_one(ThroughputPane).text.plain
        await pilot.press("q")
    (event,) = targets(run)
    assert (event["metric"], event["value"], event["stop"], event["by"]) == ("val_loss", 0.01, True, "cockpit")
