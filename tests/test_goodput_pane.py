"""The goodput pane (#22 part 1): a run's ledger as the cockpit shows it.

The runs are events files the test writes in the engine's schema (engine/telemetry/ledger.py's
`ledger` event), opened in the cockpit under Textual's Pilot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cockpit.app import CockpitApp
from cockpit.goodput import cells, fold_ledger, shares
from cockpit.history import RunHistory
from cockpit.settings import Settings
from cockpit.widgets.goodput_pane import COLOURS, WIDTH, GoodputPane, interval_line
from cockpit.widgets.loss_pane import LossPane
from cockpit_helpers import until

pytestmark = pytest.mark.timeout(120)

REMEDY = "most time went to start-up: keep the engine warm (longer runs, resume rather than restart)"


def line(event_type: str, **fields) -> str:
    return json.dumps({"v": 1, "t": time.time(), "type": event_type, **fields}) + "\n"


def step_event(step: int) -> str:
    return line("step", step=step, epoch=0, batch=step, batches_per_epoch=100, loss=2.0 / step, lr=0.1,
                samples_per_s=1000.0, steps_per_s=10.0, time_data_s=0.002, time_h2d_s=0.001,
                time_compute_s=0.024, time_optim_s=0.003)


def ledger(step: int, seconds: dict[str, float], worst: str, remedy: str, price: float | None = None,
           **extra) -> str:
    """A ledger event as the engine writes it: every class, goodput = productive / total."""
    total = sum(seconds.values())
    classes = {c: {"seconds": s, "dollars": (price or 0.0) * s / 3600} for c, s in seconds.items()}
    return line("ledger", step=step, steps=step, sessions=1, total_s=total, goodput=seconds["productive"] / total,
                dollars=price * total / 3600 if price is not None else None, classes=classes,
                worst={"class": worst, "seconds": seconds[worst], "remedy": remedy}, final=False, **extra)


#: 100 s in all: goodput 70%, start-up the largest loss, then evaluation, data, other.
FIRST = {"startup": 12.0, "productive": 70.0, "data": 5.0, "communication": 0.0, "bubble": 0.0,
         "checkpoint": 0.0, "evaluation": 9.0, "paused": 0.0, "lost": 0.0, "other": 4.0}
#: 200 s later: a long checkpoint stall overtakes start-up.
SECOND = {**FIRST, "productive": 150.0, "checkpoint": 30.0, "evaluation": 14.0, "other": 9.0}


def write_run(tmp_path: Path, lines: list[str]) -> Path:
    run = tmp_path / "runs" / "synthetic"
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text(line("state", state="running", step=0) + "".join(lines))
    return run


def app_for(run: Path) -> CockpitApp:
    return CockpitApp(run.parent, run=run, user=Settings(), poll_gpu=False)


def bar_order(pane: GoodputPane) -> list[str]:
    """The classes of the bar (the pane's second line), left to right, by their colours."""
    by_colour = {v: k for k, v in COLOURS.items()}
    bar = pane.text.plain.splitlines()[1]
    start = len(pane.text.plain.splitlines()[0]) + 1
    order = []
    for span in pane.text.spans:
        if start <= span.start < start + len(bar):
            name = by_colour[str(span.style)]
            if not order or order[-1] != name:
                order.append(name)
    return order


def legend(pane: GoodputPane) -> list[str]:
    """The legend's entries: the lines between the bar and the largest loss, split at the dots."""
    lines = pane.text.plain.splitlines()
    end = next(i for i, ln in enumerate(lines) if ln.startswith("largest loss"))
    return [entry for ln in lines[2:end] for entry in ln.split(" · ")]


async def test_the_pane_shows_goodput_the_bar_largest_loss_first_and_the_remedy_and_updates_in_place(
        tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    run = write_run(tmp_path, [step_event(s) for s in range(1, 6)] + [ledger(5, FIRST, "startup", REMEDY)])
    app = app_for(run)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = app.run_screen.query_one(GoodputPane)
        await until(pilot, lambda: pane.display and "goodput" in pane.text.plain, what="the goodput pane")
        text = pane.text.plain
        lines = text.splitlines()
        assert lines[0].startswith("goodput 70.0%")
        assert lines[1] == "█" * WIDTH  # the classes fill the bar
        assert bar_order(pane) == ["productive", "startup", "evaluation", "data", "other"]
        assert legend(pane) == ["startup 12.0%", "evaluation 9.0%", "data 5.0%", "other 4.0%"]
        assert all(len(ln) <= WIDTH for ln in lines[2:4])
        assert "largest loss: startup" in text
        assert REMEDY in text.replace("\n", " ")
        assert "$" not in text and "checkpoint every" not in text  # no price, no auto interval

        # a newer ledger: the same pane, redrawn in place
        with open(run / "events.jsonl", "a") as f:
            f.write(step_event(6) + ledger(6, SECOND, "checkpoint", "checkpoint less often", price=3.6,
                                           checkpoint_interval={"every_steps": 120, "interval_s": 240.0,
                                                                "stall_s": 0.4, "stall_measured": True,
                                                                "mtbi_s": 86400.0, "source": "default (24 h)",
                                                                "step_s": 0.8, "expected_lost_s": 48.0}))
        await until(pilot, lambda: "checkpoint less often" in pane.text.plain, what="the newer ledger")
        assert app.run_screen.query_one(GoodputPane) is pane
        text = pane.text.plain
        assert text.startswith("goodput 68.2% of 3 min 40 s")  # 150 / 220
        assert bar_order(pane) == ["productive", "checkpoint", "evaluation", "startup", "other", "data"]
        assert legend(pane) == ["checkpoint 13.6%", "evaluation 6.4%", "startup 5.5%", "other 4.1%", "data 2.3%"]
        assert "largest loss: checkpoint" in text
        assert "$0.2200 in all, $0.0700 not training" in text  # 220 s at 3.6 $/h; 150 s of it productive
        assert ("checkpoint every 120 steps (auto: √(2·C·M), C 0.4 s, M 24 h): ~48 s of work lost per "
                "interruption") in text.replace("\n", " ")


async def test_a_run_without_ledger_events_has_no_goodput_pane(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    run = write_run(tmp_path, [step_event(s) for s in range(1, 6)])
    app = app_for(run)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.link is not None and app.link.history.last_step.get("step") == 5,
                    what="the steps")
        await until(pilot, lambda: app.run_screen.query_one(LossPane).drawn_at > 0, what="a draw")
        await pilot.pause(0.6)
        assert not app.run_screen.query_one(GoodputPane).display


def test_the_fold_keeps_numbers_and_clean_strings_only():
    h = RunHistory()
    h.apply({"type": "ledger", "step": 3, "total_s": "NaN", "goodput": float("inf"), "dollars": None,
             "classes": {"productive": {"seconds": 8.0}, "startup\x1b[31m": {"seconds": 2.0, "dollars": "x"},
                         "data": {"seconds": "lots"}, "bad": 7},
             "worst": {"class": "startup", "seconds": 2.0, "remedy": "warm \x1b]0;title\x07up\x07"},
             "checkpoint_interval": {"every_steps": "often"}})
    led = h.ledger
    assert "total_s" not in led and "goodput" not in led and "dollars" not in led
    assert led["classes"] == {"productive": {"seconds": 8.0}, "startup": {"seconds": 2.0}}
    assert led["worst"]["remedy"] == "warm up?"
    assert "checkpoint_interval" not in led
    assert shares(led) == [("productive", 0.8), ("startup", 0.2)]  # no total: the classes' sum
    h.apply({"type": "ledger", "step": 4, "total_s": 10.0, "queued_s": 90.0, "classes": {"productive": {"seconds": 10.0}}})
    assert h.ledger["step"] == 4 and "worst" not in h.ledger  # only the newest is kept
    assert h.ledger["queued_s"] == 90.0


def test_the_bar_cells_add_up_to_the_width_and_the_interval_line_names_c_and_m():
    parts = [("productive", 0.701), ("startup", 0.12), ("evaluation", 0.09), ("data", 0.05), ("other", 0.039)]
    assert sum(cells(parts, WIDTH)) == WIDTH
    assert cells([("productive", 0.5)], WIDTH) == [16]
    assert interval_line({"every_steps": 50, "stall_s": 1.0, "stall_measured": False, "mtbi_s": 7200.0,
                          "expected_lost_s": 20.0, "source": "spot.interruptions_per_hour = 0.5"}) == (
        "checkpoint every 50 steps (auto: √(2·C·M), C 1.0 s assumed, M 2 h): ~20 s of work lost per "
        "interruption; M: spot.interruptions_per_hour = 0.5")
    assert fold_ledger({"classes": {}})["classes"] == {}
