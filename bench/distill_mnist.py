"""Distillation where the literature says it pays: MLPs on MNIST (Hinton et al., 2015, section 3).

Hinton, Vinyals and Dean distilled a 2x1200 MLP teacher, trained with dropout and +-2-pixel
jitter, into a 2x800 MLP student trained without regularization: the student alone made 146 test
errors, distilled at T = 20 it made 74. This bench reproduces the direction of that result with
the engine, on the CPU, on the 10,000 MNIST images in ../shared/data/mnist10k (the engine splits
them 8,000 train / 2,000 validation, fixed): a much smaller training set than the paper's 60,000,
so the unregularized student overfits all the more.

1. Two teachers, trained once (in parallel):
   * strong: mlp 2x1200, dropout 0.5, +-2-pixel jitter (``data.augment.random_crop_padding = 2``:
     pad by 2, crop back at a random offset), ``--teacher-epochs`` epochs;
   * weak: mlp 2x1200 trained like the student (no dropout, no jitter, ``--epochs`` epochs), a
     teacher barely better than the student alone (what a new user tries first).
   Each teaches from its last checkpoint (not its best by validation accuracy: the validation set
   is the one the students are scored on).
2. The student, mlp ``--student-hidden`` (2x800), no dropout, no weight decay, no augmentation,
   ``--epochs`` epochs: alone, distilled from the strong teacher at each ``--temperature`` and
   from the weak one at ``--weak-temperature``, once per seed (train.seed = 0..N-1).

Every run is a fresh ``python -m engine.cli run`` (``bench/distill_payoff.py``'s runner); alone
and distilled runs differ only in ``[distill]``, so a seed gives both the same initial weights and
the same batches, and they take the same optimizer steps. The score is the final validation
accuracy (the last ``eval`` event: the student after its last step, not its best epoch); the
difference is distilled - alone per seed, then its mean, stdev and range. The output is a
markdown table.

    python bench/distill_mnist.py --help
    python bench/distill_mnist.py                     # the table in bench/RESULTS.md (#23 part 1)
    python bench/distill_mnist.py --student-hidden 300 300 --teacher-epochs 20   # cheaper
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_payoff import MNIST_DEFAULT, mnist_root, run  # noqa: E402  (the same runner)

VAL_SAMPLES = 2000  # 10,000 images, data.val_fraction 0.2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Hinton et al.'s MNIST distillation setting on the CPU: a 2x1200 teacher with "
        "dropout and jitter, an unregularized MLP student alone and distilled (and from a weak "
        "teacher), several seeds, the same steps; a markdown table of the final validation accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mnist-root", default=str(MNIST_DEFAULT),
                   help="folder with MNIST's idx files (the bench is skipped, exit 0, when it has none)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per side (train.seed = 0..N-1)")
    p.add_argument("--temperature", type=float, nargs="+", default=[4.0, 8.0, 20.0],
                   help="distill.temperature for the strong teacher, one row each")
    p.add_argument("--weak-temperature", type=float, nargs="*", default=[8.0],
                   help="distill.temperature for the weak teacher (none: no weak-teacher row)")
    p.add_argument("--alpha", type=float, default=0.5, help="distill.alpha (the soft term's share)")
    p.add_argument("--student-hidden", type=int, nargs="+", default=[800, 800], help="student mlp widths")
    p.add_argument("--teacher-hidden", type=int, nargs="+", default=[1200, 1200], help="teachers' mlp widths")
    p.add_argument("--teacher-dropout", type=float, default=0.5, help="strong teacher's dropout")
    p.add_argument("--teacher-jitter", type=int, default=2,
                   help="strong teacher's data.augment.random_crop_padding (+-N pixels)")
    p.add_argument("--teacher-epochs", type=int, default=40, help="strong teacher's epochs")
    p.add_argument("--epochs", type=int, default=20, help="student (and weak teacher) epochs")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3, help="optim.lr for every run (AdamW, no weight decay)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, each with OMP_NUM_THREADS = cores / jobs")
    p.add_argument("--json-out", help="also write every run's result to this JSON file")
    p.add_argument("--keep", help="keep the run directories under this folder (default: a temp dir)")
    return p


def last_checkpoint(run_dir: Path) -> Path:
    """The run's newest checkpoint file (the teacher as training left it)."""
    found = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    if not found:
        raise SystemExit(f"{run_dir}: no checkpoint")
    return found[-1]


def train_accuracy(runs: Path, run_id: str) -> float:
    """The last step event's training accuracy (the last logging window's batches)."""
    events = [json.loads(line) for line in (runs / run_id / "events.jsonl").read_text().splitlines() if line.strip()]
    return [e for e in events if e["type"] == "step"][-1]["accuracy"]


def spread(xs: list[float], points: bool = False) -> str:
    """mean ± stdev (min–max), in % (or in percentage points, signed)."""
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    if points:
        return f"{100 * statistics.fmean(xs):+.2f} ± {100 * sd:.2f} ({100 * min(xs):+.2f} to {100 * max(xs):+.2f})"
    return f"{100 * statistics.fmean(xs):.2f}% ± {100 * sd:.2f} ({100 * min(xs):.2f}–{100 * max(xs):.2f})"


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    cores = os.cpu_count() or 1
    jobs = max(1, a.jobs)
    threads = max(1, cores // jobs)
    tmp = None
    if a.keep:
        work = Path(a.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="distill-mnist-")
        work = Path(tmp)
    try:
        root = mnist_root(Path(a.mnist_root), work)
        if root is None:
            print(f"skipped: no MNIST idx files in {a.mnist_root} (put t10k-images-idx3-ubyte[.gz] and "
                  "t10k-labels-idx1-ubyte[.gz] there, or pass --mnist-root)")
            return 0
        return measure(a, root, work, jobs, threads)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def measure(a: argparse.Namespace, root: Path, work: Path, jobs: int, threads: int) -> int:
    import torch  # only for the machine line

    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    cfg = work / "base.toml"  # what every run shares; the rest comes as --set overrides
    cfg.write_text('[model]\nname = "mlp"\n\n[data]\nname = "mnist"\n\n[train]\ndevice = "cpu"\n\n'
                   '[optim]\nname = "adamw"\nweight_decay = 0.0\n\n[logging]\ntensorboard = false\n')
    common = {"data.root": str(root), "optim.lr": a.lr, "train.batch_size": a.batch_size}
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"python {platform.python_version()}; {jobs} run(s) at once, {threads} thread(s) each", flush=True)
    t_start = time.perf_counter()

    teachers = {
        "strong": {**common, "model.factory_args": {"hidden": a.teacher_hidden, "dropout": a.teacher_dropout},
                   "data.augment.random_crop_padding": a.teacher_jitter, "train.epochs": a.teacher_epochs},
        "weak": {**common, "model.factory_args": {"hidden": a.teacher_hidden, "dropout": 0.0},
                 "train.epochs": a.epochs},
    }
    if not a.weak_temperature:
        del teachers["weak"]
    print(f"teachers: {', '.join(teachers)} ...", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        done = dict(zip(teachers, pool.map(lambda k: run(cfg, runs, f"teacher-{k}", teachers[k], threads), teachers)))
    for k, r in done.items():
        print(f"teacher {k}: final val acc {100 * r['acc']:.2f}%, {r['wall_s']} s", flush=True)

    student = {**common, "model.factory_args": {"hidden": a.student_hidden, "dropout": 0.0},
               "train.epochs": a.epochs, "checkpoint.on_epoch_end": False}
    rows = [("alone", None, None)] + [("strong", t, a.alpha) for t in a.temperature] + \
        [("weak", t, a.alpha) for t in (a.weak_temperature or [])]
    jobs_list = []
    for who, t, alpha in rows:
        for s in range(a.seeds):
            sets = {**student, "train.seed": s}
            if who != "alone":
                sets.update({"distill.enabled": True, "distill.teacher": str(last_checkpoint(runs / f"teacher-{who}")),
                             "distill.temperature": t, "distill.alpha": alpha})
            jobs_list.append((row_id(who, t, alpha, s), sets))
    print(f"{len(jobs_list)} student runs ({a.epochs} epochs each) ...", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        out = dict(zip([j[0] for j in jobs_list], pool.map(lambda j: run(cfg, runs, j[0], j[1], threads), jobs_list)))
    for rid in out:
        out[rid]["train_acc"] = train_accuracy(runs, rid)
    steps = sorted({r["step"] for r in out.values()})
    if len(steps) != 1:
        print(f"WARNING: the student runs ended at different steps: {steps}")

    alone = [out[row_id("alone", None, None, s)]["acc"] for s in range(a.seeds)]
    table = []
    for who, t, alpha in rows:
        rs = [out[row_id(who, t, alpha, s)] for s in range(a.seeds)]
        acc = [r["acc"] for r in rs]
        diff = [x - y for x, y in zip(acc, alone)]
        table.append({"teacher": who, "temperature": t, "alpha": alpha, "acc": acc, "diff": diff,
                      "teacher_acc": rs[0]["teacher_acc"], "train_acc": [r["train_acc"] for r in rs],
                      "errors": [round((1 - x) * VAL_SAMPLES) for x in acc]})

    hidden = "x".join(map(str, a.teacher_hidden))
    print(f"\n### MNIST 10k (8,000 train / 2,000 validation): student mlp {'x'.join(map(str, a.student_hidden))}, "
          f"{a.epochs} epochs ({steps[-1]} steps of {a.batch_size}), {a.seeds} seeds, alpha {a.alpha:g}\n")
    print(f"Teachers (mlp {hidden}, last checkpoint, validation accuracy as the students' runs announce it): "
          f"strong (dropout {a.teacher_dropout:g}, ±{a.teacher_jitter}-pixel jitter, {a.teacher_epochs} epochs) "
          f"{teacher_line(table, 'strong')}; weak (no dropout, no jitter, {a.epochs} epochs) {teacher_line(table, 'weak')}.\n")
    print("| student | T | final val accuracy (mean ± stdev, min–max) | val errors per seed | last train batches' accuracy | distilled − alone, points (mean ± stdev, min to max) | seeds won |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        name = "alone" if r["teacher"] == "alone" else f"distilled, {r['teacher']} teacher"
        t = "—" if r["temperature"] is None else f"{r['temperature']:g}"
        diff = "—" if r["teacher"] == "alone" else f"**{spread(r['diff'], points=True)}**"
        won = "—" if r["teacher"] == "alone" else f"{sum(d > 0 for d in r['diff'])}/{a.seeds}"
        print(f"| {name} | {t} | {spread(r['acc'])} | {', '.join(map(str, r['errors']))} | "
              f"{100 * statistics.fmean(r['train_acc']):.1f}% | {diff} | {won} |")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"args": vars(a), "teachers": done, "runs": out, "table": table}, indent=2))
    return 0


def row_id(who: str, t: float | None, alpha: float | None, seed: int) -> str:
    return f"alone-s{seed}" if who == "alone" else f"kd-{who}-T{t:g}-a{alpha:g}-s{seed}"


def teacher_line(table: list[dict], who: str) -> str:
    found = [r["teacher_acc"] for r in table if r["teacher"] == who]
    return f"{100 * found[0]:.2f}%" if found else "(not run)"


if __name__ == "__main__":
    sys.exit(main())
