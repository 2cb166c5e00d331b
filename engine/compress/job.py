"""The compress job itself: train every student, measure every model, write the frontier."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from contracts.atomic import write_atomic, write_json_atomic
from engine.compress.children import train
from engine.compress.frontier import mark_pareto, markdown, point
from engine.compress.plan import Plan
from engine.compress.progress import PROGRESS, Progress

FRONTIER_JSON, FRONTIER_MD = "frontier.json", "frontier.md"


def cost(runs: list[Path]) -> dict[str, Any]:
    """Mean seconds (and dollars, where every run was priced) per run, from each run's newest
    ledger; {} when a run has none."""
    from contracts.errors import BadInput
    from engine.telemetry.goodput_report import report

    seconds, dollars = [], []
    for run in runs:
        try:
            r = report(run)
        except BadInput:
            return {}
        seconds.append(r["total_s"])
        dollars.append(r.get("dollars"))
    priced = None if any(d is None for d in dollars) else statistics.fmean(dollars)
    return {"seconds": statistics.fmean(seconds), "dollars": priced}


def add_costs(*costs: dict[str, Any]) -> dict[str, Any]:
    if any(not c for c in costs):
        return {}
    dollars = [c["dollars"] for c in costs]
    return {"seconds": sum(c["seconds"] for c in costs),
            "dollars": None if any(d is None for d in dollars) else sum(dollars)}


def _where(path: Path, run: Path) -> str:
    try:
        return str(path.resolve().relative_to(run.resolve()))
    except ValueError:
        return str(path.resolve())


def run_job(plan: Plan) -> dict[str, Any]:
    """Train, measure, write frontier.json and frontier.md; the report. Raises ChildFailed (or the
    quantize command's BadInput) when a stage fails, after recording it in progress.jsonl."""
    students = [t for t in plan.trainings if t.key in ("alone", "distilled")]
    qats = [t for t in plan.trainings if t.key == "qat"]
    progress = Progress(plan.out / PROGRESS, len(plan.trainings) + 1 + len(students) + len(qats))
    try:
        return _run(plan, progress, students, qats)
    except BaseException as exc:
        progress.failed(str(exc) or type(exc).__name__)
        raise


def _run(plan: Plan, progress: Progress, students: list, qats: list) -> dict[str, Any]:
    from engine.quantize.command import quantize

    for t in plan.trainings:
        progress.begin(t.label, run=str(plan.runs_dir / t.run_id))
        train(t, plan.runs_dir, progress)
        progress.done("trained", run=str(plan.runs_dir / t.run_id))

    def measure(run: Path, mode: str, label: str) -> dict[str, Any]:
        progress.begin(f"measure {label}: float and {mode} int8", run=str(run))
        report = quantize(run, mode, plan.calibration_batches, plan.compile_too, plan.repeats)
        progress.done(f"float {100 * report['float']['val_accuracy']:.2f}%, int8 "
                      f"{100 * report[mode]['val_accuracy']:.2f}%", run=str(run))
        return report

    teacher = measure(plan.run, plan.teacher_mode, "teacher")
    reports = {t.run_id: measure(plan.runs_dir / t.run_id, plan.student_mode, t.label) for t in students}
    reports |= {t.run_id: measure(plan.runs_dir / t.run_id, "qat-convert", t.label) for t in qats}
    report = frontier_report(plan, teacher, reports)
    write_frontier(plan, report)
    best = ", ".join(p["name"] for p in report["points"] if p["pareto"])
    progress.finished(f"frontier: {best} ({plan.out / FRONTIER_JSON})")
    return report


def frontier_report(plan: Plan, teacher: dict[str, Any], reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """frontier.json from the quantize reports: the teacher's and each child run's (by run id)."""
    students = [t for t in plan.trainings if t.key in ("alone", "distilled")]
    qats = [t for t in plan.trainings if t.key == "qat"]
    lat = "compiled_ms" if plan.compile_too else "eager_ms"
    points = []

    def add(name: str, model: str, training: str, entry: str, runs: list[Path], found: list[dict], costs) -> None:
        rows = [r[entry] for r in found]
        artifact = runs[0] / "quantized" / rows[0]["file"]
        points.append(point(name, model, training, "float" if entry == "float" else f"int8 {entry}",
                            [r["val_accuracy"] for r in rows], [r["bytes"] for r in rows], [r[lat] for r in rows],
                            costs, _where(artifact, plan.run), [_where(r, plan.run) for r in runs]))

    tcost = cost([plan.run])
    add("teacher", "teacher", "teacher", "float", [plan.run], [teacher], tcost)
    add(f"teacher int8 ({plan.teacher_mode})", "teacher", "teacher", plan.teacher_mode, [plan.run], [teacher], tcost)
    for key, name in (("alone", "student alone"), ("distilled", "distilled student")):
        group = [t for t in students if t.key == key]
        runs = [plan.runs_dir / t.run_id for t in group]
        found = [reports[t.run_id] for t in group]
        add(name, "student", key, "float", runs, found, cost(runs))
        add(f"{name} int8 ({plan.student_mode})", "student", key, plan.student_mode, runs, found, cost(runs))
    skipped = []
    if qats:
        runs = [plan.runs_dir / t.run_id for t in qats]
        base = cost(plan.runs("distilled"))
        add("distilled student QAT int8", "student", "qat", "qat-convert", runs,
            [reports[t.run_id] for t in qats], add_costs(base, cost(runs)))
    else:
        skipped.append({"name": "distilled student QAT int8", "reason": plan.qat_skipped})
    mark_pareto(points)

    s = plan.student
    report = {
        "run": str(plan.run), "teacher": {"model": plan.teacher.model.name,
                                          "factory_args": plan.teacher.model.factory_args},
        "student": {"source": plan.student_source, "model": s.model.name, "factory_args": s.model.factory_args},
        "seeds": plan.seeds, "length": plan.length, "int8_mode": plan.student_mode,
        "latency_measured": "compiled" if plan.compile_too else "eager", "batch": teacher["batch"],
        "repeats": plan.repeats, "machine": teacher["machine"],
        "axes": {"accuracy": "max", "bytes": "min", "latency_ms": "min"},
        "points": points, "skipped": skipped,
    }
    return report


def write_frontier(plan: Plan, report: dict[str, Any]) -> None:
    """frontier.json and frontier.md, each replaced atomically."""
    write_json_atomic(plan.out / FRONTIER_JSON, report)
    text = markdown(report)
    write_atomic(plan.out / FRONTIER_MD, lambda f: f.write(text.encode()))
