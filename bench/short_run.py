"""A short run, whole process: the engine's fixed cost against a plain PyTorch loop, in pairs.

What a user waits for, from typing the command to getting the prompt back:

    engine:  python -m engine.cli run CONFIG --runs-dir TMP     (everything a run normally does on)
    plain:   python plain.py                                     (a self-contained script, torch only)

Both train the same small CNN (engine/model/zoo.py's SmallCNN, width 16, written out again in
the plain script) on the same synthetic images (the engine's `synthetic` source: 3x32x32, 10
classes, normalized), batch 32, AdamW (the engine's defaults), fp32, for --steps steps (one epoch), then
do what the engine does at the end of such a run: one pass over the validation split and a
checkpoint of the model and optimizer (torch.save). The plain script prints the loss every 10
steps (the engine reads it as often). Neither sets thread counts: torch's defaults, as a new
user gets them.

The two alternate, engine first in even pairs and plain first in odd ones, so that a drift in
the machine's load favours neither. Each pair's ratio is engine wall / plain wall; the result is
the median of the pairs' ratios and their range. CPU time (user + system, from the children's
rusage) is reported beside the wall time: on a machine busy with other work it is steadier.

    python bench/short_run.py --pairs 5
    git worktree add /tmp/before 8dbb84f && python bench/short_run.py --pairs 6 --before /tmp/before

The engine's own split of its start-up (engine.telemetry.startup.phases(), as its `startup` log
line reports it) is printed for each engine run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PLAIN = '''\
import sys
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

STEPS, BATCH, K, SHAPE, W, OUT = {steps}, {batch}, 10, {shape}, {width}, {out!r}
torch.manual_seed(0)


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


model = nn.Sequential(block(SHAPE[0], W), block(W, W), nn.MaxPool2d(2), block(W, 2 * W),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(2 * W, K))
g = torch.Generator().manual_seed(777)
protos = torch.rand(K, *SHAPE, generator=g)


def make(n):
    labels = torch.randint(0, K, (n,), generator=g)
    images = 0.5 * protos[labels] + 0.5 * torch.rand(n, *SHAPE, generator=g)
    return TensorDataset((images - 0.5) / 0.25, labels)


n = STEPS * BATCH
train, val = make(n), make(max(1, int(n * 0.2)))
loader = DataLoader(train, batch_size=BATCH, shuffle=True)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
model.train()
for step, (x, y) in enumerate(loader, 1):
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if step % 10 == 0:
        print(f"step {{step}} loss {{loss.item():.4f}}", flush=True)
model.eval()
correct = 0
with torch.no_grad():
    for x, y in DataLoader(val, batch_size=BATCH):
        correct += (model(x).argmax(1) == y).sum().item()
print(f"val_accuracy {{correct / len(val):.4f}}")
torch.save({{"model": model.state_dict(), "optimizer": optimizer.state_dict()}}, OUT)
'''


def engine_config(steps: int, batch: int, width: int, shape: list[int]) -> str:
    return f"""\
[model]
name = "small_cnn"
factory_args = {{ width = {width} }}
[data]
name = "synthetic"
synthetic_samples = {steps * batch}
synthetic_shape = {list(shape)}
synthetic_classes = 10
num_workers = 0
[data.augment]
random_crop_padding = 0
horizontal_flip = false
[train]
batch_size = {batch}
epochs = 1
max_steps = {steps}
"""


def timed(cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the child and its children, the result)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, cpu, proc


def startup_of(run_dir: Path) -> dict | None:
    """The engine's `startup` log line, as a dict of phases (None where it wrote none)."""
    events = run_dir / "events.jsonl"
    for line in events.read_text().splitlines():
        if '"startup: ' in line:
            e = json.loads(line)
            if e.get("type") == "log" and isinstance(e.get("phases"), dict):
                return e["phases"]
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pairs", type=int, default=5, help="engine+plain pairs")
    p.add_argument("--steps", type=int, default=128, help="training steps (one epoch)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=int, default=16, help="small_cnn's channel width")
    p.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32], metavar=("C", "H", "W"),
                   help="synthetic image shape")
    p.add_argument("--engine-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra --set override for the engine run (repeatable)")
    p.add_argument("--before", metavar="CHECKOUT",
                   help="also run the engine of this other checkout (e.g. a `git worktree` of an older "
                   "commit) in every round: before/plain beside engine/plain, under the same load")
    p.add_argument("--json-out", help="also write every measurement to this JSON file")
    a = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from engine_vs_plain import machine

    work = Path(tempfile.mkdtemp(prefix="bench-short-"))

    def env_for(repo: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
        return env

    def rev(repo: Path) -> str:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                              text=True).stdout.strip()

    cfg = work / "short.toml"
    cfg.write_text(engine_config(a.steps, a.batch_size, a.width, a.shape))
    plain = work / "plain.py"
    plain.write_text(PLAIN.format(steps=a.steps, batch=a.batch_size, shape=tuple(a.shape), width=a.width,
                                  out=str(work / "plain.pt")))
    sides = {"engine": REPO, "plain": None}
    if a.before:
        sides["before"] = Path(a.before).resolve()
    m = machine()
    commit = rev(REPO)
    print(f"small_cnn width {a.width}, {'x'.join(map(str, a.shape))} images, batch {a.batch_size}, {a.steps} steps, "
          f"{a.pairs} rounds, engine at {commit}" + (f", before at {rev(sides['before'])}" if a.before else ""))
    print(f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}, "
          f"load average {m['load_avg_1m']:.2f}\n")
    names = list(sides)
    print(f"{'round':>5} " + " ".join(f"{n + ' s':>9}" for n in names) + " " +
          " ".join(f"{n + '/plain':>13}" for n in names if n != "plain") + "  cpu ratios  engine start-up phases (s)",
          flush=True)
    rows = []
    try:
        for i in range(a.pairs):
            order = names[i % len(names):] + names[:i % len(names)]  # each side goes first in turn
            if i % 2:
                order.reverse()
            wall, cpu, phases = {}, {}, None
            for side in order:
                if side == "plain":
                    cmd, env = [sys.executable, str(plain)], env_for(REPO)
                else:
                    run_id = f"{side}-{i}"
                    cmd = [sys.executable, "-m", "engine.cli", "run", str(cfg), "--runs-dir", str(work / "runs"),
                           "--run-id", run_id, *[f"--set={s}" for s in a.engine_set]]
                    env = env_for(sides[side])
                wall[side], cpu[side], _ = timed(cmd, env, sides[side] or REPO)
                if side == "engine":
                    phases = startup_of(work / "runs" / run_id)
            row = {"round": i, "order": order, "wall_s": wall, "cpu_s": cpu, "startup": phases,
                   "ratio": {n: wall[n] / wall["plain"] for n in names if n != "plain"},
                   "cpu_ratio": {n: cpu[n] / cpu["plain"] for n in names if n != "plain"},
                   "load_avg_1m": os.getloadavg()[0]}
            rows.append(row)
            ph = " ".join(f"{k} {v:.2f}" for k, v in (phases or {}).items())
            print(f"{i:>5} " + " ".join(f"{wall[n]:>9.2f}" for n in names) + " " +
                  " ".join(f"{row['ratio'][n]:>12.3f}x" for n in names if n != "plain") + "  " +
                  " ".join(f"{row['cpu_ratio'][n]:.3f}" for n in names if n != "plain") + f"  {ph}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    print()
    for n in names:
        if n == "plain":
            continue
        ratios = [r["ratio"][n] for r in rows]
        cpus = [r["cpu_ratio"][n] for r in rows]
        summary[n] = {"median_ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                      "median_s": statistics.median(r["wall_s"][n] for r in rows),
                      "median_cpu_ratio": statistics.median(cpus), "cpu_min": min(cpus), "cpu_max": max(cpus)}
        print(f"{n}/plain wall: median {summary[n]['median_ratio']:.3f}, range {min(ratios):.3f}-{max(ratios):.3f} "
              f"({n} {summary[n]['median_s']:.2f} s); CPU time: median {summary[n]['median_cpu_ratio']:.3f}, "
              f"range {min(cpus):.3f}-{max(cpus):.3f}")
    summary["plain_median_s"] = statistics.median(r["wall_s"]["plain"] for r in rows)
    print(f"plain {summary['plain_median_s']:.2f} s (median); load average now {os.getloadavg()[0]:.2f}")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"args": vars(a), "machine": m, "commit": commit, "rounds": rows,
                                                "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
