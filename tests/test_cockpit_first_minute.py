"""Issue 12's first minute and what a user watches: the starting message until the first step,
the log pane at 80x24, accuracy, the loss chart's log scale, `cockpit runs --json`."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from cockpit import cli, launcher
from cockpit.app import CockpitApp
from cockpit.history import RunHistory
from cockpit.settings import Settings
from cockpit.widgets.accuracy_pane import AccuracyPane
from cockpit.widgets.banner import RunBanner
from cockpit.widgets.chart import step_ticks
from cockpit.widgets.log_pane import LogPane, short_line, wrap_rows
from cockpit.widgets.loss_pane import LossPane, VAL_MARKER
from cockpit_helpers import FIXED_NOW, N_EVENTS, RUN_NAME, copy_recorded, until
from contracts.events import encode_event, make_event

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_user_settings(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def recorded_app(run: Path, **kwargs) -> CockpitApp:
    return CockpitApp(run.parent, run=run, clock=lambda: FIXED_NOW, user=Settings(), poll_gpu=False, **kwargs)


async def drawn(pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: app.link is not None and app.link.history.events_seen == N_EVENTS,
                what="the recorded history")
    await pilot.pause(1.2)


# ---- the starting message ------------------------------------------------------------


async def test_a_launch_says_what_is_happening_until_the_first_step(tmp_path: Path, monkeypatch):
    """`cockpit demo`: from the key press to the first step event the screen says what the engine
    is doing and for how long; the first step brings the live view by itself."""
    run = tmp_path / "runs" / "20261201-000000-demo-abcd"
    run.mkdir(parents=True)
    (run / "config.toml").write_text("")
    # a step from an earlier session (as a resumed run has): not the first step of this launch
    (run / "events.jsonl").write_text(encode_event(make_event("state", t=1.0, state="running", step=0))
                                      + encode_event(make_event("step", t=2.0, step=3, epoch=0, loss=2.3)))
    release = threading.Event()

    def start_demo(runs_root: Path, overrides: list[str], gpt: bool = False) -> launcher.Launch:
        release.wait(20)  # the engine is still importing torch
        return launcher.Launch(0, run, "")

    monkeypatch.setattr(launcher, "start_demo", start_demo)
    app = CockpitApp(tmp_path / "runs", launch=("demo", []), user=Settings(), poll_gpu=False)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.run_screen
        banner = lambda: app.query_one(RunBanner).text.plain  # noqa: E731
        await until(pilot, lambda: "starting the demo run: loading torch" in banner(), what="the starting line")
        assert "no run selected" not in banner()
        assert screen.has_class("starting") and screen.query_one("#starting").display
        assert not screen.query_one("#body").display, "no empty panes meanwhile"
        await until(pilot, lambda: re.search(r"loading torch.*… [1-9]\d* s$", banner()), what="elapsed seconds")

        release.set()  # the detached launch returned: the run is followed, no step yet
        await until(pilot, lambda: "waiting for the first step" in banner(), what="the attached phase")
        assert screen.has_class("starting")

        with open(run / "events.jsonl", "a") as f:
            f.write(encode_event(make_event("step", step=5, epoch=0, batch=5, batches_per_epoch=45,
                                            loss=2.2, accuracy=0.2, lr=0.001)))
        await until(pilot, lambda: not screen.has_class("starting"), what="the live view")
        assert screen.query_one("#body").display and not screen.query_one("#starting").display
        await until(pilot, lambda: "RUNNING  step 5  epoch 1" in banner(), what="the live banner")


async def test_a_launch_that_fails_says_so_and_leaves_the_starting_view(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(launcher, "start_demo", lambda root, over, gpt=False: launcher.Launch(2, None, "bad config"))
    app = CockpitApp(tmp_path / "runs", launch=("demo", []), user=Settings(), poll_gpu=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: any("did not start" in str(n.message) for n in app._notifications),
                    what="the refusal")
        assert not app.run_screen.has_class("starting")
        assert "no run selected" in app.query_one(RunBanner).text.plain


# ---- the banner follows the events ---------------------------------------------------


def test_the_banner_step_follows_state_events_past_the_last_step_event():
    h = RunHistory()
    h.apply(make_event("step", step=1480, epoch=3, loss=0.5))
    h.apply(make_event("state", state="paused", step=1489))
    assert h.current_step == 1489
    banner = RunBanner()
    banner.show("run", h, vanished=False)
    assert "PAUSED  step 1489  epoch 4" in banner.text.plain
    h.apply(make_event("resume", step=1200, epoch=2, checkpoint="step-00001200.pt"))
    assert h.current_step == 1480  # the step event is still the newest one seen


# ---- the log pane at 80x24 -----------------------------------------------------------


def test_log_lines_lose_the_date_and_the_run_directory_and_wrap_whole():
    line = (f"2026-01-01 12:00:50 checkpoint saved at step 60: /home/alice/runs/{RUN_NAME}/checkpoints/"
            "step-00000060.pt (1.2 MB, 0.21 s)")
    short = short_line(line, RUN_NAME)
    assert short == "12:00:50 checkpoint saved at step 60: …/checkpoints/step-00000060.pt (1.2 MB, 0.21 s)"
    rows = wrap_rows([("12:00:49 older", ""), (short, "")], 42, 4)
    assert all(len(r) <= 42 for r, _ in rows)
    assert " ".join(r.strip() for r, _ in rows[-3:]) == short
    # only whole messages: the older one does not fit above the three rows, so it is left out
    assert len(wrap_rows([("x " * 30, ""), (short, "")], 42, 4)) == 3


async def test_the_log_pane_shows_a_whole_checkpoint_line_at_80x24(tmp_path: Path):
    run = copy_recorded(tmp_path)
    app = recorded_app(run)
    async with app.run_test(size=(80, 24)) as pilot:
        await drawn(pilot)
        shown = " ".join(r.strip() for r in app.query_one(LogPane).text.plain.splitlines())
        assert "12:00:50 checkpoint saved at step 60: …/checkpoints/step-00000060.pt (1.2 MB, 0.21 s)" in shown
        assert "2026-01-01" not in shown and "/home/alice" not in shown


# ---- charts --------------------------------------------------------------------------


def test_step_ticks_are_whole_numbers():
    assert step_ticks(1, 60) == [20, 40, 60]
    assert step_ticks(0, 1_000_000) == [0, 500_000, 1_000_000]
    assert step_ticks(31, 35) == [31, 32, 33, 34, 35]
    assert all(isinstance(t, int) for t in step_ticks(1.0, 292.5))


async def test_the_accuracy_pane_draws_train_and_validation_points(tmp_path: Path):
    run = copy_recorded(tmp_path)
    app = recorded_app(run)
    async with app.run_test(size=(80, 24)) as pilot:
        await drawn(pilot)
        h = app.link.history
        assert len(h.accuracy) == 60 and h.accuracy.points()[0][-1] == 60  # the resume's replay applied
        assert h.val_accuracy.points() == ([20.0, 40.0, 60.0], [0.612, 0.781, 0.744])
        pane = app.query_one(AccuracyPane)
        assert pane.display and pane.region.width > 30
        canvas = pane.chart.plt.build()
        assert "train" in canvas and "validation" in canvas and VAL_MARKER in canvas
        assert "292.5" not in canvas and not re.search(r"\b\d+\.\d\b", canvas.splitlines()[-1])

        await pilot.press("a")  # narrow: the learning-rate chart takes its place
        await pilot.pause(0.3)
        assert not pane.display and app.query_one("LrPane").display


async def test_runs_without_training_accuracy_still_draw(tmp_path: Path):
    run = copy_recorded(tmp_path)
    lines = (run / "events.jsonl").read_text().splitlines()
    old = [json.dumps({k: v for k, v in json.loads(x).items() if k != "accuracy"}) for x in lines]
    (run / "events.jsonl").write_text("\n".join(old) + "\n")
    app = recorded_app(run)
    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot)
        assert len(app.link.history.accuracy) == 0
        canvas = app.query_one(AccuracyPane).chart.plt.build()
        assert "validation" in canvas and VAL_MARKER in canvas
        assert app.query_one("LrPane").display  # wide: side by side


async def test_y_toggles_a_log_scale_on_the_loss_chart(tmp_path: Path):
    run = copy_recorded(tmp_path)
    app = recorded_app(run)
    async with app.run_test(size=(80, 24)) as pilot:
        await drawn(pilot)
        pane = app.query_one(LossPane)
        linear = pane.chart.plt.build()
        await pilot.press("y")
        await pilot.pause(1.3)
        assert pane.log_y and pane.border_title == "loss (log scale)"
        assert pane.chart.plt.build() != linear
        await pilot.press("y")
        assert not pane.log_y and pane.border_title == "loss"


# ---- cockpit runs --------------------------------------------------------------------


def test_cockpit_runs_has_the_runs_screen_columns_and_json(tmp_path: Path, capsys):
    run = copy_recorded(tmp_path)
    assert cli.main(["--runs-dir", str(run.parent), "runs"]) == 0
    head, row = capsys.readouterr().out.splitlines()
    assert head.split() == ["run", "state", "step", "loss", "acc", "age", "host"]
    assert row.split()[:5] == [RUN_NAME, "finished", "60", "0.5911", "0.744"] and row.endswith("recorded-host")

    assert cli.main(["--runs-dir", str(run.parent), "runs", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["run"] == RUN_NAME and record["state"] == "finished" and record["step"] == 60
    assert record["accuracy"] == 0.744 and record["host"] == "recorded-host"
    assert record["loss"] == pytest.approx(0.591126) and record["age_s"] >= 0

    assert cli.main(["--runs-dir", str(tmp_path / "none"), "runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
