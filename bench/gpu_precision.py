"""Mixed precision, channels_last and torch.compile on a GPU: images/s and peak memory.

For each model (ResNet-50 at 224x224, ResNet-18 at 32x32 by default) and each precision
(fp32, fp16, bf16; and ``tf32``: fp32 with train.tf32 = true, i.e. TF32 matmuls and
convolutions allowed), three variants: plain, + channels_last, + channels_last + compile. Each
variant is a fresh engine run on synthetic images, started as a user starts one::

    python -m engine.cli run CONFIG --set train.precision=... [--set train.channels_last=true]

Throughput is the median of the engine's step events' samples/s after the warm-up quarter
(compilation falls in the warm-up); peak memory is the largest `mem_peak_bytes` (CUDA's
allocator peak) the step events report; GPU utilization is sampled through NVML every 0.2 s
during the timed steps. Ratios are against fp32 of the same model: the article claims 1.5-2x
speed and about half the memory with AMP.

    python bench/gpu_precision.py                     # the full table (about 10 minutes on an H100)
    python bench/gpu_precision.py --models resnet18_32 --steps 60
    python bench/gpu_precision.py --device cpu --models resnet18_32 --precisions fp32 bf16 --steps 8
                                                      # a smoke test without a GPU
    python bench/gpu_precision.py --precisions fp32 tf32 fp16 bf16 --budget-s 170 --json-out r.json
                                                      # within a time budget (bench/gpu_check.sh)

With --budget-s the variants run most-informative first (every precision plain, then bf16
with channels_last and compile, then channels_last, then the other compiled ones) and no variant is started once the budget is spent; the table
is still printed in its usual order, with the variants not run marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = {"resnet50_224": ("resnet50", 224, 64), "resnet18_32": ("resnet18", 32, 256)}

CONFIG = """
[model]
name = "{name}"
[data]
name = "synthetic"
synthetic_samples = {samples}
synthetic_shape = [3, {size}, {size}]
synthetic_classes = 100
device_resident = true
[optim]
name = "sgd"
lr = 0.01
[train]
epochs = 1000
max_steps = {steps}
batch_size = {batch}
device = "{device}"
deterministic = false
[checkpoint]
on_epoch_end = false
best_metric = "val_loss"
[logging]
every_steps = 5
max_step_events_per_s = 1000
tensorboard = false
"""


class UtilSampler:
    """GPU utilization through NVML every 0.2 s, in a thread (nothing on a machine without NVML)."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no NVML here: no utilization column
            return
        while not self.stop.wait(0.2):
            self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    def __enter__(self) -> "UtilSampler":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


VARIANTS = (("plain", False, False), ("+channels_last", True, False), ("+channels_last +compile", True, True))


def run_variant(root: Path, model: str, precision: str, channels_last: bool, compile_: bool,
                steps: int, device: str, batch: int | None = None, timeout: float = 3600) -> dict:
    name, size, default_batch = MODELS[model]
    batch = batch or default_batch
    tf32 = precision == "tf32"  # fp32 with TF32 matmuls and convolutions allowed
    precision = "fp32" if tf32 else precision
    cfg = root / "run.toml"
    # epochs of 16 steps (80% of the samples train): few validations and best-checkpoint saves
    # (they fall between step events' windows, but take the variant's time)
    cfg.write_text(CONFIG.format(name=name, size=size, batch=batch, steps=steps, device=device,
                                 samples=batch * 20))
    runs = Path(tempfile.mkdtemp(dir=root))
    args = [sys.executable, "-m", "engine.cli", "run", str(cfg), "--runs-dir", str(runs),
            f"--set=train.precision='{precision}'", f"--set=train.channels_last={str(channels_last).lower()}",
            f"--set=train.compile={str(compile_).lower()}", f"--set=train.tf32={str(tf32).lower()}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    with UtilSampler() as util:
        try:
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    (run,) = list(runs.iterdir())
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    shutil.rmtree(runs, ignore_errors=True)
    steps_ev = [e for e in events if e["type"] == "step"]
    steady = steps_ev[len(steps_ev) // 4:] or steps_ev
    busy = sorted(util.samples)[len(util.samples) // 4:] if util.samples else []  # skip start-up
    return {"images_s": statistics.median(e["samples_per_s"] for e in steady),
            "peak_gib": max((e.get("mem_peak_bytes") or 0) for e in steps_ev) / 2**30,
            "util": statistics.median(busy) if busy else None, "wall_s": time.perf_counter() - started,
            "warnings": [e["message"] for e in events if e["type"] == "log" and e.get("level") == "warning"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"],
                   choices=["fp32", "tf32", "fp16", "bf16"], help="tf32: fp32 with train.tf32 = true")
    p.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS],
                   choices=[v[0] for v in VARIANTS])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 64 at 224, 256 at 32)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no variant after this many seconds; most-informative variants first")
    p.add_argument("--json-out", help="also write every result to this JSON file")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    t0 = time.perf_counter()
    variants = [v for v in VARIANTS if v[0] in a.variants]
    every = [(m, pr, v) for m in a.models for pr in a.precisions for v in variants]
    # Within a budget: every precision plain (fp32 first: the baseline), then the likely best
    # (bf16 + channels_last + compile), then channels_last, then the other compiled ones.
    def priority(k: tuple) -> tuple:
        model, precision, (label, cl, comp) = k
        rank = 0 if not cl else 1 if comp and precision == "bf16" else 2 if not comp else 3
        return rank, a.models.index(model), 0 if precision == "fp32" else 1 + a.precisions.index(precision)

    order = sorted(every, key=priority) if a.budget_s is not None else every
    results: dict[tuple, dict] = {}
    for model, precision, (label, cl, comp) in order:
        left = None if a.budget_s is None else a.budget_s - (time.perf_counter() - t0)
        if left is not None and left <= 5:
            results[(model, precision, label)] = {"error": "not run (time budget spent)"}
            continue
        r = run_variant(root, model, precision, cl, comp, a.steps, a.device, a.batch,
                        timeout=3600 if left is None else max(5.0, left))
        results[(model, precision, label)] = r
        status = r.get("error") or f"{r['images_s']:.0f} images/s, {r['wall_s']:.0f} s"
        print(f"# {model} {precision} {label}: {status}", file=sys.stderr, flush=True)
    print("| model | precision | variant | images/s | vs fp32 | peak GiB | vs fp32 | GPU util % |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for model in a.models:
        base = results.get((model, "fp32", "plain"))
        base = base if base and "error" not in base else None
        for precision in a.precisions:
            for label, _, _ in variants:
                r = results[(model, precision, label)]
                if "error" in r:
                    print(f"| {model} | {precision} | {label} | failed: {r['error'][:80]} | | | | |", flush=True)
                    continue
                speed = f"{r['images_s'] / base['images_s']:.2f}x" if base else ""
                mem = f"{r['peak_gib'] / base['peak_gib']:.2f}x" if base and base["peak_gib"] else ""
                util = f"{r['util']:.0f}" if r["util"] is not None else "n/a"
                print(f"| {model} | {precision} | {label} | {r['images_s']:.0f} | {speed} | "
                      f"{r['peak_gib']:.2f} | {mem} | {util} |", flush=True)
                for w in r["warnings"]:
                    print(f"<!-- {model} {precision} {label}: {w} ({r['wall_s']:.0f} s) -->")
    print(f"<!-- {len(every)} variants, {time.perf_counter() - t0:.0f} s -->")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(
            [{"model": m, "precision": pr, "variant": lab, **r} for (m, pr, lab), r in results.items()], indent=1))
    shutil.rmtree(root, ignore_errors=True)
    failed = [k for k, r in results.items() if "error" in r and not r["error"].startswith("not run")]
    return 1 if failed else 0  # variants left out by the budget are not failures


if __name__ == "__main__":
    sys.exit(main())
