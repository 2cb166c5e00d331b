"""`cockpit-engine compress RUN`: a tiny finished teacher, its half-width student alone, distilled
and QAT fine-tuned as real engine runs, every model's int8, one frontier table whose Pareto flags
are right, artifacts that load in an interpreter with only torch and torchao, bad input refused
with exit 2 naming the field and nothing written, and the cockpit's frontier screen."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import run_engine
from contracts.errors import BadInput
from contracts.events import EXIT_BAD_INPUT, EXIT_FINISHED
from engine.compress.frontier import dominates, mark_pareto
from engine.compress.preset import half_width
from engine.quantize.support import require_torchao

try:
    require_torchao("the compress tests")
    USABLE = None
except BadInput as exc:
    USABLE = str(exc)
needs_torchao = pytest.mark.skipif(USABLE is not None, reason=USABLE or "")

TEACHER = """
[model]
name = "mlp"
factory_args = { hidden = [32, 32] }
[data]
name = "digits"
[optim]
lr = 0.01
[train]
epochs = 1
batch_size = 32
[logging]
tensorboard = false
"""
ROWS = ["teacher", "teacher int8 (dynamic)", "student alone", "student alone int8 (dynamic)", "distilled student",
        "distilled student int8 (dynamic)", "distilled student QAT int8"]


def h(name: str, acc: float, size: int, ms: float) -> dict:
    return {"name": name, "accuracy": acc, "bytes": size, "latency_ms": ms}


def test_pareto_marks_the_points_no_other_beats_on_every_axis():
    points = mark_pareto([
        h("big", 0.99, 1000, 5.0),      # most accurate
        h("small", 0.90, 100, 4.0),     # smallest
        h("fast", 0.80, 500, 1.0),      # fastest
        h("worse", 0.89, 200, 4.5),     # beaten by small on all three
        h("tie", 0.90, 100, 4.0),       # equal to small: neither beats the other
        h("half", 0.99, 1000, 6.0),     # big is as good everywhere and faster
    ])
    assert {p["name"]: p["pareto"] for p in points} == {
        "big": True, "small": True, "fast": True, "worse": False, "tie": True, "half": False}
    assert dominates(h("a", 0.9, 1, 1), h("b", 0.9, 1, 2)) and not dominates(h("a", 0.9, 1, 1), h("b", 0.9, 1, 1))


def test_the_half_width_preset_halves_what_each_model_calls_its_width():
    assert half_width("small_cnn", {"width": 64, "norm": "group"}) == {"width": 32}
    assert half_width("small_cnn", {}) == {"width": 16}
    assert half_width("mlp", {"hidden": [256, 64]}) == {"hidden": [128, 32]}
    assert half_width("gpt", {"dim": 96, "heads": 4}) == {"dim": 48, "heads": 4}
    assert half_width("gpt", {"dim": 12, "heads": 4}) == {"dim": 6, "heads": 2}
    with pytest.raises(BadInput, match=r"--preset half-width: model.name = 'resnet18': .*--student CONFIG"):
        half_width("resnet18", {})
    with pytest.raises(BadInput, match=r"model.factory_args.width = 1: expected a whole number, 2 or more"):
        half_width("small_cnn", {"width": 1})


@pytest.fixture(scope="module")
def compressed(tmp_path_factory) -> dict:
    """A finished teacher (an MLP, one epoch), a copy of it that did not finish, and the compress
    job's output on the teacher: one seed, 8 steps each, QAT for 2, eager latency. An MLP: dynamic
    int8 and Linear QAT take seconds, where a conv net's PT2E QAT takes a minute on 2 cores (the
    conv path is test_quantize.py's and bench/RESULTS.md's compress run)."""
    if USABLE is not None:
        pytest.skip(USABLE)
    base = tmp_path_factory.mktemp("compress")
    (base / "teacher.toml").write_text(TEACHER)
    runs = base / "runs"
    done = run_engine("run", str(base / "teacher.toml"), "--runs-dir", str(runs), "--run-id", "teacher")
    assert done.returncode == EXIT_FINISHED, done.stderr[-2000:]
    teacher = runs / "teacher"
    unfinished = runs / "unfinished"
    shutil.copytree(teacher, unfinished)
    status = json.loads((unfinished / "status.json").read_text())
    (unfinished / "status.json").write_text(json.dumps({**status, "state": "stopped", "exit_code": 3}))
    job = run_engine("compress", str(teacher), "--seeds", "1", "--steps", "8", "--no-compile", "--repeats", "1",
                     "--calibration-batches", "1", timeout=900)
    assert job.returncode == 0, job.stderr[-4000:]
    return {"base": base, "runs": runs, "teacher": teacher, "unfinished": unfinished, "job": job,
            "report": json.loads((teacher / "compress" / "frontier.json").read_text())}


@needs_torchao
@pytest.mark.slow
def test_compress_writes_one_frontier_row_per_point_with_the_flags_right(compressed):
    report, teacher, job = compressed["report"], compressed["teacher"], compressed["job"]
    points = report["points"]
    assert [p["name"] for p in points] == ROWS
    assert report["seeds"] == [1] and report["length"] == {"max_steps": 8} and report["latency_measured"] == "eager"
    assert report["student"] == {"source": "preset half-width", "model": "mlp", "factory_args": {"hidden": [16, 16]}}
    for p in points:  # the flags, checked against every other point by hand
        beaten = [q["name"] for q in points if q is not p and all(
            q[k] * s >= p[k] * s for k, s in (("accuracy", 1), ("bytes", -1), ("latency_ms", -1))) and any(
            q[k] * s > p[k] * s for k, s in (("accuracy", 1), ("bytes", -1), ("latency_ms", -1)))]
        assert p["pareto"] == (not beaten), (p["name"], beaten)
        assert (teacher / p["artifact"]).is_file() and p["artifact"].endswith(".pt2")
        assert 0 <= p["accuracy"] <= 1 and p["bytes"] > 0 and p["latency_ms"] > 0
        assert p["train_s"] > 0, f"{p['name']}: no training cost from the ledger"
    assert any(p["pareto"] for p in points)
    by = {p["name"]: p for p in points}
    assert by["distilled student QAT int8"]["train_s"] > by["distilled student"]["train_s"]  # QAT adds its own
    assert by["student alone"]["bytes"] < by["teacher"]["bytes"]

    # every training a real engine run, alone and distilled with the same seed and steps
    children = teacher / "compress" / "runs"
    configs = {name: tomllib.loads((children / name / "config.toml").read_text()) for name in
               ("alone-s1", "distilled-s1", "qat-s1")}
    for name in ("alone-s1", "distilled-s1"):
        assert configs[name]["train"]["seed"] == 1 and configs[name]["train"]["max_steps"] == 8
        assert configs[name]["model"]["factory_args"]["hidden"] == [16, 16]
        assert json.loads((children / name / "status.json").read_text())["state"] == "finished"
        assert '"type":"ledger"' in (children / name / "events.jsonl").read_text()
    assert configs["distilled-s1"]["distill"]["enabled"] is True
    assert Path(configs["distilled-s1"]["distill"]["teacher"]) == teacher.resolve()
    assert configs["alone-s1"]["distill"]["enabled"] is False
    assert configs["qat-s1"]["quantize"]["qat"] is True
    assert Path(configs["qat-s1"]["model"]["weights_path"]) == (children / "distilled-s1").resolve()

    # the progress: a line per stage on stderr, the same in progress.jsonl
    assert "compress: 1/7 student alone seed 1" in job.stderr
    assert "compress: 3/7 QAT fine-tune of the distilled student seed 1" in job.stderr
    records = [json.loads(line) for line in (teacher / "compress" / "progress.jsonl").read_text().splitlines()]
    assert records[-1]["state"] == "finished" and {r["stage"] for r in records} >= set(range(1, 8))
    assert any(r.get("step") == 8 and r.get("total_steps") == 8 for r in records)
    table = (teacher / "compress" / "frontier.md").read_text()
    assert all(f"| {name} |" in table for name in ROWS) and "| yes |" in table
    assert "| distilled student |" in job.stdout  # the table, printed


LOADS = """
import sys, torch, torchao
found = []
for path in sys.argv[1:]:
    with torch.no_grad():
        out = torch.export.load(path).module()(torch.rand(3, 1, 8, 8))
    assert out.shape == (3, 10), out.shape
    found.append(path)
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("engine", "cockpit", "contracts"))
assert not ours, ours
print(len(found), "loaded")
"""


@needs_torchao
@pytest.mark.slow
def test_every_artifact_loads_in_an_interpreter_with_only_torch_and_torchao(compressed, tmp_path):
    paths = [str(compressed["teacher"] / p["artifact"]) for p in compressed["report"]["points"]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-I", "-c", LOADS, *paths], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(paths)} loaded" in done.stdout


def refused(*args: str) -> subprocess.CompletedProcess:
    done = run_engine("compress", *args)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr[-2000:]
    return done


@needs_torchao
def test_bad_input_exits_2_naming_the_field_with_nothing_written(compressed, tmp_path):
    runs, teacher = compressed["runs"], compressed["teacher"]
    done = refused(str(compressed["unfinished"]))
    assert "RUN" in done.stderr and "state 'stopped'" in done.stderr and "finished" in done.stderr
    assert not (compressed["unfinished"] / "compress").exists()

    bad = tmp_path / "student.toml"
    bad.write_text(TEACHER.replace("epochs = 1", "epochs = 0"))
    resnet = runs / "resnet"
    shutil.copytree(compressed["unfinished"], resnet)
    (resnet / "status.json").write_text(json.dumps({"state": "finished", "exit_code": 0}))
    (resnet / "config.toml").write_text((resnet / "config.toml").read_text().replace('"mlp"', '"resnet18"'))
    other_data = tmp_path / "other.toml"
    other_data.write_text(TEACHER.replace('name = "digits"', 'name = "synthetic"'))
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    done = refused(str(teacher), "--student", str(bad), "--runs-dir", str(tmp_path / "students"))
    assert "--student" in done.stderr and "train.epochs" in done.stderr
    done = refused(str(teacher), "--student", str(tmp_path / "missing.toml"), "--runs-dir", str(tmp_path / "s"))
    assert "--student" in done.stderr and "no such config file" in done.stderr
    done = refused(str(teacher), "--student", str(other_data), "--runs-dir", str(tmp_path / "s"))
    assert "--student" in done.stderr and "differs from the teacher's 'digits'" in done.stderr
    done = refused(str(resnet), "--preset", "half-width")
    assert "model.name = 'resnet18'" in done.stderr and "--preset half-width" in done.stderr
    done = refused(str(teacher), "--seeds", "0", "--runs-dir", str(tmp_path / "s"))
    assert "--seeds 0" in done.stderr
    done = refused(str(teacher))  # its students are there already
    assert "exist from an earlier compress" in done.stderr
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before
    assert not (tmp_path / "students").exists() and not (tmp_path / "s").exists()


@needs_torchao
async def test_the_cockpit_draws_the_frontier_and_starts_compress_from_the_runs_list(compressed, monkeypatch):
    from cockpit.app import CockpitApp
    from cockpit.screens.frontier_screen import FrontierScreen
    from cockpit.settings import Settings
    from cockpit.widgets.frontier_chart import FrontierChart
    from cockpit.widgets.runs_list import RunsList
    from cockpit_helpers import notes, until

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    teacher, points = compressed["teacher"], compressed["report"]["points"]
    app = CockpitApp(compressed["runs"], user=Settings(), poll_gpu=False)
    async with app.run_test(size=(140, 45)) as pilot:
        table = app.screen.query_one(RunsList)
        while not table.row_count:
            await pilot.pause(0.05)
        table.move_cursor(row=table.get_row_index(str(teacher)))
        await pilot.press("F")
        await until(pilot, lambda: isinstance(app.screen, FrontierScreen), what="the frontier screen")
        chart = app.screen.query_one(FrontierChart)
        await until(pilot, lambda: len(chart.drawn) == len(points), what="the points drawn")
        assert [(d[2], d[3]) for d in chart.drawn] == [(p["name"], p["pareto"]) for p in points]
        assert [round(d[0], 3) for d in chart.drawn] == [round(p["bytes"] / 1024, 3) for p in points]
        assert [round(d[1], 3) for d in chart.drawn] == [round(100 * p["accuracy"], 3) for p in points]
        text = str(app.screen.query_one("#frontier-table").render())
        assert all(p["name"] in text for p in points)
        await pilot.press("x")
        assert [d[0] for d in chart.drawn] == [p["latency_ms"] for p in points]
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, FrontierScreen), what="back to the list")

        table.move_cursor(row=table.get_row_index(str(compressed["unfinished"])))
        await pilot.press("C")  # not finished: not offered
        await until(pilot, lambda: any("only a finished run" in n for n in notes(app)), what="the refusal")
        table.move_cursor(row=table.get_row_index(str(teacher)))
        await pilot.press("C")  # its students exist already: the command refuses, exit 2, named
        await until(pilot, lambda: any("compress refused (exit 2)" in n for n in notes(app)), timeout=120,
                    what="the command's refusal")
        assert any("exist from an earlier compress" in n for n in notes(app))
