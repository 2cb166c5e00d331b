"""Attaching: replay then follow with no gap and no duplicate; bounded history; hostile lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cockpit.follower import EventFollower
from cockpit.history import RunHistory, Series
from cockpit.sanitize import clean
from contracts.events import encode_event, make_event


def step(n: int, loss: float = 1.0) -> str:
    return encode_event(make_event("step", step=n, epoch=0, loss=loss, lr=0.1, samples_per_s=100.0))


def test_replay_then_follow_has_no_gap_and_no_duplicate(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(step(n) for n in range(1, 101)))
    follower = EventFollower(path)
    seen = [e["step"] for e in follower.read()]
    with open(path, "a") as f:
        f.write(step(101) + step(102)[:20])  # the engine is mid-write
    seen += [e["step"] for e in follower.read()]
    with open(path, "a") as f:
        f.write(step(102)[20:] + step(103))
    seen += [e["step"] for e in follower.read()]
    assert seen == list(range(1, 104))


def test_malformed_long_and_unknown_lines_are_skipped(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    junk = ["not json", "[1,2]", '{"type": "step"}', "x" * 2_000_000,
            json.dumps({"v": 1, "t": 1, "type": "from-the-future", "x": 1})]
    path.write_text(step(1) + "\n".join(junk) + "\n" + step(2))
    h = RunHistory()
    for e in EventFollower(path).read():
        h.apply(e)
    assert h.loss.xs == [1.0, 2.0]
    assert h.events_seen == 3  # the two steps and the unknown type, which is ignored


def test_a_million_step_events_keep_memory_bounded_and_the_curve_shape():
    s = Series(capacity=4096)
    for n in range(1_000_000):
        s.add(n, 1.0 / (1 + n / 1000))
    xs, ys = s.points()
    assert len(xs) < 4096
    assert xs[-1] >= 999_000 and ys[0] > ys[len(ys) // 2] > ys[-1]


def test_resume_event_drops_recomputed_points():
    h = RunHistory()
    for n in range(1, 21):
        h.apply(make_event("step", step=n, epoch=0, loss=float(n), lr=0.1))
    h.apply(make_event("resume", step=15, epoch=0, checkpoint="step-00000015.pt"))
    for n in range(16, 21):
        h.apply(make_event("step", step=n, epoch=0, loss=float(n), lr=0.1))
    xs, _ = h.loss.points()
    assert xs == [float(n) for n in range(1, 21)]


def test_escape_sequences_and_control_characters_are_removed():
    hostile = "\x1b[2J\x1b]0;pwned\x07loss \x1b[31mred\x1b[0m [bold]markup[/bold]\x07"
    cleaned = clean(hostile)
    assert "\x1b" not in cleaned and "\x07" not in cleaned
    assert "[bold]markup[/bold]" in cleaned  # markup stays literal text


def test_checkpoint_memory_is_bounded_and_keeps_the_best():
    from cockpit.history import MAX_CHECKPOINTS

    h = RunHistory()
    h.apply(make_event("checkpoint", path="/r/step-00000001.pt", step=1, seconds=0.1, bytes=10, best=True))
    for n in range(2, 5000):
        h.apply(make_event("checkpoint", path=f"/r/step-{n:08d}.pt", step=n, seconds=0.1, bytes=10, best=False))
    assert len(h.checkpoints) == MAX_CHECKPOINTS + 1
    assert "/r/step-00000001.pt" in h.checkpoints and "/r/step-00004999.pt" in h.checkpoints


def test_each_named_loss_part_is_a_series_and_old_events_without_parts_still_fold():
    h = RunHistory()
    h.apply(make_event("step", step=1, epoch=0, loss=0.9, lr=0.1))  # an older engine: no `losses`
    for n in range(2, 6):
        h.apply(make_event("step", step=n, epoch=0, loss=1.0 / n, lr=0.1,
                           losses={"kd": 0.6 / n, "task": 0.4 / n}))
    h.apply(make_event("step", step=6, epoch=0, loss=0.2, lr=0.1, losses={"kd": "nan", "task": 0.05}))
    assert sorted(h.parts) == ["kd", "task"]
    xs, ys = h.parts["kd"].points()
    assert xs == [2.0, 3.0, 4.0, 5.0] and ys == pytest.approx([0.3, 0.2, 0.15, 0.12])  # the NaN is skipped
    assert h.parts["task"].points()[0] == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert h.loss.points()[0] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # the total, as before

    h.apply(make_event("resume", step=3, epoch=0, checkpoint="step-00000003.pt"))
    assert h.parts["kd"].points()[0] == [2.0, 3.0]  # recomputed points are dropped from every part

    h.apply(make_event("step", step=4, epoch=0, loss=0.3, losses=["not", "a", "dict"]))
    h.apply(make_event("step", step=5, epoch=0, loss=0.3, losses={f"p{i}": 1.0 for i in range(100)}))
    assert h.loss.points()[0][-2:] == [4.0, 5.0]
    assert len(h.parts) <= 16  # a hostile event cannot grow memory without bound
