"""Knowledge distillation: the loss by hand, a frozen teacher, exact resume, and bad teachers
refused (exit 2, nothing written)."""

from __future__ import annotations

import hashlib
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from conftest import events_of, only_run, run_engine, run_engines, start_engine, status_of, wait_for
from engine.checkpoint.store import load
from engine.config.loading import validate
from engine.model.teacher import Teacher, weights_sha256
from engine.model.zoo import SmallCNN
from contracts.events import EXIT_BAD_INPUT, EXIT_FINISHED, EXIT_STOPPED, read_events, replay
from engine.run import session
from engine.run.rundir import RunDir
from engine.train.task import Distillation, kd_loss
from engine.train.trainer import Trainer

# ---- the loss -----------------------------------------------------------------------------


def test_kd_loss_matches_a_hand_computation():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher = torch.tensor([[3.0, -1.0, 0.0], [1.0, 1.0, -2.0]])
    t = 2.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = [math.exp(v / t) for v in s_row]
        zt = [math.exp(v / t) for v in t_row]
        ps, pt = [v / sum(zs) for v in zs], [v / sum(zt) for v in zt]
        expected += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps))
    expected = expected / 2 * t * t  # batchmean: per sample, then T^2
    assert kd_loss(student, teacher, t).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-7)


def test_the_distillation_loss_mixes_kd_and_ce_by_alpha_in_fp32():
    student = torch.nn.Linear(4, 3)
    teacher = torch.nn.Linear(4, 3).requires_grad_(False).eval()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    task = Distillation(teacher, temperature=3.0, alpha=0.25)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = task(student, (x, y))
    assert set(out.parts) == {"kd", "ce"} and out.parts["kd"].dtype == torch.float32
    assert out.loss.item() == pytest.approx(0.25 * out.parts["kd"].item() + 0.75 * out.parts["ce"].item(), rel=1e-6)
    out.loss.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None


# ---- a frozen teacher, in process ------------------------------------------------------

def test_the_teacher_gets_no_gradient_and_its_batchnorm_statistics_do_not_move(tmp_path: Path):
    distilled_run(tmp_path)


def distilled_run(tmp_path: Path) -> RunDir:
    """A short distilled run in this process, checked: a frozen teacher, parts kd and ce."""
    cfg = validate({
        "model": {"name": "small_cnn", "factory_args": {"width": 4}},
        "data": {"name": "synthetic", "synthetic_samples": 64, "synthetic_shape": [3, 8, 8]},
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu"},
        "distill": {"enabled": True, "teacher": "unused-here"},
        "logging": {"tensorboard": False},
    })
    spec, model = session.prepare(cfg)
    net = SmallCNN(10, 3, width=8, norm="batch").requires_grad_(False).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    tele = session.telemetry_for(cfg, run, "none", None)
    trainer = Trainer(cfg, spec, model, run, tele, teacher=Teacher(net, "in-memory", weights_sha256(net)))
    assert not any(p is q for p in trainer.optimizer.param_groups[0]["params"] for q in net.parameters())
    result = trainer.train()
    tele.close()
    assert result.exit_code == EXIT_FINISHED and result.steps == 4
    assert not net.training and all(p.grad is None for p in net.parameters())
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), f"the teacher's {key} changed"
    events = list(read_events(run.events.read_text().splitlines()))
    announced = [e for e in events if e["type"] == "distill"]
    assert len(announced) == 1 and set(announced[0]["metrics"]) == {"loss", "accuracy"}
    steps = [e for e in events if e["type"] == "step"]
    assert steps and all(set(e["losses"]) == {"kd", "ce"} for e in steps)
    state = load(sorted(run.checkpoints.glob("step-*.pt"))[-1])
    assert state["teacher"] == {"source": "in-memory", "sha256": weights_sha256(net)}
    return run


async def test_the_cockpit_shows_the_teacher_beside_the_student(tmp_path: Path):
    from cockpit.app import CockpitApp
    from cockpit.settings import Settings
    from cockpit.widgets.distill_pane import DistillPane

    run = distilled_run(tmp_path).path
    announced = [e for e in read_events(run.joinpath("events.jsonl").read_text().splitlines()) if e["type"] == "distill"][0]
    student = [e for e in read_events(run.joinpath("events.jsonl").read_text().splitlines()) if e["type"] == "eval"][-1]
    app = CockpitApp(run.parent, run=run, user=Settings(), poll_gpu=False)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.screen.query_one(DistillPane)
        while not pane.display:
            await pilot.pause(0.05)
        text = pane.text.plain
        assert "teacher in-memory" in text and "T 3.0  alpha 0.5" in text
        assert f"teacher {announced['metrics']['accuracy']:.1%}" in text
        assert f"student {student['metrics']['accuracy']:.1%}" in text
        assert "loss kd " in text and " ce " in text


# ---- through the command line ------------------------------------------------------------

TEACHER = """
[model]
name = "small_cnn"
factory_args = { width = 16 }
[train]
epochs = 2
batch_size = 64
[logging]
tensorboard = false
"""

STUDENT = """
[model]
name = "small_cnn"
factory_args = { width = 4 }
[data]
num_workers = 2
[data.augment]
random_crop_padding = 1
horizontal_flip = true
[train]
epochs = 3
batch_size = 32
[checkpoint]
every_steps = 5
[distill]
enabled = true
teacher = "{teacher}"
temperature = 4.0
alpha = 0.7
[logging]
every_steps = 1
max_step_events_per_s = 100000
status_every_s = 0.2
tensorboard = false
"""


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """Two finished teacher runs (different seeds, so different weights) on the digits."""
    base = tmp_path_factory.mktemp("teachers")
    (base / "teacher.toml").write_text(TEACHER)
    done = run_engines({name: {"args": ["run", str(base / "teacher.toml"), "--runs-dir", str(base / "runs"),
                                        "--run-id", name, "--set", f"train.seed={seed}"]}
                        for name, seed in (("teacher", 0), ("other", 1))})
    for name, proc in done.items():
        assert proc.returncode == EXIT_FINISHED, proc.stderr
    return {name: base / "runs" / name for name in done}


def student_config(folder: Path, teacher: Path | str) -> Path:
    path = folder / "student.toml"
    path.write_text(STUDENT.replace("{teacher}", str(teacher)))
    return path


def test_a_distilled_run_stopped_mid_epoch_resumes_bit_exactly(tmp_path: Path, teachers):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    for d in (ref_dir, cut_dir):
        d.mkdir()
    done = run_engine("run", str(student_config(ref_dir, teachers["teacher"])), "--runs-dir", str(ref_dir / "runs"))
    assert done.returncode == EXIT_FINISHED, done.stderr
    reference = only_run(ref_dir / "runs")

    proc = start_engine("run", str(student_config(cut_dir, teachers["teacher"])), "--runs-dir", str(cut_dir / "runs"))
    runs = cut_dir / "runs"
    run = wait_for(lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), what="run dir")
    wait_for(lambda: status_of(run).get("step", 0) >= 30, what="step 30")
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED
    assert status_of(run)["step"] % 45 != 0, "the stop should land mid-epoch"
    resumed = run_engine("resume", str(run))
    assert resumed.returncode == EXIT_FINISHED, resumed.stderr

    ours, ref = (load(sorted((r / "checkpoints").glob("step-*.pt"))[-1]) for r in (run, reference))
    assert ours["step"] == ref["step"] == 135
    for key, tensor in ref["model"].items():
        assert torch.equal(ours["model"][key], tensor), f"weights differ at {key}"
    parts = lambda r: {e["step"]: (e["loss"], e["losses"]) for e in replay(events_of(r)) if e["type"] == "step"}  # noqa: E731
    assert parts(run) == parts(reference)
    assert all(set(p) == {"kd", "ce"} for _, p in parts(run).values())
    assert ours["teacher"]["sha256"] == ref["teacher"]["sha256"]


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_teachers_are_refused_with_exit_2_and_nothing_written(tmp_path: Path, teachers):
    no_checkpoint = tmp_path / "empty-run"
    no_checkpoint.mkdir()
    (no_checkpoint / "config.toml").write_text(TEACHER)
    five_classes = tmp_path / "five"
    five_classes.mkdir()
    (five_classes / "t.toml").write_text(TEACHER + '[data]\nname = "synthetic"\nsynthetic_classes = 5\n'
                                          "synthetic_shape = [1, 8, 8]\nsynthetic_samples = 64\n")
    done = run_engine("run", str(five_classes / "t.toml"), "--runs-dir", str(five_classes / "runs"),
                      "--run-id", "t", "--set", "train.epochs=1")
    assert done.returncode == EXIT_FINISHED, done.stderr
    cases = {
        "missing-file": (str(tmp_path / "nope" / "step-00000001.pt"), ["no such checkpoint file"]),
        "no-checkpoint": (str(no_checkpoint), ["the run has no checkpoint to teach from"]),
        "not-a-checkpoint": (str(teachers["teacher"] / "config.toml"), ["cannot read checkpoint"]),
        "other-classes": (str(five_classes / "runs" / "t"), ["do not fit the student's data", "10 classes"]),
        "unknown-model": ("resnet81", ["distill.teacher = 'resnet81'", "did you mean 'resnet18'"]),
    }
    jobs = {}
    for name, (teacher, _) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        jobs[name] = {"args": ["run", str(student_config(folder, teacher)), "--runs-dir", str(folder / "runs")]}
    before = {name: tree_digest(teachers["teacher"]) for name in ("teacher",)}
    for name, proc in run_engines(jobs).items():
        assert proc.returncode == EXIT_BAD_INPUT, f"{name}: {proc.returncode}\n{proc.stderr}"
        assert "distill.teacher" in proc.stderr, f"{name}: {proc.stderr}"
        for expected in cases[name][1]:
            assert expected in proc.stderr, f"{name}: {proc.stderr}"
        assert not (tmp_path / name / "runs").exists(), f"{name}: a run directory was created"
    assert tree_digest(teachers["teacher"]) == before["teacher"], "a teacher's run must never change"


def test_resume_with_another_teacher_is_refused_and_changes_nothing(tmp_path: Path, teachers):
    done = run_engine("run", str(student_config(tmp_path, teachers["teacher"])), "--runs-dir", str(tmp_path / "runs"),
                      "--set", "train.max_steps=5")
    assert done.returncode == EXIT_FINISHED, done.stderr
    run = only_run(tmp_path / "runs")
    before = tree_digest(run)
    other = run_engine("resume", str(run), "--set", f"distill.teacher='{teachers['other']}'")
    assert other.returncode == EXIT_BAD_INPUT, other.stderr
    assert "distilled from another teacher" in other.stderr and "same distill.teacher" in other.stderr
    assert tree_digest(run) == before
