"""Quantization payoff: the float model against each int8 variant, on size, CPU latency and accuracy.

For each data set (the bundled ``digits``; MNIST from ../shared/data/mnist10k when present):

1. train a conv net (small_cnn) and an MLP in float, the way a user does
   (``cockpit-engine run``);
2. fine-tune the conv net with quantization-aware training for ``--qat-epochs``
   (``quantize.qat = true``, ``model.weights_path`` = the float run);
3. ``cockpit-engine quantize`` each: the conv net ``--mode static``, the MLP ``--mode dynamic``,
   the QAT run ``--mode qat-convert``.

The quantize command measures both sides in one process: file size of the ``.pt2``
artifacts, the median CPU latency per batch in eager mode and under torch.compile (float and
int8 timed interleaved, one call of each in turn, so a machine whose speed drifts slows both
alike), and validation accuracy. Speed-up is float time / int8 time. This script gathers the reports (``RUN/quantized/quantize.json``)
into one table of ratios int8 / float.

    python bench/quantize_payoff.py --help
    python bench/quantize_payoff.py --threads 1 --repeats 50
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MNIST_DEFAULT = REPO.parent / "shared" / "data" / "mnist10k"

SETUPS = {
    "digits": {"data": '[data]\nname = "digits"\n', "width": 32, "hidden": [256, 256], "epochs": 6, "batch": 32},
    "mnist": {"data": '[data]\nname = "mnist"\nroot = "{root}"\n', "width": 32, "hidden": [512, 512],
              "epochs": 3, "batch": 64},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train float models, quantize them three ways, compare.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    p.add_argument("--mnist-root", default=str(MNIST_DEFAULT), help="folder with MNIST's idx files")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for training and latency (OMP_NUM_THREADS)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per latency (median reported)")
    p.add_argument("--qat-epochs", type=int, default=1, help="QAT fine-tuning epochs")
    p.add_argument("--calibration-batches", type=int, default=32)
    p.add_argument("--keep", help="keep the runs in this folder (default: a temporary one)")
    return p


def engine(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"cockpit-engine {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def config(setup: dict, data: str, model: str, extra: str = "", epochs: int | None = None) -> str:
    return (f"{model}\n{data}\n[train]\nepochs = {epochs or setup['epochs']}\nbatch_size = {setup['batch']}\n"
            f"device = \"cpu\"\n[logging]\ntensorboard = false\n{extra}")


def measure(name: str, setup: dict, data: str, work: Path, a: argparse.Namespace, env: dict) -> list[dict]:
    runs = work / name
    cnn = f'[model]\nname = "small_cnn"\nfactory_args = {{ width = {setup["width"]} }}\n'
    mlp = f'[model]\nname = "mlp"\nfactory_args = {{ hidden = {json.dumps(setup["hidden"])} }}\n'
    jobs = {"cnn": config(setup, data, cnn), "mlp": config(setup, data, mlp)}
    for run_id, text in jobs.items():
        (work / f"{name}-{run_id}.toml").write_text(text)
        print(f"[{name}] training {run_id} ...", flush=True)
        engine(["run", str(work / f"{name}-{run_id}.toml"), "--runs-dir", str(runs), "--run-id", run_id], env)
    qat = config(setup, data, cnn + f'weights_path = "{runs / "cnn"}"\n',
                 "[quantize]\nqat = true\n[optim]\nlr = 0.01\n", epochs=a.qat_epochs)
    (work / f"{name}-qat.toml").write_text(qat)
    print(f"[{name}] QAT fine-tuning the conv net for {a.qat_epochs} epoch(s) ...", flush=True)
    engine(["run", str(work / f"{name}-qat.toml"), "--runs-dir", str(runs), "--run-id", "qat"], env)
    rows = []
    for run_id, mode, model in (("cnn", "static", f"small_cnn w{setup['width']}"),
                                ("mlp", "dynamic", f"mlp {setup['hidden']}"),
                                ("qat", "qat-convert", f"small_cnn w{setup['width']} + QAT")):
        print(f"[{name}] quantize {run_id} --mode {mode} ...", flush=True)
        engine(["quantize", str(runs / run_id), "--mode", mode, "--repeats", str(a.repeats),
                "--calibration-batches", str(a.calibration_batches)], env)
        report = json.loads((runs / run_id / "quantized" / "quantize.json").read_text())
        rows.append({"data": name, "model": model, "mode": mode, "report": report})
    return rows


def table(rows: list[dict]) -> str:
    head = ("| data | model | mode | file KB float → int8 | weights ratio | compiled ms float → int8 (speed-up) "
            "| eager ms float → int8 (speed-up) | val acc float → int8 | layers int8 |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        f, q = r["report"]["float"], r["report"][r["mode"]]
        lines.append(
            f"| {r['data']} | {r['model']} | {r['mode']} | {f['bytes'] / 1024:.0f} → {q['bytes'] / 1024:.0f} "
            f"({q['bytes'] / f['bytes']:.2f}x) | {q['weights_ratio']:.2f}x | "
            f"{q['float_compiled_ms']:.3f} → {q['compiled_ms']:.3f} ({q['speedup_compiled']:.2f}x) | "
            f"{q['float_eager_ms']:.3f} → {q['eager_ms']:.3f} ({q['speedup_eager']:.2f}x) | "
            f"{100 * f['val_accuracy']:.2f}% → {100 * q['val_accuracy']:.2f}% | "
            f"{len(q['layers_quantized'])} of {len(q['layers_quantized']) + len(q['layers_float'])} |")
    return "\n".join(lines)


def main() -> None:
    a = build_parser().parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(a.threads))
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="quantize-payoff-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.datasets:
        setup = SETUPS[name]
        data = setup["data"]
        if name == "mnist":
            root = Path(a.mnist_root)
            if not any(root.glob("*-images-idx3-ubyte*")):
                print(f"[mnist] skipped: no MNIST idx files in {root}")
                continue
            data = data.replace("{root}", str(root.resolve()))
        rows += measure(name, setup, data, work, a, env)
    if not rows:
        sys.exit("nothing measured")
    m = rows[0]["report"]["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['threads']} thread(s) for latency; torch {m['torch']}, "
          f"torchao {m['torchao']}; batch {rows[0]['report']['batch']}, median of {a.repeats} runs\n")
    print(table(rows))
    print(f"\nruns kept in {work}" if a.keep else "")


if __name__ == "__main__":
    main()
