"""Telemetry sinks: bounded step-event rate, whole lines after a torn write."""

from __future__ import annotations

from pathlib import Path

from contracts.events import make_event, read_events
from engine.telemetry.sinks import Coalescer, EventsFile


def step(n: int) -> dict:
    return make_event("step", step=n, loss=1.0 / n)


def test_a_burst_of_step_events_is_coalesced_and_the_newest_wins():
    gate = Coalescer(rate=1.0)  # at most one step event a second
    written = []
    for n in range(1, 1001):
        written += gate.offer(step(n))
    assert [e["step"] for e in written] == [1], "a fast loop must not flood the file"
    written += gate.offer(make_event("eval", step=1000, epoch=0, metrics={"loss": 0.1}))
    assert [e["type"] for e in written] == ["step", "step", "eval"]
    assert written[1]["step"] == 1000, "the held-back step is flushed, newest first, before other events"


def test_events_file_closes_a_torn_line_left_by_a_killed_engine(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"v":1,"t":1,"type":"step","step":1,"loss":2.3}\n{"v":1,"t":2,"type":"st')
    sink = EventsFile(path, rate=10)
    sink.emit(make_event("resume", step=0, epoch=0, checkpoint="step-00000000.pt"))
    sink.close()
    events = list(read_events(path.read_text().splitlines()))
    assert [e["type"] for e in events] == ["step", "resume"]
