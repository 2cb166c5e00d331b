"""What every rank in view costs: engine throughput with per-rank telemetry on vs off.

On: the defaults (`logging.ranks = true`: every rank's record rides in the logging step's
all-reduce and rank 0 writes a `ranks` event; `alerts.hang = true`: each rank's heartbeat
thread publishes its place to the c10d store and rank 0's watchdog reads them). Off:
`logging.ranks = false` and `alerts.hang = false`. Both sides log every step (the worst case:
`logging.every_steps = 1`), on the same model, data and seed, started the way a user starts
them (`cockpit-engine run CONFIG --nproc N`). The sides alternate, on and off, `--rounds`
times, so a machine that slows down during the benchmark weighs on both; throughput is the
median samples/s of each run's step events after `--warmup` steps, and the ratio is the median
of the on/off ratios of the rounds.

    python bench/rank_telemetry_overhead.py --nproc 2 4 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CONFIG = """
[model]
factory_args = {{ width = 16 }}
[data]
name = "digits"
[train]
epochs = 100
max_steps = {steps}
batch_size = 32
deterministic = false
[checkpoint]
on_epoch_end = false
[logging]
every_steps = 1
max_step_events_per_s = 100000
tensorboard = false
"""

SIDES = {"on": ["--set", "logging.ranks=true", "--set", "alerts.hang=true"],
         "off": ["--set", "logging.ranks=false", "--set", "alerts.hang=false"]}


def throughput(nproc: int, side: str, steps: int, warmup: int, folder: Path) -> float:
    cfg = folder / "run.toml"
    cfg.write_text(CONFIG.format(steps=steps))
    run_id = f"{side}-{nproc}-{len(list(folder.glob('runs/*')))}"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(cfg), "--nproc", str(nproc), "--run-id",
                           run_id, "--runs-dir", str(folder / "runs"), *SIDES[side]], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{side} x {nproc} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    events = [json.loads(line) for line in (folder / "runs" / run_id / "events.jsonl").read_text().splitlines()]
    kinds = {e["type"] for e in events}
    assert ("ranks" in kinds) == (side == "on"), f"{side}: ranks events {'missing' if side == 'on' else 'present'}"
    rates = [e["samples_per_s"] for e in events if e["type"] == "step" and e["step"] > warmup]
    return statistics.median(rates)


def rank0_extra_ms(world: int, reps: int = 300) -> float:
    """Median ms of what rank 0 adds at a logging step with telemetry on: the records, the
    straggler and GPU detectors, and the `ranks` event through the sinks a run has (events.jsonl,
    engine.log, the plain console to a null stream). The other addition, world x 14 floats in
    the all-reduce the logging step already makes, is timed by the end-to-end rounds."""
    import io
    import time

    sys.path.insert(0, str(REPO))
    from engine.telemetry.ranks import FIELDS, GpuHealth, Stragglers, records
    from engine.telemetry.sinks import Console, EventsFile, LogFile, Telemetry

    ids = [{"host": f"node-{r // 8}", "local_rank": r % 8, "pid": 1000 + r} for r in range(world)]
    slots = [v for r in range(world) for v in (0.001, 0.0, 0.01 + r * 1e-5, 0.002, 0.001, 5e8, *[-1.0] * (len(FIELDS) - 6))]
    stragglers, health = Stragglers(1.5, 3), GpuHealth()
    times = []
    with tempfile.TemporaryDirectory(prefix="bench-rank0-") as tmp:
        tele = Telemetry([EventsFile(Path(tmp) / "events.jsonl", 1e9), LogFile(Path(tmp) / "engine.log"),
                          Console("plain", 1e9, io.StringIO())])
        for step in range(reps):
            t0 = time.perf_counter()
            ranks = records(slots, world, ids)
            tele.emit("ranks", step=step, slowest=max(ranks, key=lambda r: r["busy_s"])["rank"], ranks=ranks)
            stragglers.feed(ranks)
            health.feed(ranks)
            times.append(time.perf_counter() - t0)
        tele.close()
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--nproc", type=int, nargs="+", default=[2, 4], help="ranks (Gloo on the CPU)")
    p.add_argument("--rounds", type=int, default=5, help="on/off pairs per rank count")
    p.add_argument("--steps", type=int, default=300, help="steps a run")
    p.add_argument("--warmup", type=int, default=30, help="steps left out of each median")
    a = p.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    print(f"{'ranks':>5s} {'on samples/s':>13s} {'off samples/s':>14s} {'on/off':>7s}  rounds' ratios")
    with tempfile.TemporaryDirectory(prefix="bench-ranks-") as tmp:
        for nproc in a.nproc:
            ons, offs, ratios = [], [], []
            for r in range(a.rounds):
                order = ("on", "off") if r % 2 == 0 else ("off", "on")
                got = {side: throughput(nproc, side, a.steps, a.warmup, Path(tmp)) for side in order}
                ons.append(got["on"])
                offs.append(got["off"])
                ratios.append(got["on"] / got["off"])
            print(f"{nproc:5d} {statistics.median(ons):13,.0f} {statistics.median(offs):14,.0f} "
                  f"{statistics.median(ratios):7.3f}  {' '.join(f'{x:.3f}' for x in ratios)}", flush=True)
            step_ms = 32 * nproc / statistics.median(offs) * 1000
            extra = rank0_extra_ms(nproc)
            print(f"      rank 0's added work a logging step: {extra:.3f} ms against a {step_ms:.1f} ms step: "
                  f"throughput ratio {step_ms / (step_ms + extra):.4f} logging every step, "
                  f"{step_ms / (step_ms + extra / 10):.4f} at the default logging.every_steps = 10", flush=True)
    for world in (8, 64, 1024):
        print(f"rank 0's added work a logging step with {world:5d} ranks: {rank0_extra_ms(world, 50):8.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
