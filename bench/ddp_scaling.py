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
checks that DDP's costs (a gradient all-reduce per step through Gloo, a second Python
process) are small, and shows the communication share the engine itself measured
(`time_comm_s`: all-reduce time that did not overlap the backward pass).

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="cores for each side")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    cfg = root / "run.toml"
    cfg.write_text(CONFIG.format(model=a.model, samples=a.global_batch * (a.steps + 2),
                                 steps=a.steps, batch=a.global_batch))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"{a.model}, synthetic 3x32x32, global batch {a.global_batch}, {a.steps} steps, "
          f"{a.threads} threads per side")
    print(f"{'round':>5} {'1 proc samples/s':>17} {'2 ranks samples/s':>18} {'ratio':>7} {'comm share':>11}")
    ratios = []
    for r in range(a.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        got = {n: run_once(cfg, root, n, a.global_batch // n, a.threads) for n in order}
        ratio = got[2]["samples_per_s"] / got[1]["samples_per_s"]
        ratios.append(ratio)
        print(f"{r + 1:>5} {got[1]['samples_per_s']:>17.1f} {got[2]['samples_per_s']:>18.1f} "
              f"{ratio:>7.3f} {got[2]['comm_share']:>10.1%}")
    print(f"median ratio (2 ranks / 1 process): {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
