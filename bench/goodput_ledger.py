"""The goodput ledger against the wall clock, and what it costs.

1. A run's life as a user lives it: started, stopped with SIGTERM, resumed, SIGKILLed, resumed
   again to the end (a small CNN on the bundled digits, `cockpit-engine` as a user runs it). Each
   engine's life is measured from outside: from just before its process is started to the moment
   its last event is on disk (polled every 10 ms; a killed engine's: the kill). The sum is set
   against the final ledger's `total_s` (whose classes add up to it by construction).
2. The ledger's own work at a logging step (the spans, and a ledger event every 5 s), timed
   directly (median of many) against the step time, as a throughput ratio.

    python bench/goodput_ledger.py
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIG = """
[model]
factory_args = { width = 16 }
[data]
name = "digits"
[train]
epochs = 20
max_steps = 900
batch_size = 32
[checkpoint]
every_steps = 100
[logging]
every_steps = 10
tensorboard = false
status_every_s = 0.2
"""


def events(run: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def session(args: list[str], run: Path, env: dict, until_step: int | None, how: str | None) -> float:
    """One engine: its life in seconds as seen from outside."""
    before = len(events(run))
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if until_step is not None:
        while status(run).get("step", 0) < until_step or status(run).get("state") != "running":
            time.sleep(0.01)
        if how == "kill":
            end = time.time()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return end - start
        proc.send_signal(signal.SIGTERM)
    final = None
    while final is None:
        new = events(run)[before:]
        final = next((e for e in new if e["type"] == "state" and e["state"] in ("stopped", "finished")), None)
        time.sleep(0.01)
    end = time.time()
    proc.wait()
    return end - start


def ledger_cost_ms(reps: int = 2000) -> float:
    from engine.telemetry.ledger import Ledger

    sent = []
    led = Ledger(lambda *a, **k: sent.append(k), time.time(), lambda: None)
    led.loop_started()
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        led.spans(i, 10, 0.5, 0.01, 0.0, 0.0)
        led.send()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        cfg = Path(tmp) / "run.toml"
        cfg.write_text(CONFIG)
        run = Path(tmp) / "runs" / "life"
        lives = [session(["run", str(cfg), "--run-id", "life", "--runs-dir", str(Path(tmp) / "runs")], run, env,
                         250, "term"),
                 session(["resume", str(run)], run, env, 520, "kill"),
                 session(["resume", str(run)], run, env, None, None)]
        final = [e for e in events(run) if e["type"] == "ledger"][-1]
        outside = sum(lives)
        added = sum(c["seconds"] for c in final["classes"].values())
        print(f"sessions: {', '.join(f'{s:.2f} s' for s in lives)} (stopped, killed, finished), outside: {outside:.2f} s")
        print(f"ledger: total {final['total_s']:.2f} s over {final['sessions']} sessions, classes add up to "
              f"{added:.2f} s; ledger / outside = {final['total_s'] / outside:.4f}")
        print("classes: " + ", ".join(f"{k} {v['seconds']:.2f}" for k, v in final["classes"].items()))
        step_s = sum(final["classes"][c]["seconds"] for c in ("productive", "data", "communication", "bubble")) / \
            final["steps"]
    cost = ledger_cost_ms()
    per_log = 10 * step_s * 1000
    print(f"the ledger's work a logging step: {cost * 1000:.1f} us against 10 steps of {step_s * 1000:.1f} ms: "
          f"throughput ratio {per_log / (per_log + cost):.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
