"""The step-time diagnosis and the article's low-utilization warning (pure logic)."""

from __future__ import annotations

import pytest

from cockpit.diagnosis import LOW_UTIL_SECONDS, LowUtilWatch, diagnose, low_util_advice, split


def step(data: float, compute: float, optim: float = 0.0, comm: float = 0.0) -> dict:
    return {"type": "step", "time_data_s": data, "time_compute_s": compute,
            "time_optim_s": optim, "time_comm_s": comm}


def test_a_step_that_mostly_waits_for_data_is_input_bound():
    text = diagnose(split(step(0.062, 0.03, 0.008)))
    assert text == "input-bound: 62% of each step waits for data"


def test_a_step_that_mostly_computes_is_compute_bound():
    assert diagnose(split(step(0.001, 0.08, 0.019))).startswith("compute-bound: 99%")


def test_no_timings_say_so():
    assert diagnose(split({"type": "step"})) == "no step timings yet"


def test_low_utilization_warns_once_after_thirty_seconds_of_training():
    watch = LowUtilWatch()
    fired = [watch.update(t, util=12.0, training=True) for t in range(0, 61)]
    assert fired.index(True) == LOW_UTIL_SECONDS and fired.count(True) == 1


def test_utilization_recovering_or_a_pause_resets_the_clock():
    watch = LowUtilWatch()
    for t in range(0, 20):
        assert not watch.update(t, util=10.0, training=True)
    assert not watch.update(20, util=95.0, training=True)      # recovered
    for t in range(21, 45):
        assert not watch.update(t, util=10.0, training=True)   # 24 s low: not yet
    assert not watch.update(45, util=10.0, training=False)     # paused: no warning
    assert not any(watch.update(t, util=None, training=True) for t in range(46, 100))  # no GPU


def test_advice_names_the_cause_and_the_config_field():
    assert "data.num_workers" in low_util_advice(split(step(0.5, 0.1)), 0.6)
    assert "data.pin_memory" in low_util_advice(split(step(0.5, 0.1)), 0.6)
    assert "train.batch_size" in low_util_advice(split(step(0.0001, 0.005)), 0.005)


def test_a_pipelines_idle_stages_are_their_own_part_of_the_step():
    s = split({"time_data_s": 0.0, "time_compute_s": 0.5, "time_optim_s": 0.1, "time_comm_s": 0.0,
               "time_bubble_s": 0.4})
    assert s.bubble == pytest.approx(0.4) and s.compute == pytest.approx(0.5)
    assert diagnose(s).startswith("bubble-bound: 40%") and "distributed.microbatches" in diagnose(s)
    assert split({"time_compute_s": 1.0}).bubble == 0.0  # runs without a pipeline
