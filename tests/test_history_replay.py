"""The fast replay (orjson, step events folded in bulk) gives the history the plain fold gives.

The reference is written here, as the cockpit folded events before the speed-up: every line
through `json.loads` (contracts.events.decode_event) and `RunHistory.apply`, one event at a time.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from cockpit.history import RunHistory, Series
from cockpit.link import RunLink
from contracts.events import decode_event, encode_event, make_event

RECORDED = Path(__file__).parent / "data" / "recorded_run"


def plain_fold(path: Path) -> RunHistory:
    history = RunHistory(run=path.parent)
    for line in path.read_bytes().split(b"\n"):
        event = decode_event(line) if line else None
        if event is not None:
            history.apply(event)
    return history


def series_of(history: RunHistory) -> dict[str, Series]:
    """Every Series the history keeps (a series added later is compared too)."""
    found = {name: value for name, value in vars(history).items() if isinstance(value, Series)}
    found.update({f"part:{name}": s for name, s in history.parts.items()})
    return found


def assert_same(fast: RunHistory, plain: RunHistory) -> None:
    a, b = series_of(fast), series_of(plain)
    assert sorted(a) == sorted(b)
    for name in a:
        sa, sb = a[name], b[name]
        assert sa.points() == sb.points(), name  # point by point, bit for bit
        assert (sa.weights, sa.stride, sa.pending) == (sb.weights, sb.stride, sb.pending), name
    rest = [name for name, value in vars(plain).items() if not isinstance(value, Series) and name != "parts"]
    assert "last_step" in rest and "ema" in rest and "events_seen" in rest
    for name in rest:  # everything else the history keeps, a field added later too
        assert getattr(fast, name) == getattr(plain, name), name


def test_the_recorded_run_with_a_resume_replays_to_the_same_series(tmp_path: Path):
    run = tmp_path / RECORDED.name
    shutil.copytree(RECORDED, run)
    plain = plain_fold(run / "events.jsonl")
    assert any(e.get("type") == "resume" for e in map(json.loads, (run / "events.jsonl").read_text().splitlines()))
    link = RunLink(run)
    link.poll()
    assert len(plain.loss) > 10
    assert_same(link.history, plain)


def long_run(n: int, seed: int = 0) -> list[str]:
    """Step events with parts, NaN and integer values, evals, logs, and two resumes (one mid-bucket)."""
    rng = random.Random(seed)
    lines, step = [encode_event(make_event("state", t=0, state="running", step=0))], 0
    crashes = {7_001, 15_333}
    while step < n:
        step += 1
        loss = rng.choice([rng.random(), rng.random(), float("nan"), 2]) if step % 97 == 0 else rng.random()
        fields = dict(step=step, epoch=step // 500, loss=loss, lr=1e-3 * rng.random(), samples_per_s=900.0)
        if step % 3:
            fields["losses"] = {"ce": rng.random(), "kd": rng.random()}
        if step % 211 == 0:
            fields.pop("samples_per_s")
        lines.append(encode_event(make_event("step", t=step, **fields)))
        if step % 500 == 0:
            lines.append(encode_event(make_event("eval", t=step, step=step, epoch=step // 500,
                                                 metrics={"loss": rng.random(), "accuracy": rng.random()})))
        if step in crashes:  # a crash: resume from an earlier checkpoint, recompute
            crashes.discard(step)
            lines.append(encode_event(make_event("log", t=step, level="warning", message="engine died")))
            step -= 777
            lines.append(encode_event(make_event("resume", t=step, step=step, epoch=0, checkpoint=f"c{step}")))
    lines.append("not json\n")
    lines.append(encode_event(make_event("state", t=n, state="finished", step=n)))
    return lines


def test_a_long_history_with_resumes_folds_the_same_and_follows_without_gap_or_duplicate(tmp_path: Path):
    lines = long_run(30_000)
    path = tmp_path / "events.jsonl"
    cut = len(lines) * 2 // 3
    path.write_text("".join(lines[:cut]) + lines[cut][:17])  # the engine is mid-write
    link = RunLink(tmp_path)
    link.poll()
    with open(path, "a") as f:
        f.write(lines[cut][17:] + "".join(lines[cut + 1:]))
    link.poll()  # following after the replay
    assert_same(link.history, plain_fold(path))
    assert len(link.history.parts["ce"]) > 100 and link.history.loss.stride > 1


def test_series_extend_is_add_one_point_at_a_time():
    rng = random.Random(3)
    for _ in range(200):
        capacity = rng.choice([4, 5, 16, 64])
        one, bulk, x = Series(capacity), Series(capacity), 0
        for _ in range(rng.randint(1, 6)):
            n = rng.randint(0, 400)
            xs, ys = [float(x + k) for k in range(n)], [rng.random() for _ in range(n)]
            x += n
            for p in zip(xs, ys):
                one.add(*p)
            bulk.extend(xs, ys)
            if rng.random() < 0.3:
                cut = rng.uniform(0, x)
                one.drop_after(cut), bulk.drop_after(cut)
            assert (one.xs, one.ys, one.weights, one.stride, one.pending) == \
                   (bulk.xs, bulk.ys, bulk.weights, bulk.stride, bulk.pending)


# ---- steps.f64: the engine's step numbers beside events.jsonl ------------------------------

def engine_session(path: Path, events: list[dict]) -> None:
    """One engine session writing through the events sink (which keeps steps.f64)."""
    from engine.telemetry.sinks import EventsFile

    sink = EventsFile(path, rate=1e12)
    for event in events:
        sink.emit(event)
    sink.close()


def session_events(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_the_series_file_replays_the_same_history_and_following_goes_on(tmp_path: Path):
    from cockpit import series_file

    events = session_events(long_run(30_000))
    cut = len(events) // 2
    path = tmp_path / "events.jsonl"
    engine_session(path, events[:cut])
    with open(path, "a") as f:
        f.write('{"v":1,"t":1,"type":"step","st')  # a killed engine's torn line
    engine_session(path, events[cut:cut + 5000])  # a resumed session appends (after ending that line)
    assert (tmp_path / "steps.f64").stat().st_size > 0 and json.loads((tmp_path / "steps.json").read_text())["parts"]
    link = RunLink(tmp_path)
    assert series_file.replay(tmp_path) is not None  # the file matches: it is used
    link.poll()
    engine_session(path, events[cut + 5000:])  # following after the replay
    link.poll()
    assert_same(link.history, plain_fold(path))


def test_a_series_file_that_does_not_match_the_events_is_not_trusted(tmp_path: Path):
    from cockpit import series_file

    events = session_events(long_run(10_000))
    path = tmp_path / "events.jsonl"
    engine_session(path, events)
    kept = path.read_bytes()
    path.write_bytes(kept[: len(kept) // 2])  # events.jsonl shorter than the records say
    assert series_file.replay(tmp_path) is None
    assert kept.count(b'"type":"step","step":10000,') == 1
    path.write_bytes(kept.replace(b'"step":10000,', b'"step":10009,'))  # same length, another last step
    assert series_file.replay(tmp_path) is None
    path.write_bytes(kept)
    (tmp_path / "steps.json").write_text('{"version": 2}')
    assert series_file.replay(tmp_path) is None
    link = RunLink(tmp_path)
    link.poll()
    assert_same(link.history, plain_fold(path))


def test_every_step_series_of_the_history_is_a_column_of_steps_f64():
    """A step series the history folds but steps.f64 does not record would make the fast replay
    drop it: the history's declaration is checked against contracts.steps.COLUMNS on import."""
    import pytest

    from cockpit import step_fold
    from contracts.steps import COLUMNS

    assert {key for _, key in step_fold.STEP_SERIES} <= set(COLUMNS)
    assert all(isinstance(getattr(RunHistory(), attr), Series) for attr, _ in step_fold.STEP_SERIES)
    step_fold.check_columns()
    with pytest.raises(RuntimeError, match="steps_per_s"):  # a series added without its column
        step_fold.check_columns((*step_fold.STEP_SERIES, ("speed", "steps_per_s")))
    with pytest.raises(RuntimeError, match="accuracy"):  # a column dropped from the file
        step_fold.check_columns(columns=[c for c in COLUMNS if c != "accuracy"])
