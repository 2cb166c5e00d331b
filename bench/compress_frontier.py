"""The compression frontier of the digits demo, as bench/RESULTS.md reports it.

    python bench/compress_frontier.py run DIR        # train the demo-like teacher (15 epochs), then
                                                     # cockpit-engine compress it (half-width, 2 seeds, 15 epochs)
    python bench/compress_frontier.py table RUN      # frontier.json and .md again from the quantize reports
                                                     # and ledgers the job left (no training, no timing)

`table` rebuilds the frontier with the current aggregation (engine.compress.job.frontier_report)
from RUN/quantized/quantize.json and each child run's, without measuring anything again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(folder: Path) -> None:
    engine = [sys.executable, "-m", "engine.cli"]
    subprocess.run(engine + ["demo", "--set", "train.epochs=15", "--runs-dir", str(folder / "runs"),
                             "--run-id", "demo-teacher"], check=True, cwd=ROOT)
    subprocess.run(engine + ["compress", str(folder / "runs" / "demo-teacher"), "--preset", "half-width",
                             "--seeds", "2", "--epochs", "15"], check=True, cwd=ROOT)


def table(teacher: Path) -> None:
    from engine.compress.job import frontier_report, write_frontier
    from engine.compress.plan import COMPRESS, Plan, Training
    from engine.config import loading

    out = teacher / COMPRESS
    children = out / "runs"
    trainings = []
    for child in sorted(children.iterdir()):
        key, _, seed = child.name.rpartition("-s")
        trainings.append(Training(key, int(seed), child.name, child.name, child / "config.toml", []))
    order = {"alone": 0, "distilled": 1, "qat": 2}
    trainings.sort(key=lambda t: (order[t.key], t.seed))
    reports = {t.run_id: json.loads((children / t.run_id / "quantized" / "quantize.json").read_text())
               for t in trainings}
    teacher_report = json.loads((teacher / "quantized" / "quantize.json").read_text())
    student = loading.load(children / "alone-s1" / "config.toml")
    modes = [k for k in ("static", "dynamic", "qat-convert") if k in teacher_report]
    student_mode = next(k for k in ("static", "dynamic") if k in reports["alone-s1"])
    seeds = sorted({t.seed for t in trainings})
    plan = Plan(teacher, out, children, loading.load(teacher / "config.toml"), modes[0], student,
                "preset half-width", student_mode, seeds, {"epochs": student.train.epochs}, trainings,
                compile_too="compiled_ms" in teacher_report["float"], repeats=teacher_report["repeats"])
    report = frontier_report(plan, teacher_report, reports)
    write_frontier(plan, report)
    print((out / "frontier.md").read_text())


if __name__ == "__main__":
    {"run": run, "table": table}[sys.argv[1]](Path(sys.argv[2]))
