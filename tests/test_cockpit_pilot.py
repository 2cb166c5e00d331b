"""Every key action of the cockpit, driven by Textual's Pilot against a real engine run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cockpit.app import CockpitApp
from cockpit.runs import read_status
from cockpit.settings import Settings
from cockpit.widgets.banner import RunBanner
from cockpit_helpers import notes, until as until_short
from conftest import TINY, only_run, run_engine, wait_for


async def until(pilot, predicate, timeout: float = 90.0, what: str = "condition") -> None:
    """Wait on a real engine: longer than the recorded-run helpers' default."""
    await until_short(pilot, predicate, timeout=timeout, what=what)


pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def live_run(tmp_path: Path, monkeypatch) -> Path:
    """A detached engine training the tiny config for long enough to press every key."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "tiny.toml").write_text(TINY)
    runs = tmp_path / "runs"
    done = run_engine("run", str(tmp_path / "tiny.toml"), "--set", "train.epochs=400",
                      "--set", "checkpoint.keep_last=100000",
                      "--runs-dir", str(runs), "--detach")
    assert done.returncode == 0, done.stderr
    run = only_run(runs)
    yield run
    stop_engine(run)


def stop_engine(run: Path) -> None:
    """SIGTERM whatever engine trains this run (a resumed one has a new pid), until it stops."""
    for _ in range(100):
        status = read_status(run)
        if status.get("state") in ("stopped", "finished", "failed"):
            return
        try:
            pid = int(status.get("pid") or 0)
            if pid > 0:
                os.kill(pid, 15)
        except (ProcessLookupError, ValueError, OSError):
            pass
        time.sleep(0.2)


async def test_keys_checkpoint_pause_stop_resume_quit(live_run: Path):
    app = CockpitApp(live_run.parent, run=live_run, user=Settings(), poll_gpu=False)
    async with app.run_test(size=(100, 30)) as pilot:
        h = lambda: app.link.history  # noqa: E731
        await until(pilot, lambda: h().state == "running" and h().last_step, what="running")

        for _ in range(3):  # three quick presses queue one save
            await pilot.press("c")
        await until(pilot, lambda: any("checkpoint saved at step" in n for n in notes(app)), what="save")
        assert sum("checkpoint saved at step" in n for n in notes(app)) == 1
        saved = [n for n in notes(app) if "checkpoint saved at step" in n][0]
        step = int(saved.split("step ")[1].split()[0])
        assert (live_run / "checkpoints" / f"step-{step:08d}.pt").exists()

        await pilot.press("p")
        await until(pilot, lambda: h().state == "paused", what="paused")
        assert "PAUSED" in app.query_one(RunBanner).text.plain
        await pilot.press("p")
        await until(pilot, lambda: h().state == "running", what="running again")

        await pilot.press("s")
        await pilot.press("y")
        await until(pilot, lambda: h().state == "stopped", what="stopped")
        assert read_status(live_run)["state"] == "stopped"

        await pilot.press("r")
        await until(pilot, lambda: read_status(live_run).get("state") == "running", what="resumed")
        await until(pilot, lambda: any(e for e in [h().state] if e == "running"), what="re-attached")

        await pilot.press("q")
    assert read_status(live_run)["state"] in ("running", "checkpointing"), "quitting leaves the engine training"
    step = read_status(live_run)["step"]
    wait_for(lambda: read_status(live_run)["step"] > step, what="the engine to keep training")


async def test_keys_reach_an_engine_on_another_host_through_the_run_directory(live_run: Path, monkeypatch):
    """The channel the cockpit takes when status.json names another host (a Slurm node), forced
    here on one host: the keys' commands go to RUN/commands/ and come back as command_reply events."""
    from conftest import events_of

    monkeypatch.setenv("COCKPIT_COMMANDS_VIA", "file")
    app = CockpitApp(live_run.parent, run=live_run, user=Settings(), poll_gpu=False)
    async with app.run_test(size=(100, 30)) as pilot:
        h = lambda: app.link.history  # noqa: E731
        await until(pilot, lambda: h().state == "running" and h().last_step, what="running")
        await pilot.press("p")
        await until(pilot, lambda: h().state == "paused", what="paused")
        await pilot.press("c")
        await until(pilot, lambda: any("checkpoint saved at step" in n for n in notes(app)), what="save")
        await pilot.press("p")
        await until(pilot, lambda: h().state == "running", what="running again")
        await pilot.press("q")
    replies = [e for e in events_of(live_run) if e["type"] == "command_reply"]
    assert [(e["cmd"], e["reply"]["ok"]) for e in replies] == [("pause", True), ("checkpoint", True),
                                                               ("continue", True)], replies
    assert not list((live_run / "commands").glob("*.json"))


async def test_new_run_key_starts_a_detached_engine_and_attaches(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.replace("epochs = 3", "epochs = 400"))
    runs = tmp_path / "runs"
    app = CockpitApp(runs, user=Settings(), poll_gpu=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("n")
        await pilot.press(*str(config))
        await pilot.press("enter")
        # until its first step the screen says what is happening (a real launch: torch loads)
        await until(pilot, lambda: "starting a run from tiny.toml: loading torch" in
                    app.run_screen.query_one(RunBanner).text.plain, what="the starting line")
        assert app.run_screen.has_class("starting")
        await until(pilot, lambda: app.link is not None and app.link.history.state == "running",
                    what="the new run to train")
        await until(pilot, lambda: not app.run_screen.has_class("starting"), what="the live view")
        assert app.link.history.last_step, "the live view comes with the first step"
        run = only_run(runs)
        assert app.link.run.resolve() == run.resolve()
        reply = app.link.send("stop")
        assert reply["ok"] and reply["state"] == "stopped"
        await until(pilot, lambda: app.link.history.state == "stopped", what="stopped")


async def test_a_bad_config_from_the_new_run_key_is_reported_not_fatal(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlrr = 0.1\n")
    app = CockpitApp(tmp_path / "runs", user=Settings(), poll_gpu=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("n")
        await pilot.press(*str(bad))
        await pilot.press("enter")
        await until(pilot, lambda: any("did not start" in n for n in notes(app)), what="the error")
        message = [n for n in notes(app) if "did not start" in n][0]
        assert "optim.lrr" in message and "did you mean 'lr'" in message
        await pilot.press("question_mark")
        await until(pilot, lambda: type(app.screen).__name__ == "HelpScreen", what="help")
        await pilot.press("q")
        await until(pilot, lambda: type(app.screen).__name__ != "HelpScreen", what="help to close")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
