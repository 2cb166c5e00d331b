"""Cockpit benchmarks: start-up vs `import torch`, attaching to a million events, attached vs headless.

    python bench/cockpit_bench.py startup  [--rounds 7]
    python bench/cockpit_bench.py million  [--events 1000000]
    python bench/cockpit_bench.py fold     [--events 1000000]   (the replay's approaches, without the app)
    python bench/cockpit_bench.py attached [--rounds 3 --steps 300]

Each compares two things in one run and prints a ratio; results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

# "First frame" is when the first screen has been painted: Screen._compositor_refresh has
# run once. (When the auto-pilot starts is no mark of it: with the default screen it started
# before anything was painted; with the run screen as an App mode, after.)
FIRST_FRAME = """
import sys, time, resource
t0 = time.perf_counter()
from pathlib import Path
from textual.screen import Screen
marks = {}
_paint = Screen._compositor_refresh
def _painted(self, *args, **kwargs):
    result = _paint(self, *args, **kwargs)
    marks.setdefault("first_frame", time.perf_counter() - t0)
    return result
Screen._compositor_refresh = _painted
from cockpit.app import CockpitApp
from cockpit.settings import Settings
run = Path(sys.argv[1])
app = CockpitApp(run.parent, run=run, user=Settings(), poll_gpu=False)
async def pilot(p):
    marks["pilot_started"] = time.perf_counter() - t0
    while "first_frame" not in marks:
        await p.pause(0.01)
    want = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    while app.link is None or app.link.history.events_seen < want:
        await p.pause(0.05)
    await p.pause(0.3)
    marks["loaded"] = time.perf_counter() - t0
    marks["torch_imported"] = "torch" in sys.modules
    app.exit()
app.run(headless=True, size=(80, 24), auto_pilot=pilot)
marks["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(__import__("json").dumps(marks))
"""


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, out.stdout


def write_run(folder: Path, n: int, series: bool = True) -> Path:
    """A run directory whose events.jsonl holds n step events (plus evals every 1,000), and, as the
    engine's events sink keeps it, steps.f64 (series=False: events.jsonl alone, as engines before it)."""
    sys.path.insert(0, str(ROOT))
    from contracts.events import encode_event, make_event
    from engine.telemetry.series_file import SeriesFile

    run = folder / "bench-run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.toml").write_text("[train]\nepochs = 1\n")
    (run / "status.json").write_text(json.dumps({"state": "finished", "pid": 0, "step": n}))
    steps = SeriesFile(run) if series else None
    with open(run / "events.jsonl", "w") as f:
        offset = 0

        def write(event: dict) -> None:
            nonlocal offset
            line = encode_event(event)
            f.write(line)
            if steps is not None and event["type"] == "step":
                steps.record(event, offset, offset + len(line))
            offset += len(line)

        write(make_event("state", t=0, state="running", step=0))
        for i in range(1, n + 1):
            write(make_event(
                "step", t=i, step=i, epoch=i // 1000, batch=i % 1000, batches_per_epoch=1000,
                loss=2.3 / (1 + i / 5000), losses={"ce": 2.3 / (1 + i / 5000)}, lr=1e-3, samples_per_s=5000.0,
                steps_per_s=80.0, eta_s=float(n - i), time_data_s=0.001, time_compute_s=0.01, time_optim_s=0.002,
                time_comm_s=0.0))
            if i % 1000 == 0:
                write(make_event("eval", t=i, step=i, epoch=i // 1000,
                                 metrics={"loss": 2.0 / (1 + i / 5000), "accuracy": 0.9}))
        write(make_event("state", t=n + 1, state="finished", step=n))
    if steps is not None:
        steps.close()
    return run


def startup(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp), 2000)
        cockpit, torch = [], []
        for _ in range(args.rounds):  # alternate, so load affects both alike
            _, out = timed([sys.executable, "-c", FIRST_FRAME, str(run)])
            cockpit.append(json.loads(out)["first_frame"])
            torch.append(timed([sys.executable, "-c", "import torch"])[0])
    c, t = statistics.median(cockpit), statistics.median(torch)
    print(f"cockpit first frame (process start to first frame): median {c:.3f} s over {args.rounds}")
    print(f"python -c 'import torch' (whole process):            median {t:.3f} s over {args.rounds}")
    print(f"ratio cockpit/torch-import: {c / t:.2f}")


def million(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = write_run(Path(tmp), args.events)
        size = (run / "events.jsonl").stat().st_size
        print(f"wrote {args.events:,} step events ({size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
        n_events = args.events + args.events // 1000 + 2
        _, out = timed([sys.executable, "-c", FIRST_FRAME, str(run), str(n_events)])
        marks = json.loads(out)
    print(f"first frame after {marks['first_frame']:.2f} s; whole history folded in after "
          f"{marks['loaded']:.2f} s; peak RSS {marks['peak_rss_mib']:.0f} MiB; torch imported: "
          f"{marks['torch_imported']}")


# One way of folding a run's events.jsonl into a RunHistory, timed in a process of its own (peak RSS).
FOLD = """
import sys, time, resource, json
from pathlib import Path
run, mode = Path(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
if mode in ("link", "link-no-steps.f64"):  # what the cockpit does: steps.f64 where it matches, else
    from cockpit.link import RunLink     # orjson and runs of step events folded in bulk
    import cockpit.series_file
    if mode != "link":
        cockpit.series_file.replay = lambda run: None
    link = RunLink(run)
    link.poll()
    seen = link.history.events_seen
else:
    import cockpit.follower as follower
    from cockpit.history import RunHistory
    from contracts.events import decode_event
    if mode == "json-apply":  # before the speed-up: json.loads and apply() one event at a time
        follower.decode_line = decode_event
    h, f, seen = RunHistory(), follower.EventFollower(run / "events.jsonl"), 0
    while events := f.read():
        seen += len(events)
        if mode != "decode-only":
            for e in events:
                h.apply(e)
print(json.dumps({"fold_s": time.perf_counter() - t0, "events": seen,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def fold(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = write_run(Path(tmp), args.events)
        write_s = time.perf_counter() - t0
        print(f"wrote {args.events:,} step events ({(run / 'events.jsonl').stat().st_size / 2**20:.0f} MiB) "
              f"in {write_s:.1f} s")
        print("| approach | fold s | peak MiB | fold / write |\n|---|---|---|---|")
        for mode in ("link", "link-no-steps.f64", "json-apply", "orjson-apply", "decode-only", "link"):
            marks = json.loads(timed([sys.executable, "-c", FOLD, str(run), mode])[1])
            print(f"| {mode} | {marks['fold_s']:.2f} | {marks['peak_mib']:.0f} | {marks['fold_s'] / write_s:.3f} |",
                  flush=True)


VIEWER_CPU: list[float] = []  # share of one core the attached cockpit used, per run


def engine_rate(runs: Path, config: Path, steps: int, attach: bool) -> float:
    """samples/s of one engine run, with or without a cockpit attached for its whole life."""
    cmd = [sys.executable, "-m", "engine.cli", "run", str(config), "--runs-dir", str(runs),
           "--set", f"train.max_steps={steps}", "--detach"]
    before = set(runs.iterdir()) if runs.exists() else set()
    subprocess.run(cmd, env=ENV, check=True, capture_output=True)
    (run,) = set(runs.iterdir()) - before
    viewer = None
    if attach:
        viewer = subprocess.Popen(
            [sys.executable, "-c", "import sys; from pathlib import Path; from cockpit.app import CockpitApp; "
             "from cockpit.settings import Settings; r = Path(sys.argv[1]); "
             "CockpitApp(r.parent, run=r, user=Settings()).run(headless=True, size=(80, 24))", str(run)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while json.loads((run / "status.json").read_text()).get("state") not in ("finished", "failed"):
        time.sleep(0.2)
    if viewer:
        import psutil

        times = psutil.Process(viewer.pid).cpu_times()
        VIEWER_CPU.append((times.user + times.system) / (time.monotonic() - t0))
        viewer.terminate()
        viewer.wait()
    rates = [json.loads(line)["samples_per_s"] for line in (run / "events.jsonl").read_text().splitlines()
             if '"type":"step"' in line]
    rates = rates[len(rates) // 5:]  # drop the warm-up fifth
    return statistics.median(rates)


def attached(args: argparse.Namespace) -> None:
    config = """
[model]
name = "resnet18"
[data]
name = "synthetic"
synthetic_samples = 4096
[train]
batch_size = 32
epochs = 100
[checkpoint]
on_epoch_end = false
best_metric = "val_loss"
[logging]
every_steps = 10
"""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.toml"
        cfg.write_text(config)
        runs = Path(tmp) / "runs"
        ratios = []
        for r in range(args.rounds):
            headless = engine_rate(runs, cfg, args.steps, attach=False)
            watched = engine_rate(runs, cfg, args.steps, attach=True)
            ratios.append(watched / headless)
            print(f"round {r + 1}: headless {headless:,.1f} samples/s, attached {watched:,.1f} samples/s, "
                  f"ratio {watched / headless:.3f}")
    print(f"attached/headless throughput ratio: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}) over {args.rounds} rounds")
    print(f"the attached cockpit used {statistics.median(VIEWER_CPU):.1%} of one core (median over runs, "
          "including its start-up and history replay)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("startup", help="cockpit first frame vs python -c 'import torch'")
    p.add_argument("--rounds", type=int, default=7)
    p.set_defaults(func=startup)
    p = sub.add_parser("million", help="attach to a run with a million step events")
    p.add_argument("--events", type=int, default=1_000_000)
    p.set_defaults(func=million)
    p = sub.add_parser("fold", help="fold a million step events: json and apply() vs orjson and the bulk fold")
    p.add_argument("--events", type=int, default=1_000_000)
    p.set_defaults(func=fold)
    p = sub.add_parser("attached", help="engine throughput with a cockpit attached vs headless")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.set_defaults(func=attached)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
