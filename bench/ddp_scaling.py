"""DDP on 2 processes vs 1 process at the same global batch, on the CPU (Gloo): a scaling check.

Both sides are the engine started the way a user starts it:

* one process:  ``cockpit-engine run CONFIG --set train.batch_size=B`` with all T threads;
* two ranks:    ``cockpit-engine run CONFIG --nproc 2 --set train.batch_size=B/2``, torchrun
  underneath, T/2 threads each (the launcher's default split of the cores).

Same model, data, initial weights, optimizer and global batch, so the two train the same
way; only the split of the work differs. Throughput is read from the step events (global
samples/s, which the engine sums over ranks) between the end of the warm-up and the last
timed step. The runs alternate (one, two, two, one, ...) so drift in the machine's load
favours neither, and the result is the median of the per-round ratios two/one.

On a CPU both sides use the same cores, so the ideal ratio is about 1.0, not 2.0: this
measures what DDP costs (a gradient all-reduce per step through Gloo, a second Python
process, smaller per-process batches) and shows the communication share the engine itself
measured (`time_comm_s`: all-reduce time that did not overlap the backward pass).

To tell DDP's own cost from the engine's, each round also times a plain PyTorch loop (this
file with --plain-worker: the same model, batch and AdamW on one fixed synthetic batch) as
one process and as two DDP ranks under torchrun. The last column, engine 2 ranks / plain 2
ranks, is the engine's overhead under DDP.

    python bench/ddp_scaling.py --rounds 3 --steps 40
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CONFIG = """
[model]
name = "{model}"
[data]
name = "synthetic"
synthetic_samples = {samples}
synthetic_shape = [3, 32, 32]
[optim]
name = "adamw"
lr = 0.001
[train]
epochs = 1
max_steps = {steps}
batch_size = {batch}
[checkpoint]
on_epoch_end = false
best_metric = "val_loss"
[logging]
every_steps = 5
max_step_events_per_s = 1000
"""


def run_once(cfg: Path, root: Path, nproc: int, batch: int, threads: int) -> dict:
    """One engine run; its step events' steady-state global samples/s and comm share."""
    runs = Path(tempfile.mkdtemp(dir=root))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(max(1, threads // nproc)))
    args = [sys.executable, "-m", "engine.cli", "run", str(cfg), "--runs-dir", str(runs),
            f"--set=train.batch_size={batch}"]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        sys.exit(f"engine run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    (run,) = list(runs.iterdir())
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["type"] == "step"]
    steady = steps[len(steps) // 4:]  # skip the warm-up quarter
    shutil.rmtree(runs, ignore_errors=True)
    per_step = [sum(e.get(k) or 0.0 for k in ("time_data_s", "time_h2d_s", "time_compute_s",
                                               "time_optim_s", "time_comm_s")) for e in steady]
    comm = [e.get("time_comm_s") or 0.0 for e in steady]
    return {"samples_per_s": statistics.median(e["samples_per_s"] for e in steady),
            "comm_share": statistics.median(c / t for c, t in zip(comm, per_step) if t > 0)}


def plain_worker(model: str, batch: int, steps: int) -> None:
    """A plain loop (DDP when torchrun started it); rank 0 prints global samples/s."""
    import time

    import torch
    import torch.distributed as dist
    import torchvision

    ddp = "RANK" in os.environ
    if ddp:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = torchvision.models.get_model(model, num_classes=10)
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    stamps = []
    for _ in range(steps):
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad()
        stamps.append(time.perf_counter())
    world = dist.get_world_size() if ddp else 1
    warm = steps // 4
    if not ddp or dist.get_rank() == 0:
        print(batch * world * (steps - 1 - warm) / (stamps[-1] - stamps[warm]))
    if ddp:
        dist.destroy_process_group()


def plain_once(model: str, nproc: int, batch: int, steps: int, threads: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(max(1, threads // nproc)))
    me = [str(Path(__file__).resolve()), "--plain-worker", "--model", model,
          "--global-batch", str(batch), "--steps", str(steps)]
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
              if nproc > 1 else [sys.executable])
    done = subprocess.run(launch + me, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        sys.exit(f"plain run failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="cores for each side")
    p.add_argument("--plain-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.plain_worker:
        return plain_worker(a.model, a.global_batch, a.steps)
    root = Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    cfg = root / "run.toml"
    cfg.write_text(CONFIG.format(model=a.model, samples=a.global_batch * (a.steps + 2),
                                 steps=a.steps, batch=a.global_batch))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"{a.model}, synthetic 3x32x32, global batch {a.global_batch}, {a.steps} steps, "
          f"{a.threads} threads per side")
    print("round | engine 1 proc | engine 2 ranks | ratio | comm share | plain 1 proc | plain 2 ranks "
          "| plain ratio | engine/plain at 2 ranks")
    ratios, plain_ratios, overheads = [], [], []
    for r in range(a.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        got = {n: run_once(cfg, root, n, a.global_batch // n, a.threads) for n in order}
        plain = {n: plain_once(a.model, n, a.global_batch // n, a.steps, a.threads) for n in order}
        ratio = got[2]["samples_per_s"] / got[1]["samples_per_s"]
        ratios.append(ratio)
        plain_ratios.append(plain[2] / plain[1])
        overheads.append(got[2]["samples_per_s"] / plain[2])
        print(f"{r + 1} | {got[1]['samples_per_s']:.1f} | {got[2]['samples_per_s']:.1f} | {ratio:.3f} | "
              f"{got[2]['comm_share']:.1%} | {plain[1]:.1f} | {plain[2]:.1f} | {plain_ratios[-1]:.3f} | "
              f"{overheads[-1]:.3f}", flush=True)
    for label, values in (("engine 2 ranks / 1 process", ratios), ("plain 2 ranks / 1 process", plain_ratios),
                          ("engine / plain, both 2 ranks", overheads)):
        print(f"median {label}: {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
