"""Distillation payoff: does a student taught by a stronger teacher beat the same student alone?

For each data set (the bundled ``digits``; MNIST from ../shared/data/mnist10k when present):

1. train a teacher once (small_cnn, ``--teacher-width``, ``--teacher-epochs``);
2. train the student (small_cnn, ``--student-width``, ``--epochs``) alone, once per seed;
3. train the very same student config with ``distill.enabled = true`` and ``distill.teacher =``
   the teacher's run directory, once per seed and per (temperature, alpha) setting.

Every run is a fresh process started the way a user starts one::

    python -m engine.cli run CONFIG --runs-dir TMP --run-id ... --set train.seed=N ...

with PYTHONPATH set to the repository root and the repository as the working directory.
Alone and distilled runs differ only in the ``[distill]`` section, so they take the same
optimizer steps over the same batches (the same seed shuffles the same way). The score is the
final validation accuracy: the last ``eval`` event in the run's events.jsonl (the student after
its last step, not its best epoch). The teacher's accuracy is the one the distilled runs
announce in their ``distill`` event (the teacher's best checkpoint, as loaded).

The report is, per data set and setting: the teacher's accuracy, the student alone and
distilled (mean, stdev, min-max over the seeds) and the difference distilled - alone (of the
means, and per seed, since a seed gives both runs the same initial weights and batches).

    python bench/distill_payoff.py --help
    python bench/distill_payoff.py                                   # defaults: T=3, alpha=0.5
    python bench/distill_payoff.py --temperature 3 4 --alpha 0.5 0.9  # two settings, one alone baseline
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MNIST_DEFAULT = REPO.parent / "shared" / "data" / "mnist10k"
MNIST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
               "train-images-idx3-ubyte", "train-labels-idx1-ubyte")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a teacher once per data set, then the same small student alone and "
        "distilled from it for the same steps over several seeds, and compare their final "
        "validation accuracy.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=["digits", "mnist"], default=["digits", "mnist"],
                   help="data sets to measure (mnist is skipped with a message when its folder is absent)")
    p.add_argument("--mnist-root", default=str(MNIST_DEFAULT),
                   help="folder with MNIST's idx files (flat, or torchvision's MNIST/raw layout)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per side (train.seed = 0..N-1)")
    p.add_argument("--temperature", type=float, nargs="+", default=[3.0],
                   help="distill.temperature; several values give several settings (paired with --alpha)")
    p.add_argument("--alpha", type=float, nargs="+", default=[0.5],
                   help="distill.alpha; paired one to one with --temperature (a single value is reused)")
    p.add_argument("--student-width", type=int, default=4, help="student small_cnn width")
    p.add_argument("--epochs", type=int, default=None,
                   help="student epochs (default: 3 on digits, 1 on mnist)")
    p.add_argument("--lr", type=float, default=0.01, help="optim.lr for teacher and student (AdamW, cosine)")
    p.add_argument("--teacher-width", type=int, default=None,
                   help="teacher small_cnn width (default: 32 on digits, 16 on mnist)")
    p.add_argument("--teacher-epochs", type=int, default=None,
                   help="teacher epochs (default: 10 on digits, 5 on mnist)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at once (default: 2 when there are 2+ cores); threads per run = cores / jobs")
    p.add_argument("--json-out", help="also write every run's result to this JSON file")
    p.add_argument("--keep", help="keep the run directories under this folder (default: a temp dir)")
    return p


DEFAULTS = {  # per data set: student epochs, teacher width, teacher epochs
    "digits": {"epochs": 3, "teacher_width": 32, "teacher_epochs": 10},
    "mnist": {"epochs": 1, "teacher_width": 16, "teacher_epochs": 5},
}


def settings(a: argparse.Namespace) -> list[tuple[float, float]]:
    ts, als = a.temperature, a.alpha
    if len(ts) == 1:
        ts = ts * len(als)
    if len(als) == 1:
        als = als * len(ts)
    if len(ts) != len(als):
        raise SystemExit(f"--temperature has {len(a.temperature)} values and --alpha {len(a.alpha)}: "
                         "give the same number, or one of either")
    return list(zip(ts, als))


def mnist_root(src: Path, work: Path) -> Path | None:
    """A data.root the engine reads: src itself when it has torchvision's MNIST/raw layout, else a
    folder in `work` whose MNIST/raw links to src's flat idx files. None when src has none."""
    if (src / "MNIST" / "raw").is_dir():
        return src
    found = [f for f in sorted(src.glob("*-ubyte*")) if f.name.split(".")[0] in MNIST_FILES] if src.is_dir() else []
    if not found:
        return None
    raw = work / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in found:
        link = raw / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
    return work / "mnist"


def toml_value(v) -> str:
    """A TOML literal for --set: strings quoted, booleans lowercase, dicts as inline tables."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v) if isinstance(v, str) else ("true" if v is True else "false" if v is False else repr(v))


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


def run(cfg: Path, runs: Path, run_id: str, sets: dict, threads: int) -> dict:
    """One engine run; its final validation accuracy (last eval event) and the teacher's, if any."""
    cmd = [sys.executable, "-m", "engine.cli", "run", str(cfg), "--runs-dir", str(runs), "--run-id", run_id,
           *[f"--set={k}={toml_value(v)}" for k, v in sets.items()]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run {run_id} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    events = [json.loads(line) for line in (runs / run_id / "events.jsonl").read_text().splitlines() if line.strip()]
    evals = [e for e in events if e["type"] == "eval"]
    if not evals:
        raise SystemExit(f"run {run_id}: no eval event in {runs / run_id / 'events.jsonl'}")
    distill = [e for e in events if e["type"] == "distill"]
    return {"run_id": run_id, "acc": evals[-1]["metrics"]["accuracy"], "step": evals[-1]["step"],
            "best_acc": max(e["metrics"]["accuracy"] for e in evals), "wall_s": round(wall, 1),
            "teacher_acc": distill[0]["metrics"]["accuracy"] if distill else None}


def summary(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.fmean(xs):.1f}% ± {100 * sd:.1f} ({100 * min(xs):.1f}–{100 * max(xs):.1f})"


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    pairs = settings(a)
    cores = os.cpu_count() or 1
    jobs = a.jobs or (2 if cores >= 2 else 1)
    threads = max(1, cores // jobs)
    tmp = None
    if a.keep:
        work = Path(a.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="distill-payoff-")
        work = Path(tmp)
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    cfg = work / "base.toml"  # what every run shares; the rest comes as --set overrides
    cfg.write_text('[model]\nname = "small_cnn"\n\n[train]\ndevice = "cpu"\n\n'
                   '[logging]\ntensorboard = false\n')

    import torch  # only for the machine line

    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, python {platform.python_version()}; {jobs} run(s) at once, "
          f"{threads} thread(s) each")
    print(f"student: small_cnn width {a.student_width}, lr {a.lr}, seeds 0..{a.seeds - 1}; "
          f"settings (T, alpha): {', '.join(f'({t:g}, {al:g})' for t, al in pairs)}")
    results: dict = {"settings": pairs, "args": vars(a), "datasets": {}}
    t_start = time.perf_counter()
    try:
        for ds in a.datasets:
            d = DEFAULTS[ds]
            epochs = a.epochs or d["epochs"]
            tw, te = a.teacher_width or d["teacher_width"], a.teacher_epochs or d["teacher_epochs"]
            data: dict = {"data.name": ds}
            if ds == "mnist":
                root = mnist_root(Path(a.mnist_root), work)
                if root is None:
                    print(f"\n[mnist] skipped: no MNIST idx files in {a.mnist_root}")
                    continue
                data["data.root"] = str(root)
            common = {**data, "optim.lr": a.lr}
            print(f"\n[{ds}] teacher: small_cnn width {tw}, {te} epochs ...", flush=True)
            teacher = run(cfg, runs, f"{ds}-teacher", {**common, "model.factory_args": {"width": tw},
                                                      "train.epochs": te}, cores)
            teacher_dir = runs / teacher["run_id"]
            print(f"[{ds}] teacher final val acc {100 * teacher['acc']:.1f}% (best {100 * teacher['best_acc']:.1f}%), "
                  f"{teacher['wall_s']} s", flush=True)
            student = {**common, "model.factory_args": {"width": a.student_width}, "train.epochs": epochs}
            jobs_list = [(f"{ds}-alone-s{s}", {**student, "train.seed": s}) for s in range(a.seeds)]
            for t, al in pairs:
                jobs_list += [(f"{ds}-kd-T{t:g}-a{al:g}-s{s}",
                               {**student, "train.seed": s, "distill.enabled": True,
                                "distill.teacher": str(teacher_dir), "distill.temperature": t,
                                "distill.alpha": al}) for s in range(a.seeds)]
            print(f"[{ds}] {len(jobs_list)} student runs ({epochs} epochs each) ...", flush=True)
            with ThreadPoolExecutor(jobs) as pool:
                out = dict(zip([j[0] for j in jobs_list],
                               pool.map(lambda j: run(cfg, runs, j[0], j[1], threads), jobs_list)))
            alone = [out[f"{ds}-alone-s{s}"] for s in range(a.seeds)]
            steps = {r["step"] for r in out.values()}
            if len(steps) != 1:
                print(f"[{ds}] WARNING: the student runs ended at different steps: {sorted(steps)}")
            rows = []
            for t, al in pairs:
                kd = [out[f"{ds}-kd-T{t:g}-a{al:g}-s{s}"] for s in range(a.seeds)]
                xa, xk = [r["acc"] for r in alone], [r["acc"] for r in kd]
                per_seed = [k - al_ for k, al_ in zip(xk, xa)]
                rows.append({"temperature": t, "alpha": al, "teacher_acc": kd[0]["teacher_acc"],
                             "alone": xa, "distilled": xk, "diff_mean": statistics.fmean(per_seed),
                             "diff_per_seed": per_seed, "wins": sum(x > 0 for x in per_seed)})
            results["datasets"][ds] = {"teacher": teacher, "student_epochs": epochs, "steps": sorted(steps),
                                       "teacher_width": tw, "teacher_epochs": te, "runs": out, "rows": rows}
            print(f"\n### {ds}: teacher small_cnn w{tw} ({te} ep), student small_cnn w{a.student_width} "
                  f"({epochs} ep, {sorted(steps)[-1]} steps), {a.seeds} seeds, final val accuracy\n")
            print("| T | alpha | teacher | student alone | student distilled | distilled − alone (per seed) | wins |")
            print("|---|---|---|---|---|---|---|")
            for r in rows:
                ps = ", ".join(f"{100 * x:+.1f}" for x in r["diff_per_seed"])
                print(f"| {r['temperature']:g} | {r['alpha']:g} | {100 * r['teacher_acc']:.1f}% | "
                      f"{summary(r['alone'])} | {summary(r['distilled'])} | "
                      f"**{100 * r['diff_mean']:+.1f}** pts ({ps}) | {r['wins']}/{a.seeds} |", flush=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
