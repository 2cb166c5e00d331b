"""Pipeline parallel on the CPU (Gloo): memory per rank and throughput against one process.

Every side is the engine started the way a user starts it, on the same gpt, corpus (the Python
standard library's source), initial weights and batch:

* one process:  ``cockpit-engine run CONFIG``;
* a pipeline:   ``cockpit-engine run CONFIG --nproc 2 --set distributed.pipeline_stages=2`` with
  ``pipeline_schedule`` gpipe, 1f1b or interleaved1f1b (2 stages a rank) and 4 or 8 microbatches.

Memory, two ways: the model and optimizer state each rank holds (the size of its checkpoint
file, exact: parameters and AdamW's two moments), and each process's peak resident set (the
engine's `mem_peak_ranks_bytes` for the ranks; `getrusage(RUSAGE_CHILDREN)` for the single
process), which also holds the interpreter, torch and the activations. Throughput: the median
samples/s of the step events after the first `--warmup` steps. The bubble: the engine's
measured `pipeline_bubble` (the schedule's time a stage spent waiting) beside the ideal
(P - 1) / (M + P - 1). On a CPU the stages share the same cores, so a pipeline cannot be faster
than one process here; the point is the memory and the bubble.

    python bench/pipeline_bench.py --steps 20
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CONFIG = """
[model]
name = "gpt"
factory_args = {{ layers = {layers}, dim = {dim}, heads = 8, context = 128 }}
[data]
name = "text"
root = "{root}"
max_bytes = 2000000
[optim]
name = "adamw"
lr = 0.001
[train]
epochs = 1
max_steps = {steps}
batch_size = 16
[checkpoint]
on_epoch_end = false
best_metric = "val_loss"
[logging]
every_steps = 1
max_step_events_per_s = 100000
tensorboard = false
"""

SIDES = {"one": [],
         "gpipe M=4": ["--nproc", "2", "--set", "distributed.pipeline_stages=2", "--set", "distributed.microbatches=4",
                       "--set", "distributed.pipeline_schedule='gpipe'"],
         "1f1b M=4": ["--nproc", "2", "--set", "distributed.pipeline_stages=2", "--set", "distributed.microbatches=4"],
         "gpipe M=8": ["--nproc", "2", "--set", "distributed.pipeline_stages=2", "--set", "distributed.microbatches=8",
                       "--set", "distributed.pipeline_schedule='gpipe'"],
         "1f1b M=8": ["--nproc", "2", "--set", "distributed.pipeline_stages=2", "--set", "distributed.microbatches=8"],
         "interleaved M=4": ["--nproc", "2", "--set", "distributed.pipeline_stages=2", "--set", "distributed.microbatches=4",
                             "--set", "distributed.pipeline_schedule='interleaved1f1b'"],
         "interleaved M=8": ["--nproc", "2", "--set", "distributed.pipeline_stages=2", "--set", "distributed.microbatches=8",
                             "--set", "distributed.pipeline_schedule='interleaved1f1b'"]}


def run(side: str, args: list[str], config: Path, runs: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(config), "--runs-dir", str(runs),
                           "--run-id", side.replace(" ", "_").replace("=", ""), *args, "--set", "checkpoint.every_steps=1000000"],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{side}: exit {done.returncode}\n{done.stderr[-3000:]}")
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    run_dir = runs / side.replace(" ", "_").replace("=", "")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["type"] == "step"]
    ckpt = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    files = sorted(ckpt.glob("rank-*.pt")) if ckpt.is_dir() else [ckpt]
    # The ranks report their own peaks; the single process runs first, so the children's peak is its own.
    rss = max(steps[-1]["mem_peak_ranks_bytes"]) if "mem_peak_ranks_bytes" in steps[-1] else child_rss
    return {"steps": steps, "state": max(f.stat().st_size for f in files), "rss": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--sides", default=",".join(SIDES),
                    help=f"comma-separated sides to run ('one' is always first: the ratios' base); of {', '.join(SIDES)}")
    a = ap.parse_args()
    chosen = ["one", *[s for s in a.sides.split(",") if s and s != "one"]]
    unknown = [s for s in chosen if s not in SIDES]
    if unknown:
        ap.error(f"--sides: {unknown[0]!r} is not a side; choose from {', '.join(SIDES)}")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "gpt.toml"
        config.write_text(CONFIG.format(layers=a.layers, dim=a.dim, steps=a.steps, root=sysconfig.get_paths()["stdlib"]))
        results = {side: run(side, args, config, Path(tmp) / "runs") for side, args in SIDES.items() if side in chosen}
    one = results["one"]
    speed = {s: statistics.median(e["samples_per_s"] for e in r["steps"][a.warmup:]) for s, r in results.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}, python {platform.python_version()}")
    print(f"gpt layers={a.layers} dim={a.dim} heads=8 context=128, batch 16, {a.steps} steps, AdamW, fp32, CPU\n")
    print("| side | state per rank (MB) | vs one | peak RSS per rank (MB) | vs one | samples/s | vs one | bubble measured | ideal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for side, r in results.items():
        tail = r["steps"][a.warmup:]
        bubble = statistics.median(e["pipeline_bubble"] for e in tail) if "pipeline_bubble" in tail[0] else None
        ideal = tail[0].get("pipeline_bubble_ideal")
        print(f"| {side} | {r['state'] / 1e6:.1f} | {r['state'] / one['state']:.2f}x | {r['rss'] / 1e6:.0f} | "
              f"{r['rss'] / one['rss']:.2f}x | {speed[side]:.1f} | {speed[side] / speed['one']:.2f}x | "
              f"{'' if bubble is None else f'{bubble:.0%}'} | {'' if ideal is None else f'{ideal:.0%}'} |")


if __name__ == "__main__":
    main()
