"""Engine vs. a plain PyTorch loop: training throughput on the same model, data and precision.

The engine side is a fresh process started exactly as a user starts a run::

    python -m engine.cli run CONFIG --runs-dir TMP

with everything a run normally does left on (events.jsonl, TensorBoard, engine.log,
status.json, the control socket; the final validation and checkpoint come after the timed
steps). Its throughput is read from the engine's own ``step`` events (one every 10 steps,
the default logging.every_steps): (steps between two events x batch) / (time between them),
from the end of the warm-up to the end of the timed steps.

The plain side is this file with ``--plain-worker`` in a fresh process: a DataLoader over a
TensorDataset of the same synthetic images (normalized once up front), autocast when bf16,
forward, loss, backward, optimizer.step, zero_grad. It stamps the time after every step.

Both get the same model with the same initial weights, the same batch size, precision,
optimizer (AdamW with the engine's default settings) and thread count (OMP_NUM_THREADS and
MKL_NUM_THREADS in both environments, torch.set_num_threads in the plain one).

Two ways to pair them (--mode):

* alternate (default): engine, then plain, then plain, then engine, ... one at a time with
  --threads each (default: all cores); the first of each pair alternates so that a drift
  in the machine's load favours neither. Ratio per round = engine / plain samples/s.
* overlap: both at once, each with --threads (default: half the cores), and the plain
  loop's throughput is taken over exactly the wall-clock interval of the engine's timed
  steps. Both then share whatever else the machine is doing, so the ratio holds up on a
  machine that is busy with other work, where one-at-a-time timings swing by 2-5x.

The result is the median of the per-round ratios, with the spread.

    python bench/engine_vs_plain.py --precision fp32 --rounds 5 --steps 30
    python bench/engine_vs_plain.py --precision bf16 --mode overlap --rounds 5
    python bench/engine_vs_plain.py --device cuda --precision bf16 --batch-size 256 --rounds 3

On a GPU (--device cuda) both sides put the model on the GPU and copy each batch there; the
plain loop synchronizes only where the engine does (the engine reads the loss every
logging.every_steps = 10 steps, its only host-device sync) and stamps the time there. The
engine keeps its defaults, deterministic mode included (--engine-set train.deterministic=false
to see what that costs). Only --mode alternate is offered on a GPU (one device, taken in turn).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOG_EVERY = 10  # the engine's default logging.every_steps: a step event every 10 steps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Compare the engine's training throughput with a plain PyTorch loop "
        "(same model, synthetic data, batch size, precision, threads) in fresh processes, "
        "over several rounds, and report the median ratio engine/plain.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="training precision for both sides (bf16: autocast)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where both sides train (cuda: the first GPU)")
    p.add_argument("--mode", choices=["alternate", "overlap"], default="alternate",
                   help="alternate: one at a time, engine and plain in turn; overlap: both at "
                   "once over the same time window (robust on a busy machine)")
    p.add_argument("--model", default="resnet18",
                   help="engine model name: 'small_cnn' or a torchvision classifier")
    p.add_argument("--width", type=int, default=None,
                   help="small_cnn only: channel width (model.factory_args.width)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step")
    p.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32], metavar=("C", "H", "W"),
                   help="synthetic image shape")
    p.add_argument("--classes", type=int, default=10, help="synthetic classes")
    p.add_argument("--warmup", type=int, default=10,
                   help=f"steps run before timing starts (a multiple of {LOG_EVERY})")
    p.add_argument("--steps", type=int, default=30,
                   help=f"timed steps per run (a multiple of {LOG_EVERY})")
    p.add_argument("--rounds", type=int, default=5, help="engine+plain pairs")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for each side (OMP_NUM_THREADS, torch.set_num_threads); "
                   "default: all cores (alternate) or half of them (overlap)")
    p.add_argument("--engine-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra --set override for the engine run (repeatable), e.g. "
                   "train.deterministic=false to see what a setting costs")
    p.add_argument("--json-out", help="also write every measurement to this JSON file")
    p.add_argument("--keep", help="keep the engine's run directories under this folder")
    p.add_argument("--plain-worker", help=argparse.SUPPRESS)  # internal: JSON spec of one plain run
    return p


# ---- the shared run description -----------------------------------------------------------


def engine_config(a: argparse.Namespace) -> dict:
    """The engine config (a TOML-able dict); the plain loop builds its model and data from it too."""
    n = (a.warmup + a.steps) * a.batch_size  # one epoch covers every timed step: no epoch end inside
    model: dict = {"name": a.model}
    if a.width is not None:
        model["factory_args"] = {"width": a.width}
    return {
        "model": model,
        "data": {
            "name": "synthetic", "synthetic_samples": n, "synthetic_shape": list(a.shape),
            "synthetic_classes": a.classes, "num_workers": 0,
            # augmentation off (the default, spelled out); normalization stays on, as by default
            "augment": {"random_crop_padding": 0, "horizontal_flip": False},
        },
        "train": {"batch_size": a.batch_size, "precision": a.precision, "device": a.device,
                  "epochs": 1, "max_steps": a.warmup + a.steps},
    }


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


def windows(marks: list[tuple[float, int]], batch: int) -> tuple[float, float]:
    """(samples/s over all marks, samples/s of the fastest interval between neighbours)."""
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    best = max((b[1] - c[1]) * batch / (b[0] - c[0]) for c, b in zip(marks, marks[1:]))
    return (s1 - s0) * batch / (t1 - t0), best


# ---- the engine side -------------------------------------------------------------------------


def run_engine(a: argparse.Namespace, cfg_path: Path, runs: Path, tag: str) -> dict:
    run_id = f"engine-{tag}-{time.strftime('%H%M%S')}"
    cmd = [sys.executable, "-m", "engine.cli", "run", str(cfg_path), "--runs-dir", str(runs),
           "--run-id", run_id, *[f"--set={s}" for s in a.engine_set]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(a.threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"engine run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    events = [json.loads(line) for line in (runs / run_id / "events.jsonl").read_text().splitlines()
              if line.strip()]
    steps = [e for e in events if e["type"] == "step"]
    lo, hi = a.warmup, a.warmup + a.steps
    window = [e for e in steps if lo <= e["step"] <= hi]
    if len(window) < 2:
        raise SystemExit(f"engine run {run_id}: no step events around steps {lo}..{hi}")
    marks = [(e["t"], e["step"]) for e in window]
    rate, best = windows(marks, a.batch_size)
    n_steps = marks[-1][1] - marks[0][1]
    split = {k: 1000 * statistics.fmean(e[f"time_{k}_s"] for e in window[1:])
             for k in ("data", "compute", "optim")}
    return {"side": "engine", "samples_per_s": rate, "best_window_samples_per_s": best,
            "ms_per_step": 1000 * (marks[-1][0] - marks[0][0]) / n_steps, "steps_timed": n_steps,
            "t_from": marks[0][0], "t_to": marks[-1][0], "split_ms": split,
            "process_wall_s": wall}


# ---- the plain side ------------------------------------------------------------------------


def plain_worker(spec_json: str) -> None:
    """One plain-PyTorch run in this (fresh) process; prints one JSON line.

    Bounded (alternate mode): warm-up + timed steps. Open-ended (overlap mode): prints
    "ready" after the warm-up and trains on, epoch after epoch, until SIGTERM.
    """
    from contextlib import nullcontext

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    s = json.loads(spec_json)
    torch.set_num_threads(s["threads"])
    from engine.config import loading as config_mod
    from engine.data.sources import build_spec
    from engine.model.zoo import build_model

    # The same images and the same initial weights as the engine's run (seed, then data,
    # then model); the images are normalized once, as a plain script would do.
    cfg = config_mod.validate(s["config"])
    torch.manual_seed(cfg.train.seed)
    spec = build_spec(cfg)
    device = torch.device(cfg.train.device)
    model = build_model(cfg, spec).to(device)
    images = spec.train.images.float() / spec.train.scale
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    dataset = TensorDataset((images - mean) / std, spec.train.labels)

    o = cfg.optim
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True,
                        pin_memory=device.type == "cuda" and cfg.data.pin_memory)  # as the engine's
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  weight_decay=o.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    bf16 = cfg.train.precision == "bf16"
    cuda = device.type == "cuda"
    warmup, last = s["warmup"], (None if s["open_ended"] else s["warmup"] + s["steps"])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    model.train()
    step, marks = 0, []
    while not stop and step != last:
        for x, y in loader:
            if cuda:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
                loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step >= warmup and not (cuda and (step - warmup) % LOG_EVERY):
                if cuda:  # only where the engine syncs too (it reads the loss every 10 steps)
                    torch.cuda.synchronize(device)
                marks.append((time.time(), step))
            if step == warmup and last is None:
                print("ready", flush=True)
            if stop or step == last:
                break
    print(json.dumps({"marks": marks, "threads": torch.get_num_threads(), "loss": float(loss)}),
          flush=True)


def plain_cmd(a: argparse.Namespace, config: dict, open_ended: bool) -> list[str]:
    spec = {"config": config, "threads": a.threads, "warmup": a.warmup, "steps": a.steps,
            "open_ended": open_ended}
    return [sys.executable, str(Path(__file__).resolve()), "--plain-worker", json.dumps(spec)]


def plain_result(marks: list, a: argparse.Namespace, wall: float, threads: int) -> dict:
    # the same 10-step windows the engine's events give
    tens = [(t, s) for t, s in marks if (s - a.warmup) % LOG_EVERY == 0]
    rate, best = windows(tens, a.batch_size)
    n = tens[-1][1] - tens[0][1]
    return {"side": "plain", "samples_per_s": rate, "best_window_samples_per_s": best,
            "ms_per_step": 1000 * (tens[-1][0] - tens[0][0]) / n, "steps_timed": n,
            "threads": threads, "process_wall_s": wall}


def run_plain(a: argparse.Namespace, config: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(plain_cmd(a, config, False), cwd=REPO, env=child_env(a.threads),
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"plain run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return plain_result(out["marks"], a, wall, out["threads"])


def run_overlap(a: argparse.Namespace, config: dict, cfg_path: Path, runs: Path, tag: str) -> tuple[dict, dict]:
    """Plain runs open-ended; the engine runs meanwhile; plain is measured over the engine's window."""
    t0 = time.perf_counter()
    plain = subprocess.Popen(plain_cmd(a, config, True), cwd=REPO, env=child_env(a.threads),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if plain.stdout.readline().strip() != "ready":
            raise SystemExit(f"plain run failed before its warm-up:\n{plain.stderr.read()}")
        e = run_engine(a, cfg_path, runs, tag)
    finally:
        if plain.poll() is None:
            plain.send_signal(signal.SIGTERM)
        out, err = plain.communicate()
    wall = time.perf_counter() - t0
    if plain.returncode != 0:
        raise SystemExit(f"plain run failed ({plain.returncode}):\n{out}\n{err}")
    doc = json.loads(out.strip().splitlines()[-1])
    marks = doc["marks"]
    lo, hi = e["t_from"], e["t_to"]
    if not marks or marks[0][0] > lo or marks[-1][0] < hi:
        raise SystemExit("overlap: the plain loop's steps do not cover the engine's timed window")

    def step_at(t: float) -> float:  # steps done by time t, interpolated between stamps
        for (ta, sa), (tb, sb) in zip(marks, marks[1:]):
            if ta <= t <= tb:
                return sa + (sb - sa) * (t - ta) / (tb - ta)
        return float(marks[-1][1])

    steps = step_at(hi) - step_at(lo)
    # the fastest 10 consecutive steps inside the window (the engine's best is per 10 steps too)
    inside = [t for t, _ in marks if lo <= t <= hi]
    best = max((LOG_EVERY * a.batch_size / (inside[i + LOG_EVERY] - inside[i])
                for i in range(len(inside) - LOG_EVERY)), default=float("nan"))
    p = {"side": "plain", "samples_per_s": steps * a.batch_size / (hi - lo),
         "best_window_samples_per_s": best,
         "ms_per_step": 1000 * (hi - lo) / steps, "steps_timed": steps,
         "threads": doc["threads"], "process_wall_s": wall}
    return e, p


# ---- the driver ----------------------------------------------------------------------------


def machine() -> dict:
    import torch

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "gpu": gpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.plain_worker:
        plain_worker(a.plain_worker)
        return 0
    if a.warmup % LOG_EVERY or a.steps % LOG_EVERY or a.steps <= 0 or a.warmup <= 0:
        raise SystemExit(f"--warmup and --steps must be positive multiples of {LOG_EVERY} "
                         "(the engine's step events come every 10 steps)")
    if a.device == "cuda" and a.mode == "overlap":
        raise SystemExit("--mode overlap is for the CPU: on one GPU, use --mode alternate")
    if a.width is not None and a.model != "small_cnn":
        raise SystemExit("--width applies to --model small_cnn only")
    cores = os.cpu_count() or 1
    if a.threads is None:
        a.threads = cores if a.mode == "alternate" else max(1, cores // 2)

    import tomli_w

    config = engine_config(a)
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    runs = Path(a.keep) if a.keep else work / "runs"
    cfg_path = work / "bench.toml"
    cfg_path.write_text(tomli_w.dumps(config))
    m = machine()
    print(f"{a.model} {'x'.join(map(str, a.shape))} batch {a.batch_size} {a.precision} on {a.device}, "
          f"{a.threads} thread(s) each, warm-up {a.warmup} + timed {a.steps} steps, "
          f"{a.rounds} rounds, mode {a.mode}")
    print(f"{m['cpu']}, {m['cores']} cores, GPU {m['gpu']}, torch {m['torch']}, Python {m['python']}, "
          f"load average {m['load_avg_1m']:.2f}")
    if a.engine_set:
        print(f"engine overrides: {' '.join(a.engine_set)}")
    print()
    print(f"{'round':>5} {'engine s/s':>11} {'plain s/s':>10} {'ratio':>7} {'engine ms/step':>15} "
          f"{'plain ms/step':>14} {'best-10 ratio':>13}  engine data/compute/optim ms", flush=True)
    rows = []
    try:
        for r in range(a.rounds):
            tag = f"{a.precision}-{a.mode}-r{r}"
            if a.mode == "overlap":
                first = "plain"
                e, p = run_overlap(a, config, cfg_path, runs, tag)
            else:
                first = "engine" if r % 2 == 0 else "plain"
                if first == "engine":
                    e, p = run_engine(a, cfg_path, runs, tag), run_plain(a, config)
                else:
                    p = run_plain(a, config)
                    e = run_engine(a, cfg_path, runs, tag)
            ratio = e["samples_per_s"] / p["samples_per_s"]
            best = e["best_window_samples_per_s"] / p["best_window_samples_per_s"]
            rows.append({"round": r, "first": first, "ratio": ratio, "best_window_ratio": best,
                         "load_avg_1m": os.getloadavg()[0], "engine": e, "plain": p})
            sp = e["split_ms"]
            note = "  (plain first)" if a.mode == "alternate" and first == "plain" else ""
            print(f"{r:>5} {e['samples_per_s']:>11.1f} {p['samples_per_s']:>10.1f} {ratio:>6.3f}x "
                  f"{e['ms_per_step']:>15.1f} {p['ms_per_step']:>14.1f} {best:>12.3f}x  "
                  f"{sp['data']:.1f}/{sp['compute']:.1f}/{sp['optim']:.1f}{note}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    ratios = [row["ratio"] for row in rows]
    bests = [row["best_window_ratio"] for row in rows]
    eng = statistics.median(row["engine"]["samples_per_s"] for row in rows)
    pla = statistics.median(row["plain"]["samples_per_s"] for row in rows)
    med = statistics.median(ratios)
    spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
    print()
    print(f"median engine {eng:.1f} samples/s, median plain {pla:.1f} samples/s "
          f"(ratio of medians {eng / pla:.3f}); load average now {os.getloadavg()[0]:.2f}")
    print(f"per-round ratio: median {med:.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}, "
          f"stdev {spread:.3f} over {len(ratios)} rounds")
    print(f"best-10-step-window ratio: median {statistics.median(bests):.3f}, "
          f"min {min(bests):.3f}, max {max(bests):.3f}")
    print(f"engine/plain throughput ratio: {med:.2f}x ({a.precision}{', ' + a.device if a.device != 'cpu' else ''})")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(
            {"args": {k: v for k, v in vars(a).items() if k != "plain_worker"}, "machine": m,
             "config": config, "rounds": rows,
             "summary": {"median_ratio": med, "min": min(ratios), "max": max(ratios),
                         "stdev": spread, "median_best_window_ratio": statistics.median(bests)}},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
