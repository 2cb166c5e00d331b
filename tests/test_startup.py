"""Start-up: its phases (engine.telemetry.startup), logged once per session; the standard-library
TensorBoard writer that keeps tensorboard, protobuf and boto3 out of a run's start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import events_of, only_run, run_engine
from engine.telemetry import startup, tbfile


def test_phases_come_in_order_from_the_process_start_and_add_up():
    p = startup.phases()
    assert list(p)[0] == "interpreter" and list(p)[-1] == "total"
    assert all(v >= 0 for v in p.values())
    assert p["total"] == pytest.approx(sum(v for k, v in p.items() if k != "total"))
    with pytest.raises(ValueError):
        startup.mark("lunch")
    line = startup.describe({"interpreter": 0.1, "imports": 2.0, "build": 1.0, "first_step": 0.5, "total": 3.6})
    assert line == "startup: 3.60 s to the first step (interpreter 0.10 s, imports 2.00 s, build 1.00 s, first_step 0.50 s)"


def test_a_fresh_process_splits_its_start():
    code = ("import time; from engine.telemetry import startup; import json; "
            "startup.mark('imports'); startup.mark('build'); startup.mark('first_step'); "
            "startup.mark('imports', at=0.0); print(json.dumps(startup.phases()))")  # the first mark wins
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    import json

    p = json.loads(out.stdout)
    assert list(p) == ["interpreter", "imports", "build", "first_step", "total"]
    assert p["interpreter"] > 0 and p["total"] == pytest.approx(sum(p[k] for k in startup.PHASES))


def test_each_session_logs_its_start_up_once(tmp_path: Path, tiny_config: Path):
    cfg = tiny_config
    done = run_engine("run", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--set", "train.max_steps=12")
    assert done.returncode == 0, done.stderr[-3000:]
    events = events_of(only_run(tmp_path / "runs"))
    logs = [e for e in events if e["type"] == "log" and e["message"].startswith("startup: ")]
    assert len(logs) == 1
    phases = logs[0]["phases"]
    assert list(phases) == ["interpreter", "imports", "build", "first_step", "total"]
    assert all(v >= 0 for v in phases.values())
    assert phases["total"] == pytest.approx(sum(phases[k] for k in startup.PHASES), abs=0.01)
    where = events.index(logs[0])  # at the first step's boundary: after step 1's event, before step 2's
    assert all(e["step"] <= 1 for e in events[:where] if e["type"] == "step")
    assert any(e["type"] == "step" and e["step"] >= 2 for e in events[where:])


def test_the_engine_imports_no_tensorboard_package_to_write_its_scalars(tmp_path: Path):
    code = ("import sys; from pathlib import Path; from engine.telemetry.sinks import TensorBoard; "
            f"tb = TensorBoard(Path({str(tmp_path / 'tb')!r}), None); "
            "tb.emit({'type': 'step', 'step': 3, 'loss': 0.5}); tb.close(); "
            "print(sorted(m for m in ('tensorboard', 'google.protobuf', 'boto3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"


def test_the_scalar_writer_writes_what_tensorboard_reads_and_purges_like_summarywriter(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    for data in (b"", b"a", b"hello world", bytes(range(256))):
        assert tbfile._masked(data) == masked_crc32c(data)
    value = summary_pb2.Summary.Value(tag="train/loss", simple_value=0.25)
    assert tbfile.event(123.5, 7, scalar=("train/loss", 0.25)) == event_pb2.Event(
        wall_time=123.5, step=7, summary=summary_pb2.Summary(value=[value])).SerializeToString()
    start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    assert tbfile.event(step=6, session_start=True) == event_pb2.Event(step=6, session_log=start).SerializeToString()
    assert tbfile.event(step=6, file_version="brain.Event:2") == event_pb2.Event(
        step=6, file_version="brain.Event:2").SerializeToString()

    w = tbfile.ScalarWriter(tmp_path)
    for step in range(1, 11):
        w.add_scalar("train/loss", 1.0 / step, step)
    w.close()
    # a second file, as a resumed session writes (named after the first: the same second, a higher number)
    w = tbfile.ScalarWriter(tmp_path, purge_step=6)
    for step in range(6, 13):
        w.add_scalar("train/loss", 10.0 + step, step)
    w.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    points = [(s.step, s.value) for s in acc.Scalars("train/loss")]
    assert points == [(s, pytest.approx(1.0 / s)) for s in range(1, 6)] + [(s, 10.0 + s) for s in range(6, 13)]


ATEXIT_MODEL = '''
import atexit, os
import torch

def make(num_classes, in_channels, **_):
    atexit.register(lambda: open(os.environ["ATEXIT_MARK"], "w").write("ran"))
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * 64, num_classes))
'''


def test_a_finished_run_leaves_quickly_yet_runs_its_atexit_handlers(tmp_path: Path, tiny_config: Path):
    """engine.cli.leave: no module teardown, but the threads joined, atexit run, streams flushed."""
    from conftest import engine_env

    (tmp_path / "atexit_model.py").write_text(ATEXIT_MODEL)
    env = engine_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    marks = {}
    for name, extra in (("cold", {}), ("full", {"COCKPIT_FULL_EXIT": "1"})):
        marks[name] = tmp_path / f"{name}.mark"
        done = subprocess.run(
            [sys.executable, "-m", "engine.cli", "run", str(tiny_config), "--runs-dir", str(tmp_path / name),
             "--set", "train.max_steps=4", "--set", 'model.name="atexit_model:make"'],
            env={**env, **extra, "ATEXIT_MARK": str(marks[name])}, capture_output=True, text=True, timeout=240,
            cwd=Path(__file__).resolve().parent.parent)
        assert done.returncode == 0, done.stderr[-3000:]
        assert marks[name].read_text() == "ran"
        assert done.stdout.rstrip().splitlines()[-1].startswith("finished run directory")  # flushed
        assert events_of(only_run(tmp_path / name))[-1]["state"] == "finished"
