"""The cockpit says why a run paused itself: a checkpoint the disk had no room for."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from cockpit.app import CockpitApp
from cockpit.settings import Settings
from cockpit.widgets.banner import RunBanner
from cockpit.widgets.log_pane import LogPane
from cockpit_helpers import until

pytestmark = pytest.mark.timeout(120)

REASON = ("disk full: the checkpoint of step 30 (about 43.1 KiB) does not fit in /data/runs/exp-1/checkpoints "
          "(16.0 KiB free); last good checkpoint: step-00000015.pt (step 15); retrying when space is freed")


def ev(type_: str, t: float, **fields) -> str:
    return json.dumps({"v": 1, "t": t, "type": type_, **fields}) + "\n"


@pytest.fixture(autouse=True)
def own_settings(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def paused_run(root: Path) -> Path:
    run = root / "exp-1"
    run.mkdir(parents=True)
    (run / "config.toml").write_text("[model]\n")
    (run / "status.json").write_text(json.dumps({  # a live engine (this process) waiting for space
        "pid": os.getpid(), "host": socket.gethostname(), "state": "paused", "step": 30, "reason": REASON}))
    t = 1767268800.0
    (run / "events.jsonl").write_text("".join([
        ev("state", t, state="running", step=0),
        ev("step", t + 1, step=30, epoch=0, batch=30, batches_per_epoch=45, loss=2.1, lr=0.05),
        ev("state", t + 2, state="checkpointing", step=30),
        ev("state", t + 3, state="paused", step=30, reason=REASON),
        ev("log", t + 3, level="warning", message=f"{REASON}. Training is paused at step 30"),
    ]))
    (run / "engine.log").write_text(f"2026-01-01 12:00:03 warning: {REASON}. Training is paused at step 30\n")
    return run


async def test_the_banner_says_why_the_engine_paused_itself(tmp_path: Path):
    run = paused_run(tmp_path / "runs")
    app = CockpitApp(run.parent, run=run, user=Settings(), poll_gpu=False)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: app.link.history.state == "paused", what="the paused state")
        banner = app.query_one(RunBanner)
        await until(pilot, lambda: "PAUSED" in banner.text.plain, what="the banner")
        lines = banner.text.plain.splitlines()
        assert "PAUSED  step 30" in lines[0]
        assert lines[1].strip() == REASON  # the whole reason: folder, free space, size, last good
        log = app.query_one(LogPane)  # the log pane is refreshed on its own timer, not with the banner
        await until(pilot, lambda: "disk full" in log.text.plain, what="the warning in the log pane")


def test_a_paused_run_without_a_reason_keeps_one_line():
    from contracts.events import make_event
    from cockpit.history import RunHistory

    h = RunHistory()
    h.apply(make_event("state", state="paused", step=12))
    banner = RunBanner()
    banner.show("run", h, vanished=False)
    assert "\n" not in banner.text.plain and "PAUSED  step 12" in banner.text.plain
