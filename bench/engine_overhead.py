"""What the engine does per step beyond forward/backward/optimizer, each part timed on its own.

engine_vs_plain.py measures the end result; on a busy machine its ratio moves by a few
percent from run to run, which hides an overhead of 1%. This script times each piece of the
engine's extra per-step work directly, with many repetitions and the minimum (and median)
taken, so a busy machine barely moves it:

* data: one batch from the engine's loader (EpochSampler + Prepared: per-sample division and
  normalization, then collation) minus one batch from a plain DataLoader over a
  TensorDataset that was normalized up front;
* bookkeeping: Trainer.after_step on a step that logs nothing (checkpoint checks, the
  command-queue poll, the status-time check) plus the lr schedule (current_lr);
* log: Trainer.log_step, run every logging.every_steps steps (reads the loss, writes
  events.jsonl, TensorBoard scalars, engine.log, the console);
* status: Trainer.write_status, run every logging.status_every_s seconds (an atomic,
  fsync'd replace of status.json).

It then adds them up for a given step time: overhead per step = data + bookkeeping +
log / every_steps + status x step_seconds / status_every_s, and prints the throughput ratio
that overhead alone allows.

    python bench/engine_overhead.py --step-ms 170
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn, n: int) -> tuple[float, float]:
    """(min, median) seconds of n calls."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out), statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--step-ms", type=float, default=170.0,
                   help="the training step time to weigh the overhead against (ms)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32], metavar=("C", "H", "W"))
    p.add_argument("--reps", type=int, default=200, help="repetitions per measurement")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    a = p.parse_args(argv)

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    if a.threads:
        torch.set_num_threads(a.threads)
    from engine.config import loading as config_mod
    from engine.run import session
    from engine.run.rundir import RunDir
    from engine.telemetry.sinks import Console
    from engine.train.trainer import StepMeter, Trainer

    cfg = config_mod.validate({
        "model": {"name": "small_cnn", "factory_args": {"width": 4}},  # the model is not timed here
        "data": {"name": "synthetic", "synthetic_samples": a.batch_size * 50,
                 "synthetic_shape": list(a.shape)},
        "train": {"batch_size": a.batch_size, "device": "cpu", "epochs": 1000},
    })
    spec, model = session.prepare(cfg)
    rows: dict[str, tuple[float, float]] = {}

    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        run = RunDir(Path(tmp) / "run")
        run.path.mkdir()
        tele = session.telemetry_for(cfg, run, "plain", None)
        for sink in tele.sinks:  # the console of a non-terminal run, kept off our stdout
            if isinstance(sink, Console):
                sink.stream = io.StringIO()
        tr = Trainer(cfg, spec, model, run, tele)

        # data: the engine's loader vs a plain one over pre-normalized tensors
        images = spec.train.images.float() / spec.train.scale
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        plain = DataLoader(TensorDataset((images - mean) / std, spec.train.labels),
                           batch_size=a.batch_size, shuffle=True)

        def endless(loader):
            while True:
                yield from loader

        tr.sampler.set_position(0, 0)
        engine_it, plain_it = endless(tr.loader), endless(plain)
        rows["data: engine loader, per batch"] = timed(lambda: next(engine_it), a.reps)
        rows["data: plain loader, per batch"] = timed(lambda: next(plain_it), a.reps)

        # bookkeeping on a step that does not log (every_steps does not divide step 1)
        tr.pos.step, tr.last_status = 1, time.monotonic() + 1e9
        meter = StepMeter()
        rows["bookkeeping: after_step + current_lr"] = timed(
            lambda: (tr.after_step(meter), tr.current_lr()), a.reps)

        def log_once() -> None:
            m = StepMeter()
            m.add_loss(torch.tensor(2.3), a.batch_size)
            m.steps = 1
            tr.log_step(m)

        rows["log_step (every logging.every_steps)"] = timed(log_once, a.reps)
        rows["write_status (every logging.status_every_s)"] = timed(tr.write_status, max(20, a.reps // 10))
        tele.close()

    print(f"{'part':46s} {'min ms':>8s} {'median ms':>10s}")
    for name, (lo, med) in rows.items():
        print(f"{name:46s} {lo * 1e3:8.3f} {med * 1e3:10.3f}")

    every, status_s, step_s = cfg.logging.every_steps, cfg.logging.status_every_s, a.step_ms / 1000
    for pick, label in ((0, "min"), (1, "median")):
        data = rows["data: engine loader, per batch"][pick] - rows["data: plain loader, per batch"][pick]
        per_step = (data + rows["bookkeeping: after_step + current_lr"][pick]
                    + rows["log_step (every logging.every_steps)"][pick] / every
                    + rows["write_status (every logging.status_every_s)"][pick] * step_s / status_s)
        print(f"overhead per step ({label}s): {per_step * 1e3:.3f} ms = {per_step / step_s:.2%} of a "
              f"{a.step_ms:g} ms step -> ratio at best {step_s / (step_s + per_step):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
