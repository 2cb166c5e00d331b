"""Bad input through the real CLI: exit code 2, a message naming the field and the value,
and nothing written (no run directory, no change to an existing run)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import engine_env, run_engine, run_engines
from engine.config.loading import to_toml, validate


#: This machine's CPUs, as the engine counts them: data.num_workers is judged against them.
CPUS = os.cpu_count() or 1


@dataclass
class Case:
    id: str
    toml: str | None               # config file text; None: the file does not exist
    expect: list[str]              # every one must appear in stderr
    sets: list[str] = field(default_factory=list)


# Refused while validating the config, before torch is imported (each costs ~0.5 s).
# Input refused later (loading data, building the model) is in LATE below.
EARLY = [
    Case("unknown-key-did-you-mean", "[optim]\nlrr = 0.1\n",
         ["optim.lrr = 0.1", "unknown key", "did you mean 'lr'?"]),
    Case("unknown-section", "[optimizer]\nlr = 0.1\n",
         ["optimizer = {'lr': 0.1}", "unknown key", "did you mean 'optim'?"]),
    Case("unknown-key-via-set", "", ["train.epoch = 5", "unknown key", "did you mean 'epochs'?"],
         sets=["train.epoch=5"]),
    Case("unknown-key-without-close-match", "[train]\nzzz = 1\n",
         ["train.zzz = 1", "unknown key", "known keys: epochs, max_steps, batch_size"]),
    Case("wrong-type", '[optim]\nlr = "fast"\n', ["optim.lr = 'fast'", "valid number"]),
    Case("wrong-type-via-set", "", ["train.batch_size = 'big'", "valid integer"],
         sets=["train.batch_size=big"]),
    Case("out-of-range-via-set", "", ["optim.lr = -0.5", "greater than 0"], sets=["optim.lr=-0.5"]),
    Case("out-of-range", "[data]\nval_fraction = 1.5\n", ["data.val_fraction = 1.5", "less than 1"]),
    Case("bad-enum", "", ["train.precision = 'fp8'", "'fp32', 'fp16' or 'bf16'"],
         sets=["train.precision=fp8"]),
    Case("bad-dataset-name", '[data]\nname = "minst"\nroot = "/data"\n',
         ["data.name='minst'", "did you mean 'mnist'?"]),
    Case("mnist-without-root", '[data]\nname = "mnist"\n', ["data.root", "data.name='mnist'", "set data.root"]),
    Case("persistent-workers-without-workers", "[data]\npersistent_workers = true\nnum_workers = 0\n",
         ["data.persistent_workers=true", "num_workers > 0"]),
    Case("nesterov-with-adam", '[optim]\nname = "adam"\nnesterov = true\n',
         ["optim.nesterov=true", "optim.name='sgd'"]),
    Case("bad-device", '[train]\ndevice = "gpu"\n', ["train.device='gpu'", "'cpu', 'cuda' or 'cuda:N'"]),
    Case("bad-device-via-set", "", ["--set: train.device='gpu'", "'cpu', 'cuda' or 'cuda:N'"],
         sets=['train.device="gpu"']),
    Case("bad-distributed-strategy-via-set", "", ["distributed.strategy = 'zero3'", "'ddp' or 'fsdp'"],
         sets=['distributed.strategy="zero3"']),
    Case("hub-weights-refused", "", ["model.pretrained='IMAGENET1K_V1'", "never downloaded", "model.weights_path"],
         sets=['model.pretrained="IMAGENET1K_V1"']),
    Case("hub-weights-as-a-boolean", "[model]\npretrained = true\n",
         ["model.pretrained=True", "never downloaded", "set model.weights_path"]),
    Case("float-for-an-integer", "[schedule]\nwarmup_steps = 1e9\n",
         ["schedule.warmup_steps = 1000000000.0", "expected an integer, got a float", "write 1000000000"]),
    Case("fraction-for-an-integer-via-set", "", ["--set: train.epochs = 2.5", "expected an integer, got a float"],
         sets=["train.epochs=2.5"]),
    Case("sweep-space-not-a-field", "[sweep.space]\n\"optim.lrr\" = { low = 0.001, high = 0.1 }\n",
         ["sweep.space.'optim.lrr'", "not a field of optim", "did you mean 'lr'"]),
    Case("sweep-space-value-refused", "[sweep.space]\n\"train.batch_size\" = { choices = [32, 0] }\n",
         ["sweep.space.'train.batch_size'", "train.batch_size = 0 is refused"]),
    Case("distill-without-teacher", "[distill]\nenabled = true\n", ["distill.enabled=true", "needs distill.teacher"]),
    Case("distill-alpha-out-of-range", "", ["distill.alpha = 1.5", "less than or equal to 1"], sets=["distill.alpha=1.5"]),
    Case("distill-temperature-not-positive", "[distill]\ntemperature = 0\n", ["distill.temperature = 0", "greater than 0"]),
    Case("alerts-straggler-ratio-not-above-one", "", ["alerts.straggler_ratio = 0.9", "greater than 1"],
         sets=["alerts.straggler_ratio=0.9"]),
    Case("alerts-stall-factor-not-above-one", "", ["alerts.stall_factor = 0.5", "greater than 1"],
         sets=["alerts.stall_factor=0.5"]),
    Case("hang-warning-after-the-timeout", "[distributed]\ntimeout_s = 30\nhang_warn_s = 45\n",
         ["distributed", "hang_warn_s = 45", "timeout_s = 30", "hang_warn_s < timeout_s"]),
    Case("alerts-command-empty", '[alerts]\ncommand = " "\n', ["alerts.command", "empty command"]),
    Case("alerts-command-unbalanced-quote", "[alerts]\ncommand = \"notify 'x\"\n",
         ["alerts.command", "not a command line"]),
    Case("toml-syntax-error", "[train]\nepochs = = 3\n", ["run.toml", "not valid TOML", "line 2"]),
    Case("missing-config-file", None, ["run.toml", "not found", "example-config"]),
    Case("set-without-equals", "", ["--set 'train.epochs'", "section.key=value"], sets=["train.epochs"]),
    Case("set-into-a-value", "[optim]\nlr = 0.1\n", ["--set 'optim.lr.max=1'", "lr is a value, not a section"],
         sets=["optim.lr.max=1"]),
    Case("set-a-section-to-a-value", "", ["optim = 0.1", "valid dictionary"], sets=["optim=0.1"]),
    Case("num-workers-beyond-the-machine", "[data]\nnum_workers = 100000\n",
         ["data.num_workers = 100000", f"it has {CPUS} CPUs", f"at most {4 * CPUS} workers (4 per CPU)"]),
    Case("num-workers-just-past-the-limit-via-set", "",
         [f"--set: data.num_workers = {4 * CPUS + 1}", f"it has {CPUS} CPUs"], sets=[f"data.num_workers={4 * CPUS + 1}"]),
    Case("every-problem-is-listed", '[optim]\nlr = 0\n[train]\nbatch_size = 0\n',
         ["optim.lr = 0", "train.batch_size = 0"]),
]


# Quick to reach the failing step: synthetic data (no scikit-learn import) and
# deterministic = false (else torch imports its compiler, ~2.5 s).
TINY_RUN = ('[model]\nfactory_args = { width = 8 }\n'
            '[data]\nname = "synthetic"\nsynthetic_samples = 64\nsynthetic_shape = [1, 8, 8]\n'
            '[train]\nmax_steps = 2\nbatch_size = 16\ndeterministic = false\n')

# Refused after validation, while building the data, the model or the device: the engine
# has imported torch by then (~3 s each), but must still write nothing.
LATE = [
    Case("mnist-root-missing", TINY_RUN.replace('name = "synthetic"', 'name = "mnist"\nroot = "DATA/nope"'),
         ["data.root = 'DATA/nope'", "no mnist files found", "torchvision's layout",
          "DATA/nope/MNIST/raw/train-images-idx3-ubyte[.gz]",
          "DATA/nope/MNIST/raw/t10k-labels-idx1-ubyte[.gz]", "data.download = true"]),
    Case("unknown-torchvision-model", TINY_RUN.replace("[model]\n", '[model]\nname = "resnet81"\n'),
         ["model.name = 'resnet81'", "did you mean 'resnet18'"]),
    # CUDA_VISIBLE_DEVICES="" below: no GPU is visible, whatever this machine has.
    Case("cuda-without-gpu", TINY_RUN.replace("[train]\n", '[train]\ndevice = "cuda"\n'),
         ["train.device = 'cuda'", "no CUDA device is visible", "'cpu'"]),
]


def killed_run(folder: Path, checkpoint_bytes: bytes | None) -> Path:
    """A run directory as a crash before the first usable checkpoint leaves it."""
    run = folder / "20261123-221500-small_cnn-dead"
    (run / "checkpoints").mkdir(parents=True)
    (run / "tb").mkdir()
    (run / "config.toml").write_text(to_toml(validate(tomllib.loads(TINY_RUN))))
    (run / ".lock").write_bytes(b"")
    (run / "events.jsonl").write_text('{"v":1,"t":1.0,"type":"state","state":"running","step":0}\n')
    (run / "status.json").write_text('{"state": "running", "step": 3}')
    (run / "engine.log").write_text("2026-11-23 22:15:00 state running\n")
    if checkpoint_bytes is not None:
        (run / "checkpoints" / "step-00000005.pt").write_bytes(checkpoint_bytes)
    return run


def snapshot(folder: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(folder))] = (digest, st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> dict[str, dict]:
    """Run every bad command side by side (they are independent), each in its own folder."""
    base = tmp_path_factory.mktemp("refused")
    jobs, info = {}, {}
    run = killed_run(base / "resume-src", b"PK\x03\x04 this is not a whole checkpoint")
    jobs["resume"] = {"args": ["resume", str(run)], "cwd": base}
    info["resume"] = {"run": run, "before": snapshot(run)}
    for case in LATE + EARLY:  # the slow ones first
        folder = base / case.id
        folder.mkdir()
        if case.toml is not None:
            (folder / "run.toml").write_text(case.toml)
        sets = [a for s in case.sets for a in ("--set", s)]
        env = engine_env() | ({"CUDA_VISIBLE_DEVICES": ""} if case.id == "cuda-without-gpu" else {})
        jobs[case.id] = {"args": ["run", str(folder / "run.toml"), "--runs-dir", str(folder / "runs"), *sets],
                         "cwd": folder, "env": env}
        info[case.id] = {"folder": folder, "ours": {"run.toml"} if case.toml is not None else set()}
    for name, done in run_engines(jobs).items():
        info[name]["done"] = done
    return info


def assert_refused(done: subprocess.CompletedProcess, expect: list[str]) -> None:
    assert done.returncode == 2, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    for text in expect:
        assert text in done.stderr, f"{text!r} not in stderr:\n{done.stderr}"
    assert done.stderr.startswith("cockpit-engine: ")
    assert "Traceback" not in done.stderr, "bad input must not look like a crash"
    assert "run directory" not in done.stdout


def assert_nothing_written(folder: Path, ours: set[str]) -> None:
    runs = folder / "runs"
    assert not runs.exists() or not any(runs.iterdir()), f"left behind: {list(runs.iterdir())}"
    assert {p.name for p in folder.iterdir()} - {"runs"} == ours, "nothing written outside either"


@pytest.mark.parametrize("case", EARLY, ids=[c.id for c in EARLY])
def test_bad_config_is_refused_before_anything_is_written(refused, case: Case):
    job = refused[case.id]
    assert_refused(job["done"], case.expect)
    assert_nothing_written(job["folder"], job["ours"])


@pytest.mark.parametrize("case", LATE, ids=[c.id for c in LATE])
def test_input_refused_while_loading_leaves_no_run_directory(refused, case: Case):
    job = refused[case.id]
    assert_refused(job["done"], case.expect)
    assert_nothing_written(job["folder"], job["ours"])


def test_resume_without_a_usable_checkpoint_changes_nothing(refused):
    job = refused["resume"]
    assert_refused(job["done"], ["no usable checkpoint", str(job["run"].resolve()), "nothing was changed"])
    assert "step-00000005.pt is unusable" in job["done"].stderr, "the broken file is named"
    assert snapshot(job["run"]) == job["before"], "the run directory must be exactly as it was"


def test_resume_with_a_bad_override_is_refused_and_changes_nothing(tmp_path: Path):
    run = killed_run(tmp_path, None)
    before = snapshot(run)
    done = run_engine("resume", str(run), "--set", "optim.lr=0")
    assert_refused(done, ["--set: optim.lr = 0", "greater than 0"])
    assert snapshot(run) == before


def test_resume_of_something_that_is_not_a_run(tmp_path: Path):
    done = run_engine("resume", "no-such-run", "--runs-dir", str(tmp_path / "runs"))
    assert_refused(done, ["run 'no-such-run'", "no run directory with a config.toml"])
    assert not (tmp_path / "runs").exists()


def test_resume_with_more_workers_than_the_machine_runs_is_refused_and_changes_nothing(tmp_path: Path):
    run = killed_run(tmp_path, None)
    before = snapshot(run)
    done = run_engine("resume", str(run), "--set", "data.num_workers=100000")
    assert_refused(done, ["--set: data.num_workers = 100000", f"it has {CPUS} CPUs"])
    assert snapshot(run) == before


def test_num_workers_above_the_cpu_count_warns_and_at_it_is_silent(tmp_path: Path):
    jobs = {}
    for name, workers in (("above", CPUS + 1), ("at", CPUS)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.toml").write_text(TINY_RUN.replace("[data]\n", f"[data]\nnum_workers = {workers}\n"))
        jobs[name] = {"args": ["run", str(tmp_path / name / "run.toml"), "--runs-dir", str(tmp_path / name / "runs")]}
    done = run_engines(jobs)
    for name in jobs:
        assert done[name].returncode == 0, f"{name}: exit {done[name].returncode}\n{done[name].stderr}"
    assert (f"cockpit-engine: warning: data.num_workers = {CPUS + 1}: more DataLoader workers than this "
            f"machine's {CPUS} CPUs") in done["above"].stderr
    assert done["above"].stderr.count("warning: data.num_workers") == 1
    assert "data.num_workers" not in done["at"].stderr
    # the run's own record says it too (engine.log and a log event), so the cockpit shows it
    logs = {name: (next((tmp_path / name / "runs").iterdir()) / "engine.log").read_text() for name in jobs}
    assert f"data.num_workers = {CPUS + 1}: more DataLoader workers" in logs["above"]
    assert "more DataLoader workers" not in logs["at"]
