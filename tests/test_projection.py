"""train.target: the learning-curve fit (engine/telemetry/projection.py) on synthetic curves with
known parameters, the `projection` sink fed events, a real run that finishes at its target, and
bad targets refused with exit 2."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import events_of, only_run, run_engine
from engine.telemetry.projection import Projection, fit, project

STEPS = [100 * i for i in range(1, 11)]  # ten evaluations, 100 steps apart


def law(a: float, b: float, c: float, steps=STEPS) -> list[float]:
    return [a - b * (s / 100) ** (-c) for s in steps]


def test_exact_curve_recovers_its_parameters_and_the_targets_step():
    curve = fit(STEPS, law(0.97, 0.5, 0.7))
    # within 0.1% of each parameter (the profile over c is a grid refined twice)
    assert curve.a == pytest.approx(0.97, rel=1e-3)
    assert curve.b == pytest.approx(0.5, rel=1e-3)
    assert curve.c == pytest.approx(0.7, rel=1e-3)
    assert max(abs(r) for r in curve.residuals) < 1e-4
    truth = 100 * (0.5 / (0.97 - 0.93)) ** (1 / 0.7)  # where 0.97 - 0.5 (s/100)^-0.7 = 0.93: step 3,690
    p = project(list(zip(STEPS, law(0.97, 0.5, 0.7))), "val_accuracy", 0.93, 5000, s_per_step=0.5,
                price_per_hour=3.6)
    assert p["reached"] is False
    assert p["projected_step"] == pytest.approx(truth, rel=0.01)
    # time and dollars from now (step 1,000) at the measured seconds per step and the price
    assert p["projected_s"] == pytest.approx((p["projected_step"] - 1000) * 0.5, rel=0.01)
    assert p["projected_dollars"] == pytest.approx(p["projected_s"] / 3600 * 3.6, rel=1e-3)
    assert p["interval"]["low"] <= p["projected_step"] <= p["interval"]["high"]
    assert p["asymptote"] == pytest.approx(0.97, abs=1e-3)
    assert p["message"].startswith("target val_accuracy 0.93: ~step 3,6")


def test_a_falling_loss_curve_is_fitted_downwards():
    losses = [2.0 + 3.0 * (s / 100) ** -0.5 for s in STEPS]  # reaches 2.3 at step 10,000
    p = project(list(zip(STEPS, losses)), "val_loss", 2.3, 20000, s_per_step=0.1)
    assert p["projected_step"] == pytest.approx(10000, rel=0.01)
    assert p["asymptote"] == pytest.approx(2.0, abs=1e-3)
    assert p["projected_dollars"] is None  # no price known


def test_noisy_curve_projection_within_ten_percent_and_inside_its_interval():
    rng = np.random.default_rng(7)
    noisy = [v + e for v, e in zip(law(0.97, 0.5, 0.7), rng.normal(0, 0.002, len(STEPS)))]
    p = project(list(zip(STEPS, noisy)), "val_accuracy", 0.93, 5000)
    truth = 100 * (0.5 / 0.04) ** (1 / 0.7)
    assert p["projected_step"] == pytest.approx(truth, rel=0.10)
    assert p["interval"]["low"] <= truth and (p["interval"]["high"] is None or p["interval"]["high"] >= truth * 0.9)
    assert len(p["residuals"]) == len(STEPS) and max(abs(r) for r in p["residuals"]) < 0.01


def test_one_wild_evaluation_barely_moves_the_robust_fit():
    values = law(0.97, 0.5, 0.7)
    values[6] -= 0.08  # one evaluation far off the curve
    curve = fit(STEPS, values)
    assert curve.a == pytest.approx(0.97, abs=0.005)
    assert sorted(abs(r) for r in curve.residuals)[-1] > 0.05  # the outlier keeps its residual


def test_a_curve_that_levels_off_below_the_target_is_not_reached():
    values = law(0.962, 0.3, 1.0)
    p = project(list(zip(STEPS, values)), "val_accuracy", 0.98, 5000, s_per_step=0.5)
    assert p["reached"] is False and p["projected_step"] is None and p["projected_s"] is None
    assert p["asymptote"] == pytest.approx(0.962, abs=1e-3)
    assert p["message"] == ("target val_accuracy 0.98: not reached within this run's steps: "
                            "the curve levels off near 0.962")


def test_beyond_the_runs_steps_and_too_few_points_and_reached():
    p = project(list(zip(STEPS, law(0.97, 0.5, 0.7))), "val_accuracy", 0.93, 2000)
    assert p["projected_step"] > 2000 and "not reached within this run's steps (2,000)" in p["message"]
    two = project([(100, 0.5), (200, 0.7)], "val_accuracy", 0.9, 2000)
    assert two["projected_step"] is None and "after 4 evaluations (have 2)" in two["message"]
    done = project([(100, 0.5), (200, 0.91), (300, 0.89)], "val_accuracy", 0.9, 2000, price_per_hour=1.0)
    assert done["reached"] is True and done["projected_step"] == 200 and done["projected_s"] == 0.0
    three = project([(100, 0.5), (200, 0.7), (300, 0.8)], "val_accuracy", 0.9, 2000)
    assert three["projected_step"] is None and "after 4 evaluations (have 3)" in three["message"]
    assert fit([100, 200, 300], [0.5, 0.7, 0.8]) is None


def test_the_sink_answers_each_evaluation_with_a_projection():
    out: list[tuple[str, dict]] = []
    sink = Projection("val_accuracy", 0.93, 5000, lambda type_, **f: out.append((type_, f)))
    sink.emit({"type": "cost", "t": 0.0, "price_per_hour": 7.2})
    t = 1000.0
    for s, v in zip(STEPS, law(0.97, 0.5, 0.7)):
        for k in range(s - 100 + 10, s + 1, 10):  # step events, 0.2 s a step
            sink.emit({"type": "step", "t": t + k * 0.2, "step": k})
        sink.emit({"type": "eval", "t": t + s * 0.2, "step": s, "epoch": s // 100 - 1,
                   "metrics": {"accuracy": v, "loss": 1 - v}})
    assert [ty for ty, _ in out] == ["projection"] * len(STEPS)
    first, last = out[1][1], out[-1][1]
    assert first["projected_step"] is None and first["points"] == 2
    assert last["s_per_step"] == pytest.approx(0.2, rel=1e-6)
    assert last["projected_s"] == pytest.approx((last["projected_step"] - 1000) * 0.2, rel=1e-3)
    assert last["projected_dollars"] == pytest.approx(last["projected_s"] / 3600 * 7.2, rel=1e-3)
    # a resume at step 500 forgets the evaluations after it
    sink.emit({"type": "resume", "t": t + 999, "step": 500})
    assert [s for s, _ in sink.history] == [100, 200, 300, 400, 500]


def test_a_run_finishes_at_the_evaluation_that_reaches_its_target(tiny_config, tmp_path):
    runs = tmp_path / "runs"
    result = run_engine("run", str(tiny_config), "--runs-dir", str(runs), "--set", "train.epochs=6",
                        "--set", 'train.target={metric="val_accuracy",value=0.8}',
                        "--set", "train.stop_at_target=true", "--set", "checkpoint.every_steps=1000",
                        timeout=400)
    assert result.returncode == 0, result.stderr
    events = events_of(only_run(runs))
    evals = [e for e in events if e["type"] == "eval"]
    reached = [e for e in evals if e["metrics"]["accuracy"] >= 0.8]
    assert reached and reached[0] is evals[-1], "the run stops at the first evaluation that reaches it"
    final = [e for e in events if e["type"] == "state"][-1]
    total = 6 * math.ceil(1437 / 32)  # digits: 1,437 training images, 45 batches an epoch
    assert final["state"] == "finished" and final["exit_code"] == 0 and final["step"] == evals[-1]["step"] < total
    assert final["reason"] == (f"target reached: val_accuracy {evals[-1]['metrics']['accuracy']:.4g} >= 0.8 "
                               f"at step {evals[-1]['step']}")
    projections = [e for e in events if e["type"] == "projection"]
    assert len(projections) == len(evals)
    assert projections[-1]["reached"] is True and projections[-1]["projected_step"] == evals[-1]["step"]
    assert all(p["reached"] is False for p in projections[:-1])
    assert not any(e["type"] == "state" and e["state"] == "stopping" for e in events)
    assert [e for e in events if e["type"] == "checkpoint"][-1]["step"] == final["step"]


@pytest.mark.parametrize("sets, expect", [
    (['train.target={metric="val_acc",value=0.9}'], ["train.target.metric = 'val_acc'", "did you mean 'val_accuracy'"]),
    (["train.target.value=1.5"], ["train.target.value = 1.5", "0 < value <= 1"]),
    (['train.target={metric="val_loss",value=-1.0}'], ["train.target.value = -1.0", "above 0"]),
    (["train.stop_at_target=true"], ["train.stop_at_target = true needs train.target"]),
    (['train.target={metric="val_perplexity",value=3.0}'], ["train.target.metric = 'val_perplexity'",
                                                            "data.name = 'digits'"]),
])
def test_bad_targets_exit_2_naming_the_field(tiny_config, tmp_path, sets, expect):
    runs = tmp_path / "runs"
    args = ["run", str(tiny_config), "--runs-dir", str(runs)]
    for s in sets:
        args += ["--set", s]
    result = run_engine(*args)
    assert result.returncode == 2, result.stderr
    for words in expect:
        assert words in result.stderr
    assert not runs.exists() or not any(runs.iterdir())


def test_the_cockpit_folds_projections_and_shows_them_beside_the_eta():
    from cockpit.history import RunHistory
    from cockpit.widgets.throughput_pane import fmt_projection

    h = RunHistory()
    h.apply({"type": "projection", "metric": "val_accuracy", "target": 0.98, "step": 500, "reached": False,
             "projected_step": 4100, "interval": {"low": 3800, "high": 4600}, "projected_s": 720.0,
             "projected_dollars": 0.41, "message": "target val_accuracy 0.98: ~step 4,100 (3,800-4,600), 12 min, $0.41"})
    assert fmt_projection(h.projection) == "target val_accuracy 0.98: ~step 4,100 (3,800-4,600), 12 min, $0.41"
    words = "target val_accuracy 0.98: not reached within this run's steps: the curve levels off near 0.962"
    h.apply({"type": "projection", "metric": "val_accuracy", "target": 0.98, "step": 600, "reached": False,
             "projected_step": None, "interval": None, "message": words + "\x1b[31m"})
    assert fmt_projection(h.projection) == words  # escapes stripped
    h.apply({"type": "resume", "step": 550, "checkpoint": "step-00000550.pt"})
    assert h.projection == {}  # made from an evaluation the resume superseded
    h.apply({"type": "projection", "metric": "val_accuracy", "target": 0.98, "step": 700, "reached": True,
             "projected_step": 700, "message": "target val_accuracy 0.98 reached at step 700 (0.981)"})
    assert fmt_projection(h.projection) == "target val_accuracy 0.98: reached at step 700"
