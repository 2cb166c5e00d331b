"""The cockpit's ranks view at 1,024 ranks vs 8: folding a recorded run's events and drawing the view.

    python bench/ranks_render_bench.py [--steps 200] [--ranks 8 1024] [--updates 50]

For each world size it writes a recorded events file (a step event and a ranks event per
logging step, the engine's schema) and measures, in one process:

  fold     reading and folding the whole file (RunLink.poll: read, decode, RunHistory.apply_many)
  attach   a headless app (Pilot) attached to the run until the ranks pane shows the last step
  pane     one draw of the ranks pane from a new event (rows, or over 16 ranks the summary)
  table    one in-place update of the full screen's table (every rank's row) from a new event,
           with the app repainting it

and prints each, then the ratio 1,024 / 8. Results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cockpit.app import CockpitApp  # noqa: E402
from cockpit.link import RunLink  # noqa: E402
from cockpit.screens.ranks_screen import RanksScreen  # noqa: E402
from cockpit.settings import Settings  # noqa: E402
from cockpit.widgets.ranks_pane import RanksPane  # noqa: E402
from cockpit.widgets.ranks_table import RanksTable  # noqa: E402

GPU = ("gpu_util", "gpu_mem_bytes", "gpu_temp_c", "gpu_power_w", "gpu_sm_mhz", "gpu_throttle")


def ranks_event(step: int, world: int) -> dict:
    """A ranks event as engine/telemetry/ranks.py writes it; rank (step % world) is slow."""
    recs = []
    for r in range(world):
        compute = 0.024 + 0.001 * ((r * 7 + step) % 5) + (0.05 if r == step % world else 0.0)
        rec = {"rank": r, "host": f"node-{r // 8:03d}", "local_rank": r % 8, "pid": 10000 + r, "data_s": 0.002,
               "h2d_s": 0.001, "compute_s": compute, "comm_s": 0.004, "optim_s": 0.003,
               "mem_peak_bytes": 2**30 + r * 4096, **dict.fromkeys(GPU)}
        rec["busy_s"] = rec["data_s"] + rec["h2d_s"] + compute + rec["optim_s"]
        recs.append(rec)
    return {"v": 1, "t": 1.7e9 + step, "type": "ranks", "step": step, "slowest": step % world, "ranks": recs}


def write_run(folder: Path, world: int, steps: int) -> Path:
    run = folder / f"ranks-{world}"
    run.mkdir(parents=True)
    with open(run / "events.jsonl", "w") as f:
        f.write(json.dumps({"v": 1, "t": 1.7e9, "type": "state", "state": "running", "step": 0}) + "\n")
        for step in range(1, steps + 1):
            f.write(json.dumps({"v": 1, "t": 1.7e9 + step, "type": "step", "step": step, "epoch": 0, "loss": 1 / step,
                                "lr": 0.1, "samples_per_s": 1000.0, "world_size": world}) + "\n")
            f.write(json.dumps(ranks_event(step, world)) + "\n")
    return run


def fold(run: Path) -> float:
    t0 = time.perf_counter()
    link = RunLink(run)
    link.poll()
    return time.perf_counter() - t0


async def in_app(run: Path, steps: int, updates: int) -> dict[str, float]:
    """attach, pane and table timings for one run (headless, 160x48)."""
    app = CockpitApp(run.parent, run=run, user=Settings(), poll_gpu=False)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    async with app.run_test(size=(160, 48)) as pilot:
        pane = app.run_screen.query_one(RanksPane)
        while not (app.link and app.link.history.ranks.step == steps and pane.shown_version == app.link.history.ranks.mark):
            await pilot.pause(0.01)
        out["attach_s"] = time.perf_counter() - t0
        h, world = app.link.history, len(app.link.history.ranks.records)
        events = [ranks_event(steps + 1 + i, world) for i in range(updates)]
        draws = []
        for e in events:
            with app.link.lock:
                h.apply(e)
            t1 = time.perf_counter()
            pane.text = pane.draw(h.ranks)
            draws.append(time.perf_counter() - t1)
        out["pane_s"] = statistics.median(draws)
        await pilot.press("R")
        screen = app.screen
        assert isinstance(screen, RanksScreen)
        table = screen.query_one(RanksTable)
        while table.row_count < world:
            await pilot.pause(0.01)
        shows = []
        for i in range(updates):
            with app.link.lock:
                h.apply(ranks_event(steps + updates + 1 + i, world))
            t1 = time.perf_counter()
            screen.refresh_ranks()
            await pilot.pause()  # the repaint of the visible rows
            shows.append(time.perf_counter() - t1)
        out["table_s"] = statistics.median(shows)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--ranks", type=int, nargs=2, default=[8, 1024])
    p.add_argument("--updates", type=int, default=50)
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.ranks:
            t0 = time.perf_counter()
            run = write_run(Path(tmp), world, args.steps)
            mib = (run / "events.jsonl").stat().st_size / 2**20
            print(f"{world} ranks: wrote {args.steps} logging steps ({mib:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
            r = {"fold_s": min(fold(run) for _ in range(3)), "mib": mib}
            r.update(asyncio.run(in_app(run, args.steps, args.updates)))
            results[world] = r
    small, big = args.ranks
    print(f"\n| measure | {small} ranks | {big} ranks | ratio {big}/{small} |\n|---|---|---|---|")
    for key, label in (("fold_s", "fold the file (s)"), ("attach_s", "attach until drawn (s)"),
                       ("pane_s", "ranks pane draw (ms)"), ("table_s", "full table update + repaint (ms)")):
        scale = 1000 if key in ("pane_s", "table_s") else 1
        a, b = results[small][key] * scale, results[big][key] * scale
        print(f"| {label} | {a:.3f} | {b:.3f} | {b / a:.1f} |")


if __name__ == "__main__":
    main()
