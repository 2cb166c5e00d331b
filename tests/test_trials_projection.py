"""A sweep's trials with train.target: the trials table's projection column, read from each trial's
run directory (the newest `projection` event), against a real SQLite Optuna study."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from cockpit.trial_projection import TrialProjections, cell  # noqa: E402
from cockpit_helpers import copy_recorded, until  # noqa: E402
from contracts.events import encode_event, make_event  # noqa: E402
from test_trials_screen import cells, cockpit, make_study, open_trials  # noqa: E402

pytestmark = pytest.mark.timeout(120)

ON_ITS_WAY = {"metric": "val_accuracy", "target": 0.98, "step": 40, "reached": False, "projected_step": 1234,
              "projected_s": 300.0, "projected_dollars": 0.12, "asymptote": 0.991,
              "message": "target val_accuracy 0.98: ~step 1,234 (1,100-1,500), 5 min, $0.12"}
REACHED = {"metric": "val_accuracy", "target": 0.98, "step": 450, "reached": True, "projected_step": 450,
           "projected_s": 0.0, "message": "target val_accuracy 0.98 reached at step 450 (0.981)"}
LEVELS_OFF = {"metric": "val_accuracy", "target": 0.98, "step": 60, "reached": False, "projected_step": None,
              "asymptote": 0.962, "message": "target val_accuracy 0.98: not reached within this run's steps: "
                                             "the curve levels off near 0.962"}


def append(run: Path, *projections: dict) -> None:
    with open(run / "events.jsonl", "a", encoding="utf-8") as f:
        for p in projections:
            f.write(encode_event(make_event("projection", t=1767268999.0, **p)))


def test_the_cell_says_where_the_target_is_in_a_few_words():
    assert cell(ON_ITS_WAY) == "~step 1,234, $0.12"
    assert cell({**ON_ITS_WAY, "projected_dollars": None}) == "~step 1,234, 5 min"
    assert cell(REACHED) == "reached @ 450"
    assert cell(LEVELS_OFF) == "levels off 0.962"
    assert cell(None) == ""


def test_only_what_was_appended_is_read_again(tmp_path: Path):
    run = copy_recorded(tmp_path)
    seen = TrialProjections()
    assert seen.newest(str(run)) is None  # a run without a target
    append(run, LEVELS_OFF, ON_ITS_WAY)
    assert seen.newest(str(run))["projected_step"] == 1234
    offset = seen.seen[str(run / "events.jsonl")][1]
    assert offset == (run / "events.jsonl").stat().st_size
    with open(run / "events.jsonl", "a") as f:
        f.write('{"v":1,"t":1767269000.0,"type":"projection","step":500,"reached":tr')  # half a line
    assert seen.newest(str(run))["projected_step"] == 1234  # the whole lines only
    with open(run / "events.jsonl", "a") as f:
        f.write('ue,"projected_step":450,"metric":"val_accuracy","target":0.98}\n')
    assert cell(seen.newest(str(run))) == "reached @ 450"
    assert seen.newest(None) is None and seen.newest(str(tmp_path / "nowhere")) is None


async def test_the_trials_table_shows_each_trials_newest_projection(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("COCKPIT_SWEEP_STORAGE", raising=False)
    best = copy_recorded(tmp_path)
    running = shutil.copytree(best, best.parent / "trial-005")
    append(best, LEVELS_OFF, ON_ITS_WAY)
    append(running, REACHED)
    make_study(best.parent, best_run=best, running_run=running)
    app = cockpit(best.parent)
    async with app.run_test(size=(140, 40)) as pilot:
        table = await open_trials(pilot)
        header = [str(c.label) for c in table.columns.values()]
        assert header[-1] == "projection"
        column = [row[-1] for row in cells(table)]
        assert column == ["", "~step 1,234, $0.12", "", "", "", "reached @ 450"]  # trials 1 and 5 have run dirs
        append(best, LEVELS_OFF)  # a newer projection: the next refresh shows it
        await until(pilot, lambda: cells(table)[1][-1] == "levels off 0.962", timeout=30, what="the newer one")
