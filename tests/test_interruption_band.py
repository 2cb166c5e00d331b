"""checkpoint.every_steps = "auto" with the interruption band of AWS's Spot Instance Advisor:
given in the config, or looked up for the instance the metadata service (tests/imds_server.py on
127.0.0.1) describes, in a downloaded spot-advisor-data.json (written here in the advisor's shape)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import TINY, engine_env, events_of, only_run, run_engine
from engine.checkpoint.interval import AutoInterval, mtbi_for, mtbi_of_band, young_daly
from engine.config.spot_advisor import band_of

ADVISOR = {
    "ranges": [{"index": 0, "label": "<5%", "dots": 0, "max": 5}, {"index": 1, "label": "5-10%", "dots": 1, "max": 11},
               {"index": 2, "label": "10-15%", "dots": 2, "max": 16}, {"index": 3, "label": "15-20%", "dots": 3, "max": 22},
               {"index": 4, "label": ">20%", "dots": 4, "max": 100}],
    "spot_advisor": {"us-east-1": {"Linux": {"g5.xlarge": {"s": 62, "r": 3}, "p4d.24xlarge": {"s": 60, "r": 0}},
                                   "Windows": {"g5.xlarge": {"s": 50, "r": 0}}}},
}


def test_a_band_gives_the_mean_time_between_interruptions_and_the_interval():
    month_s = 730 * 3600
    assert mtbi_of_band("<5%") == pytest.approx(month_s / -math.log(0.95))       # ~14,000 h
    assert mtbi_of_band(">20%") == pytest.approx(month_s / -math.log(0.5))       # ~1,050 h
    assert [mtbi_of_band(b) for b in ("<5%", "5-10%", "10-15%", "15-20%", ">20%")] == sorted(
        (mtbi_of_band(b) for b in ("<5%", "5-10%", "10-15%", "15-20%", ">20%")), reverse=True)
    mtbi, why = mtbi_for(None, spot=True, band="15-20%")
    assert mtbi == mtbi_of_band("15-20%") and "spot.interruption_band: interrupted 15-20% a month" in why
    assert mtbi_for(2.0, spot=True, band="<5%")[0] == 1800.0  # an explicit rate wins
    auto = AutoInterval(mtbi, why)
    auto.stalled(4.0)
    assert auto.update(2.0)["interval_s"] == pytest.approx(young_daly(4.0, mtbi))
    assert band_of(ADVISOR, "us-east-1", "g5.xlarge") == "15-20%"
    assert band_of(ADVISOR, "us-east-1", "g5.xlarge", "Windows") == "<5%"
    assert band_of(ADVISOR, "eu-west-1", "g5.xlarge") is None and band_of(ADVISOR, "us-east-1", "g6.xlarge") is None


def test_a_spot_run_takes_its_band_from_the_advisor_file_once_the_metadata_service_answers(tmp_path: Path):
    from imds_server import ImdsServer

    advisor = tmp_path / "spot-advisor-data.json"
    advisor.write_text(json.dumps(ADVISOR))
    with ImdsServer(lifecycle="spot", instance_type="g5.xlarge", zone="us-east-1b") as server:
        config = TINY.replace("every_steps = 5\nkeep_last = 3", 'every_steps = "auto"\nkeep_last = 3').replace(
            "epochs = 3", "epochs = 1")
        config += f'[spot]\nendpoint = "{server.url}"\nadvisor_data = "{advisor}"\n'
        (tmp_path / "tiny.toml").write_text(config)
        env = engine_env()
        env["AWS_EC2_METADATA_DISABLED"] = "false"
        done = run_engine("run", str(tmp_path / "tiny.toml"), "--runs-dir", str(tmp_path / "runs"), env=env)
    assert done.returncode == 0, done.stderr
    intervals = [e for e in events_of(only_run(tmp_path / "runs")) if e["type"] == "checkpoint_interval"]
    assert intervals, "an auto interval is announced"
    last = intervals[-1]
    assert last["mtbi_s"] == pytest.approx(mtbi_of_band("15-20%"))
    assert last["source"].startswith("spot.advisor_data for g5.xlarge in us-east-1: interrupted 15-20% a month")
    assert last["interval_s"] == pytest.approx(young_daly(last["stall_s"], last["mtbi_s"]))


@pytest.mark.parametrize("spot, expect", [
    ('interruption_band = "3%"', ["spot.interruption_band", "'<5%'"]),
    ('advisor_data = "/nonexistent/spot-advisor-data.json"', ["spot.advisor_data = '/nonexistent/spot-advisor-data.json'",
                                                            "cannot read it"]),
    ('advisor_data = "{notjson}"', ["spot.advisor_data", "not JSON"]),
])
def test_a_bad_band_or_advisor_file_exits_2_naming_the_field(tmp_path: Path, spot: str, expect: list[str]):
    (tmp_path / "notjson.json").write_text("<html>")
    (tmp_path / "bad.toml").write_text(TINY + "[spot]\n" + spot.replace("{notjson}", str(tmp_path / "notjson.json")) + "\n")
    done = run_engine("run", str(tmp_path / "bad.toml"), "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 2, done.stderr
    for text in expect:
        assert text in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
