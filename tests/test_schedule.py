"""Learning-rate schedules: pure functions of (step, total steps, peak lr)."""

from __future__ import annotations

import pytest

from engine.config.schema import ScheduleConfig
from engine.train.schedule import (cosine, highest_ahead, lr_at, one_cycle, step_decay, warmup_factor,
                                   warmup_warning)

approx = pytest.approx


def test_warmup_is_a_linear_ramp_reaching_the_peak_on_its_last_step():
    w = 8
    factors = [warmup_factor(s, w) for s in range(w)]
    assert factors[0] == approx(1 / w) and factors[0] > 0, "the first step must already move"
    assert factors[-1] == approx(1.0)
    gaps = [b - a for a, b in zip(factors, factors[1:])]
    assert gaps == approx([1 / w] * (w - 1)), "equal increments: linear"
    assert [warmup_factor(s, w) for s in (w, w + 1, 10_000)] == [1.0, 1.0, 1.0]


def test_no_warmup_means_full_rate_from_the_first_step():
    assert warmup_factor(0, 0) == 1.0
    assert warmup_factor(5, 0) == 1.0


def test_cosine_peaks_right_after_warmup_and_reaches_min_ratio_at_the_end():
    total, w, floor = 100, 10, 0.05
    assert cosine(w - 1, total, w, floor) == approx(1.0)
    assert cosine(w, total, w, floor) == approx(1.0)
    assert cosine(w + (total - w) // 2, total, w, floor) == approx(floor + (1 - floor) / 2)
    assert cosine(total, total, w, floor) == approx(floor)
    assert cosine(total + 50, total, w, floor) == approx(floor), "past the end the rate stays at the floor"
    # During warm-up the cosine schedule is the linear ramp.
    assert [cosine(s, total, w, floor) for s in range(w)] == approx([warmup_factor(s, w) for s in range(w)])


def test_cosine_never_rises_after_warmup_and_never_stalls_before_the_end():
    total, w = 50, 5
    after = [cosine(s, total, w, 0.0) for s in range(w, total + 1)]
    assert all(b <= a for a, b in zip(after, after[1:]))
    assert all(cosine(s, total, w, 0.0) > 0 for s in range(total)), "every trained step has lr > 0"
    assert cosine(total, total, w, 0.0) == approx(0.0, abs=1e-12)


def test_step_decay_multiplies_by_gamma_every_step_size_steps():
    assert [step_decay(s, 0, 10, 0.5) for s in (0, 9, 10, 19, 20, 35)] == approx([1, 1, 0.5, 0.5, 0.25, 0.125])
    decayed = [step_decay(s, 0, 7, 0.3) for s in range(60)]
    assert all(b <= a for a, b in zip(decayed, decayed[1:]))
    # Warm-up ramps first; afterwards the decay applies on its own.
    assert step_decay(0, 4, 100, 0.1) == approx(0.25)
    assert step_decay(3, 4, 100, 0.1) == approx(1.0)
    assert step_decay(150, 4, 100, 0.1) == approx(0.1)


def test_one_cycle_starts_low_peaks_at_pct_start_and_ends_far_below_the_start():
    total, pct, div, final = 200, 0.3, 25.0, 1e4
    peak = int(pct * total)
    assert one_cycle(0, total, pct, div, final) == approx(1 / div)
    assert one_cycle(peak, total, pct, div, final) == approx(1.0)
    assert one_cycle(total, total, pct, div, final) == approx(1 / (div * final))
    rise = [one_cycle(s, total, pct, div, final) for s in range(peak + 1)]
    fall = [one_cycle(s, total, pct, div, final) for s in range(peak, total + 1)]
    assert all(b > a for a, b in zip(rise, rise[1:])), "strictly rising up to the peak"
    assert all(b < a for a, b in zip(fall, fall[1:])), "strictly falling after it"
    assert max(rise + fall) == approx(1.0)


def test_one_cycle_with_very_few_steps_stays_well_defined():
    values = [one_cycle(s, 2, 0.3, 25.0, 1e4) for s in range(3)]
    assert values[0] == approx(1 / 25) and values[-1] == approx(1 / 25e4)
    assert all(0 < v <= 1 for v in values)


@pytest.mark.parametrize("cfg, expected", [
    (ScheduleConfig(name="constant"), lambda s, t: 1.0),
    (ScheduleConfig(name="constant", warmup_steps=20), lambda s, t: warmup_factor(s, 20)),
    (ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1), lambda s, t: cosine(s, t, 10, 0.1)),
    (ScheduleConfig(name="step", step_size=30, gamma=0.5, warmup_steps=5), lambda s, t: step_decay(s, 5, 30, 0.5)),
    (ScheduleConfig(name="onecycle", pct_start=0.25, div_factor=10, final_div_factor=100),
     lambda s, t: one_cycle(s, t, 0.25, 10, 100)),
], ids=["constant", "constant-warmup", "cosine", "step", "onecycle"])
def test_lr_at_is_the_peak_times_the_named_schedule(cfg, expected):
    total, peak = 120, 0.04
    lrs = [lr_at(s, total, peak, cfg) for s in range(total + 1)]
    assert lrs == approx([peak * expected(s, total) for s in range(total + 1)])
    assert all(0 < lr <= peak * (1 + 1e-12) for lr in lrs[:total]), "never above the peak, never zero while training"
    # Changing the peak (what the `set` command does) rescales the whole curve.
    assert [lr_at(s, total, 3 * peak, cfg) for s in range(total)] == approx([3 * lr for lr in lrs[:total]])


def test_constant_schedule_holds_the_configured_rate():
    cfg = ScheduleConfig(name="constant")
    assert {lr_at(s, 1000, 0.1, cfg) for s in range(0, 1000, 37)} == {0.1}


def test_default_schedule_is_cosine_from_the_peak_to_zero():
    cfg = ScheduleConfig()
    assert cfg.name == "cosine"
    assert lr_at(0, 100, 0.01, cfg) == approx(0.01)
    assert lr_at(100, 100, 0.01, cfg) == approx(0.0, abs=1e-15)


SCHEDULES = [
    ScheduleConfig(name="cosine", warmup_steps=100),
    ScheduleConfig(name="cosine", warmup_steps=2000),  # warm-up longer than the run
    ScheduleConfig(name="constant", warmup_steps=300),
    ScheduleConfig(name="step", warmup_steps=500, step_size=100, gamma=0.5),  # decays inside warm-up
    ScheduleConfig(name="step", warmup_steps=0, step_size=250, gamma=0.1),
    ScheduleConfig(name="onecycle"),
    ScheduleConfig(name="onecycle", pct_start=0.9),
]


@pytest.mark.parametrize("cfg", SCHEDULES, ids=lambda c: f"{c.name}-w{c.warmup_steps}")
def test_highest_ahead_never_underestimates_what_the_schedule_reaches(cfg):
    """What bounds the `set` command: the highest factor from a step to the end of the run,
    checked against every step ahead (exact except for step decays inside a warm-up)."""
    total = 1000
    factors = [lr_at(s, total, 1.0, cfg) for s in range(total)]
    for step in range(0, total, 7):
        truth = max(factors[step:])
        bound = highest_ahead(step, total, cfg)
        assert bound >= truth - 1e-12, f"step {step}: {bound} < {truth}"
        if cfg.name != "step":
            assert bound == pytest.approx(truth, rel=1e-12), f"step {step}"


def test_a_warm_up_as_long_as_the_run_is_not_warned_about():
    assert warmup_warning(ScheduleConfig(warmup_steps=240), 240) is None
    assert "longer than the run's 240 steps" in warmup_warning(ScheduleConfig(warmup_steps=241), 240)
