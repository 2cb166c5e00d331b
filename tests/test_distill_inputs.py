"""What the teacher is given: the student's very batch, in eval mode, normalized the way the
teacher's own run normalized its inputs (#23 audit of the distillation path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.config.loading import validate
from engine.data.sources import build_spec
from engine.model.teacher import InputAdapter, load_teacher, weights_sha256
from engine.model.zoo import MLP
from engine.train.task import Distillation

MEAN, STD = 0.3063, 0.3755  # the digits' own statistics (engine.data.sources.STATS)


def config(teacher: str | None = None, augment: dict | None = None) -> object:
    raw = {"model": {"name": "mlp", "factory_args": {"hidden": [16]}},
           "data": {"name": "digits", "augment": augment or {}},
           "train": {"device": "cpu"}}
    if teacher:
        raw["distill"] = {"enabled": True, "teacher": teacher}
    return validate(raw)


def teacher_checkpoint(folder: Path, augment: dict, dropout: float = 0.0) -> tuple[Path, MLP]:
    """A checkpoint file of ours holding an MLP trained (as far as its config says) with `augment`."""
    torch.manual_seed(0)
    net = MLP(10, 64, hidden=[32, 32], dropout=dropout)
    cfg = validate({"model": {"name": "mlp", "factory_args": {"hidden": [32, 32], "dropout": dropout}},
                    "data": {"name": "digits", "augment": augment}})
    path = folder / "teacher.pt"
    torch.save({"format": 1, "step": 1, "model": net.state_dict(), "optimizer": {}, "trainer": {},
                "rng": {}, "config": cfg.model_dump()}, path)
    return path, net.eval()


def pixels() -> torch.Tensor:
    return torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("teacher_aug, student_aug", [
    ({"normalize": False}, {}),                                  # teacher on raw pixels, student normalized
    ({}, {"normalize": False}),                                  # the other way round
    ({"mean": [0.5], "std": [0.25]}, {}),                        # both normalized, with other statistics
])
def test_the_teacher_sees_inputs_normalized_the_way_its_own_run_did(tmp_path: Path, teacher_aug, student_aug):
    path, net = teacher_checkpoint(tmp_path, teacher_aug)
    student = config(str(path), student_aug)
    teacher = load_teacher(student, build_spec(student))
    assert isinstance(teacher.model, InputAdapter)
    assert teacher.sha256 == weights_sha256(net), "the adapter must not change the teacher's identity"
    x = pixels()
    to_student = (lambda p: (p - MEAN) / STD) if student_aug.get("normalize", True) else (lambda p: p)
    t_mean, t_std = teacher_aug.get("mean", [MEAN])[0], teacher_aug.get("std", [STD])[0]
    to_teacher = (lambda p: (p - t_mean) / t_std) if teacher_aug.get("normalize", True) else (lambda p: p)
    with torch.no_grad():
        torch.testing.assert_close(teacher.model(to_student(x)), net(to_teacher(x)), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(net(to_student(x)), net(to_teacher(x)), atol=1e-3), "the case must matter"


def test_a_teacher_normalized_like_the_student_is_used_as_it_is_in_eval_mode(tmp_path: Path):
    path, net = teacher_checkpoint(tmp_path, {}, dropout=0.5)
    student = config(str(path))
    teacher = load_teacher(student, build_spec(student))
    assert isinstance(teacher.model, MLP) and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    x = pixels()
    with torch.no_grad():  # dropout off: the same answer twice, and the saved weights' answer
        torch.testing.assert_close(teacher.model(x), teacher.model(x), rtol=0, atol=0)
        torch.testing.assert_close(teacher.model(x), net(x), rtol=0, atol=0)


def test_the_teacher_is_given_the_students_very_batch():
    seen: dict[str, torch.Tensor] = {}

    class Recorder(torch.nn.Module):
        def __init__(self, name: str):
            super().__init__()
            self.name, self.lin = name, torch.nn.Linear(64, 10)

        def forward(self, x):
            seen[self.name] = x
            return self.lin(x.flatten(1))

    teacher = Recorder("teacher").requires_grad_(False).eval()
    task = Distillation(teacher, temperature=4.0, alpha=0.5)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    task(Recorder("student"), (x, y))
    assert seen["teacher"] is seen["student"]


def test_the_mnist_distillation_bench_skips_with_a_message_without_mnist(tmp_path: Path, capsys):
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parent.parent / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("distill_mnist", bench / "distill_mnist.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.main(["--mnist-root", str(tmp_path / "none"), "--keep", str(tmp_path / "work")]) == 0
    finally:
        sys.path.remove(str(bench))
    assert "skipped: no MNIST idx files in" in capsys.readouterr().out
    assert not (tmp_path / "work" / "runs").exists()
