"""What `cockpit-engine compress RUN` will do, checked before anything is written.

The plan names every training (the student alone, the distilled student, QAT fine-tuning of
the distilled one; one of each per seed, all with the same seeds and steps) as a base config
file and the `--set` overrides a user would type, and the int8 mode each model admits. Every
refusal is `BadInput` naming the field (`RUN`, `--student`, `--preset`, `--seeds`, `--steps`,
`--epochs`, `--runs-dir`, model.name), so the command exits 2 with nothing written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from contracts.errors import BadInput
from contracts.layout import RunLayout
from engine.config import loading
from engine.config.schema import Config

#: Sub-folder of the teacher's run directory the compress job writes.
COMPRESS = "compress"


@dataclass
class Training:
    """One child run: `cockpit-engine run CONFIG --runs-dir D --run-id ID --set ...`."""

    key: str  # alone, distilled, qat
    seed: int
    run_id: str
    label: str
    config: Path
    sets: list[str]


@dataclass
class Plan:
    run: Path
    out: Path  # RUN/compress
    runs_dir: Path  # where the child runs go
    teacher: Config
    teacher_mode: str
    student: Config  # the student alone's resolved config (seed 1)
    student_source: str  # "preset half-width" or the --student path
    student_mode: str
    seeds: list[int]
    length: dict[str, int]  # {"epochs": E} or {"max_steps": S}
    trainings: list[Training] = field(default_factory=list)
    qat_skipped: str | None = None
    compile_too: bool = True
    repeats: int = 20
    calibration_batches: int = 16

    def runs(self, key: str) -> list[Path]:
        return [self.runs_dir / t.run_id for t in self.trainings if t.key == key]


def check_teacher(run: Path) -> Config:
    """RUN must have finished and hold a single-file checkpoint; its config is the teacher's."""
    from engine.checkpoint.store import best_or_latest

    layout = RunLayout(run)
    try:
        status = json.loads(layout.status.read_text())
    except (OSError, ValueError):
        status = {}
    state = status.get("state") if isinstance(status, dict) else None
    if state != "finished":
        raise BadInput(f"RUN {str(run)!r}: state {state or 'unknown'!r} (status.json); compress takes a run that "
                       "finished as the teacher: let it finish, or resume it, first")
    found = best_or_latest(layout.checkpoints)
    if found is None or found.is_dir():
        raise BadInput(f"RUN {str(run)!r}: no single-file checkpoint to teach from (a sharded FSDP checkpoint "
                       "cannot be a teacher)")
    try:
        return loading.load(layout.config)
    except BadInput as exc:
        raise BadInput(f"RUN {str(run)!r}: its config.toml no longer validates: {exc}") from None


def _length(student: Config, epochs: int | None, steps: int | None) -> tuple[dict[str, int], list[str]]:
    if epochs is not None and steps is not None:
        raise BadInput("--epochs and --steps: give one of them (the same length for every student)")
    for flag, value in (("--epochs", epochs), ("--steps", steps)):
        if value is not None and value < 1:
            raise BadInput(f"{flag} {value}: expected a whole number, 1 or more")
    if steps is not None:  # enough epochs for the steps: every epoch is at least one step
        return {"max_steps": steps}, [f"train.max_steps={steps}", f"train.epochs={steps}"]
    if epochs is not None:
        return {"epochs": epochs}, [f"train.epochs={epochs}"]
    if student.train.max_steps:
        return {"max_steps": student.train.max_steps}, []
    return {"epochs": student.train.epochs}, []


def _qat_length(length: dict[str, int]) -> list[str]:
    """QAT fine-tunes for a quarter of the students' length (at least one epoch or step)."""
    if "max_steps" in length:
        n = max(1, length["max_steps"] // 4)
        return [f"train.max_steps={n}", f"train.epochs={n}"]
    return [f"train.epochs={max(1, length['epochs'] // 4)}"]


def _validate(config: Path, sets: list[str], what: str) -> Config:
    try:
        return loading.load(config, sets)
    except BadInput as exc:
        raise BadInput(f"{what}: {exc}") from None


def int8_mode(cfg: Config, what: str) -> str:
    """static for a model with convolutions, dynamic for one with Linear layers only (built on
    the CPU from the config, with the data's classes and channels); qat-convert for a QAT run."""
    from torch import nn

    from engine.data.sources import build_spec
    from engine.model.zoo import build_model

    if cfg.quantize.qat:
        return "qat-convert"
    if cfg.data.name == "text":
        raise BadInput(f"{what}: model.name = {cfg.model.name!r} on data.name = 'text': compress measures "
                       "image classifiers (int8 accuracy is a classifier's); language models are not supported")
    c = cfg.model_copy(deep=True)
    c.model.weights_path = None
    model = build_model(c, build_spec(c))
    if any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in model.modules()):
        return "static"
    if any(isinstance(m, nn.Linear) for m in model.modules()):
        return "dynamic"
    raise BadInput(f"{what}: model.name = {cfg.model.name!r} has no Conv or Linear layer to quantize")


def make_plan(run: Path, student: str | None, preset: str | None, seeds: int, epochs: int | None,
              steps: int | None, qat: bool, runs_dir: str | None) -> Plan:
    """Check everything; return what to run. Nothing is written here."""
    from engine.compress.preset import as_sets, half_width
    from engine.quantize.support import require_torchao

    if seeds < 1:
        raise BadInput(f"--seeds {seeds}: expected a whole number, 1 or more")
    teacher = check_teacher(run)
    require_torchao("compress")
    if student is not None and preset is not None:
        raise BadInput("--student and --preset: give one of them")
    if student is not None:
        base, what = Path(student), f"--student {student}"
        if not base.is_file():
            raise BadInput(f"--student {student!r}: no such config file")
        model_sets: list[str] = []
    else:
        if preset not in (None, "half-width"):
            raise BadInput(f"--preset {preset!r}: expected 'half-width'")
        base, what = RunLayout(run).config, "--preset half-width"
        model_sets = as_sets(half_width(teacher.model.name, teacher.model.factory_args)) + ['model.weights_path=""']
    plain = _validate(base, model_sets, what)
    if plain.data.name != teacher.data.name or plain.data.root != teacher.data.root:
        raise BadInput(f"{what}: data.name = {plain.data.name!r} (root {plain.data.root!r}) differs from the "
                       f"teacher's {teacher.data.name!r} (root {teacher.data.root!r}); a student learns on its "
                       "teacher's data")
    length, length_sets = _length(plain, epochs, steps)
    out = run / COMPRESS
    children = Path(runs_dir) if runs_dir else out / "runs"
    # the same length for every student: none stops early at the teacher's target
    common = model_sets + length_sets + ["quantize.qat=false", "train.stop_at_target=false"]
    teacher_dir = json.dumps(str(run.resolve()))
    trainings: list[Training] = []
    for seed in range(1, seeds + 1):
        trainings.append(Training("alone", seed, f"alone-s{seed}", f"student alone seed {seed}", base,
                                  common + [f"train.seed={seed}", "distill.enabled=false"]))
        trainings.append(Training("distilled", seed, f"distilled-s{seed}", f"distilled student seed {seed}", base,
                                  common + [f"train.seed={seed}", "distill.enabled=true",
                                            f"distill.teacher={teacher_dir}"]))
    resolved = [_validate(t.config, t.sets, what) for t in trainings]
    mode = int8_mode(resolved[0], what)
    skipped = None if qat else "--no-qat"
    if qat and resolved[0].distributed.nproc > 1:
        skipped = f"distributed.nproc = {resolved[0].distributed.nproc}: QAT trains as one process"
    if skipped is None:
        for seed in range(1, seeds + 1):
            weights = json.dumps(str((children / f"distilled-s{seed}").resolve()))
            t = Training("qat", seed, f"qat-s{seed}", f"QAT fine-tune of the distilled student seed {seed}", base,
                         model_sets + _qat_length(length) + [
                             f"train.seed={seed}", "distill.enabled=false", "quantize.qat=true", "train.compile=false",
                             "train.stop_at_target=false", f"model.weights_path={weights}",
                             f"optim.lr={plain.optim.lr / 10!r}"])
            _validate(t.config, t.sets, what)
            trainings.append(t)
    taken = [t.run_id for t in trainings if (children / t.run_id).exists()]
    if taken:
        raise BadInput(f"--runs-dir {str(children)!r}: {', '.join(taken)} exist from an earlier compress; remove "
                       f"{out if not runs_dir else children} (or name another --runs-dir) to run it again")
    return Plan(run, out, children, teacher, int8_mode(teacher, f"RUN {str(run)!r}"), resolved[0],
                student or "preset half-width", mode,
                list(range(1, seeds + 1)), length, trainings, skipped)
