"""The cost meter: wall-clock billing across pause, stop, resume and SIGKILL, against hand computations.

Unit tests drive the meter with a hand-held clock; the end-to-end ones run real engines
(paused, stopped, resumed; killed with SIGKILL and resumed) and check the events' dollars
against the events' own times. Nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import popen_engine, TINY, engine_cmd, engine_env, events_of, only_run, run_engines, status_of, wait_for
from engine.cli import main as cli_main
from contracts.control import send_command
from contracts.events import encode_event, make_event
from engine.telemetry.cost import Carried, CostMeter, RunShape
from engine.telemetry.cost_ledger import carried, last_session
from engine.telemetry.cost_report import report, table
from engine.telemetry.prices import FixedPrice, Price

P = Decimal("3.6")  # USD per hour: a dollar is 1,000 seconds
SHAPE = RunShape(epochs=2, grad_accum=1, batch_size=32)  # 10 batches an epoch below: 20 steps


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Recorder:
    """Stands in for Telemetry: stamps each event with the meter's clock and keeps it."""

    def __init__(self, clock: Clock):
        self.clock, self.events = clock, []
        self.meter: CostMeter | None = None

    def __call__(self, type_: str, **fields) -> None:
        event = make_event(type_, t=self.clock(), **fields)
        self.events.append(event)

    def send(self, type_: str, **fields) -> None:
        """An engine event: recorded, then shown to the meter (as Telemetry fans out)."""
        self(type_, **fields)
        self.meter.emit(self.events[-1])

    def write(self, path: Path) -> None:
        with open(path, "a") as f:
            f.writelines(encode_event(e) for e in self.events)

    def costs(self) -> list[dict]:
        return [e for e in self.events if e["type"] == "cost"]


def session(clock: Clock, price=Price(P, "config"), carried_in: Carried | None = None, every_s: float = 2.0):
    rec = Recorder(clock)
    rec.meter = CostMeter(FixedPrice(price) if isinstance(price, Price) or price is None else price, rec, SHAPE,
                          carried_in, clock=clock, since=clock(), every_s=every_s, tick=False)
    return rec


def usd(seconds: float, price: Decimal = P) -> float:
    return float(price * Decimal(str(seconds)) / 3600)


def steps(rec: Recorder, clock: Clock, first: int, last: int, dt: float = 0.5) -> None:
    for n in range(first, last + 1):
        clock.t += dt
        rec.send("step", step=n, epoch=(n - 1) // 10, batches_per_epoch=10, train_s=n * dt)


def test_a_pause_and_an_evaluation_are_billed_like_training():
    clock = Clock()
    rec = session(clock)
    clock.t += 4.0  # start-up: imports, data, model
    rec.send("state", state="running", step=0)
    steps(rec, clock, 1, 10)  # 5 s
    clock.t += 3.0  # evaluation
    rec.send("eval", step=10, epoch=0, metrics={"loss": 1.0})
    rec.send("state", state="paused", step=10)
    clock.t += 100.0
    rec.meter.tick()  # the meter's own timer, while paused
    rec.send("state", state="running", step=10)
    steps(rec, clock, 11, 20)
    rec.send("state", state="finished", step=20)
    last = rec.costs()[-1]
    assert last["accumulated"] == pytest.approx(usd(4 + 5 + 3 + 100 + 5), abs=1e-12)
    assert last["projected"] == pytest.approx(last["accumulated"]) and last["remaining_steps"] == 0
    # per step: from training's start (1000 + 4) to step 20, evaluation and pause included
    per_step = usd(5 + 3 + 100 + 5) / 20
    assert last["per_epoch"] == pytest.approx(per_step * 10)
    assert last["per_1k_samples"] == pytest.approx(per_step * 1000 / 32)
    assert last["source"] == "config" and last["price_age_s"] is None and last["lost"] == 0
    paused = [e for e in rec.costs() if e["t"] == pytest.approx(1000 + 4 + 5 + 3)]
    assert paused, "a pause gets a cost event at once"


def test_events_are_bounded_and_projection_uses_the_measured_rate():
    clock = Clock()
    rec = session(clock, every_s=2.0)
    rec.send("state", state="running", step=0)
    steps(rec, clock, 1, 10, dt=0.01)  # 0.1 s: a fast loop
    costs = rec.costs()
    assert len(costs) == 1, "at most one cost event per every_s from steps"
    steps(rec, clock, 11, 12, dt=1.0)
    last = rec.costs()[-1]
    assert last["step"] == 12 and last["remaining_steps"] == 8
    per_step = usd(0.1 + 2.0) / 12
    assert last["projected"] == pytest.approx(last["accumulated"] + 8 * per_step)


def test_time_before_the_first_price_is_billed_at_that_price_and_spot_saves():
    clock = Clock()

    class Late:
        value: Price | None = None

        def price(self):
            return self.value

    late = Late()
    rec = session(clock, price=late)
    clock.t += 10
    rec.send("state", state="running", step=0)
    steps(rec, clock, 1, 4)
    assert not rec.costs(), "no cost event while no price is known"
    late.value = Price(Decimal("1.2"), "ec2 spot price history", checked_at=clock.t - 30, lifecycle="spot",
                       instance_type="g5.xlarge", on_demand=Decimal("1.006") * 4)
    clock.t += 1
    rec.send("state", state="finished", step=4)
    last = rec.costs()[-1]
    assert last["accumulated"] == pytest.approx(usd(13, Decimal("1.2")))
    assert last["savings"] == pytest.approx(usd(13, Decimal("4.024") - Decimal("1.2")))
    assert last["price_age_s"] == 31 and last["lifecycle"] == "spot" and last["on_demand_per_hour"] == 4.024


def test_a_changing_price_is_integrated_piecewise():
    clock = Clock()

    class Moving:
        value = Price(Decimal("1.0"), "ec2 spot price history", lifecycle="spot")

        def price(self):
            return self.value

    moving = Moving()
    rec = session(clock, price=moving)
    rec.send("state", state="running", step=0)
    clock.t += 100
    rec.meter.tick()
    moving.value = Price(Decimal("2.0"), "ec2 spot price history", lifecycle="spot")
    clock.t += 50
    rec.send("state", state="stopped", step=0)
    assert rec.costs()[-1]["accumulated"] == pytest.approx(usd(100, Decimal(1)) + usd(50, Decimal(2)))


def test_stop_then_resume_keeps_the_total_and_a_sigkill_prices_the_redone_steps(tmp_path: Path):
    events = tmp_path / "events.jsonl"
    clock = Clock()
    # session 1: trains to step 10, checkpoint at 10, stops cleanly
    one = session(clock)
    clock.t += 2
    one.send("state", state="running", step=0)
    steps(one, clock, 1, 10)
    one.send("checkpoint", step=10, path="x", reason="stop")
    one.send("state", state="stopped", step=10)
    one.write(events)
    total_1 = usd(2 + 5)
    assert carried(events, 10) == Carried(Decimal(str(one.costs()[-1]["accumulated"])), Decimal(0), Decimal(0), 0)
    # session 2 (a day later: the time between sessions is not billed), checkpoint at 14, killed at 17
    clock.t += 86400
    two = session(clock, carried_in=carried(events, 10))
    clock.t += 3
    two.send("resume", step=10, epoch=1, checkpoint="step-00000010.pt")
    two.send("state", state="running", step=10)
    steps(two, clock, 11, 14)
    t_14 = clock.t
    clock.t += 0.2  # the asynchronous write finishes a little later
    two.send("checkpoint", step=14, path="y", reason="periodic")
    steps(two, clock, 15, 17)
    t_17 = clock.t
    clock.t += 0.3
    two("log", level="info", message="the last thing it said")  # then SIGKILL: no final state
    two.write(events)
    # session 3 resumes from the checkpoint at 14: steps 15..17 are redone
    back = carried(events, 14)
    assert back.lost_steps == 3
    assert float(back.lost) == pytest.approx(usd(t_17 - t_14), abs=1e-12)
    # billed to the last sign of life: session 2 ran from its start to its last step event
    # (its last log line is not counted: a resumed session's warnings come before its resume)
    assert float(back.accumulated) == pytest.approx(total_1 + usd(3 + 0.2 + 4 * 0.5 + 3 * 0.5), abs=1e-12)
    clock.t += 600
    three = session(clock, carried_in=back)
    three.send("resume", step=14, epoch=1, checkpoint="step-00000014.pt")
    three.send("state", state="running", step=14)
    steps(three, clock, 15, 20)
    three.send("state", state="finished", step=20)
    last = three.costs()[-1]
    assert last["lost_steps"] == 3 and last["lost"] == pytest.approx(usd(t_17 - t_14), abs=1e-12)
    assert last["accumulated"] == pytest.approx(float(back.accumulated) + usd(6 * 0.5), abs=1e-12)


def test_the_ledger_reads_only_the_newest_session_backwards(tmp_path: Path):
    events = tmp_path / "events.jsonl"
    lines = [make_event("step", step=n, batches_per_epoch=10) for n in range(1, 5000)]
    lines += [make_event("cost", t=time.time(), accumulated=1.5, price_per_hour=0.0, step=4999,
                         step_accumulated=1.5, since=1.0)]
    events.write_text("".join(encode_event(e) for e in lines) + '{"v": 1, "t": 2, "ty')  # a torn last line
    s = last_session(events)
    assert s is not None and float(s.total()) == 1.5 and s.last_step["step"] == 4999


# ---- real engines -----------------------------------------------------------------------------


def launch(base: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    out = base / "engine-output.txt"
    with open(out, "w") as f:
        proc = popen_engine(args, stdout=f, stderr=subprocess.STDOUT)
    return proc, out


def alive_until(proc: subprocess.Popen, out: Path, predicate, what: str):
    def check():
        value = predicate()
        if not value and proc.poll() is not None:
            raise AssertionError(f"engine exited ({proc.returncode}) waiting for {what}:\n{out.read_text()[-3000:]}")
        return value
    return wait_for(check, timeout=120, what=what)


def sessions_of(events: list[dict]) -> list[list[dict]]:
    """The cost events of each session (sessions differ by `since`, the engine's start)."""
    by: dict[float, list[dict]] = {}
    for e in events:
        if e["type"] == "cost":
            by.setdefault(e["since"], []).append(e)
    return list(by.values())


def test_real_engines_pause_stop_resume_and_sigkill(tmp_path: Path):
    jobs = {}
    for name in ("paused", "killed"):
        base = tmp_path / name
        base.mkdir()
        (base / "tiny.toml").write_text(TINY)
        jobs[name] = (base, *launch(base, "run", str(base / "tiny.toml"), "--runs-dir", str(base / "runs"),
                                    "--set", "train.epochs=200", "--set", "cost.price_per_hour=3.6",
                                    "--set", "checkpoint.every_steps=100000"))
    runs = {}
    try:
        for name, (base, proc, out) in jobs.items():
            runs[name] = alive_until(proc, out, lambda b=base: (b / "runs").is_dir() and any((b / "runs").iterdir())
                                     and only_run(b / "runs"), "the run directory")
        # the kill: a checkpoint at step S, a few more steps, a pause (so the kill lands past S
        # whatever the machine's speed), then SIGKILL
        base, proc, out = jobs["killed"]
        run_k = runs["killed"]
        alive_until(proc, out, lambda: status_of(run_k).get("state") == "running" and status_of(run_k).get("step", 0) >= 2,
                    "training")
        sock_k = status_of(run_k)["socket"]
        saved = send_command(sock_k, "checkpoint")["step"]
        alive_until(proc, out, lambda: status_of(run_k).get("step", 0) >= saved + 3, "three more steps")
        assert send_command(sock_k, "pause")["state"] == "paused"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        # the pause: paused, a `cost` report of the live run, continue, stop
        base, proc, out = jobs["paused"]
        run_p = runs["paused"]
        alive_until(proc, out, lambda: status_of(run_p).get("state") == "running" and status_of(run_p).get("step", 0) >= 2,
                    "training")
        sock = status_of(run_p)["socket"]
        stopped_at_pause = send_command(sock, "pause")["step"]
        live = subprocess.run(engine_cmd("cost", str(run_p), "--json"), env=engine_env(), capture_output=True,
                              text=True, timeout=60)
        assert live.returncode == 0, live.stderr
        live_report = json.loads(live.stdout)
        assert live_report["state"] == "paused" and live_report["source"] == "config"
        time.sleep(2.5)  # long enough for the meter's own timer to bill the pause in an event
        assert send_command(sock, "continue")["state"] == "running"
        stop = send_command(sock, "stop")
        assert stop["ok"] and stop["state"] == "stopped"
        assert proc.wait(timeout=120) == 3
    finally:
        for _, proc, _ in jobs.values():
            if proc.poll() is None:
                proc.kill()
    stopped_at = status_of(run_p)["step"]
    killed_events = events_of(run_k)
    last_step = [e for e in killed_events if e["type"] == "step"][-1]
    results = run_engines({
        "paused": {"args": ["resume", str(run_p), "--set", f"train.max_steps={stopped_at + 8}"]},
        "killed": {"args": ["resume", str(run_k), "--set", f"train.max_steps={last_step['step'] + 8}"]},
    })
    for name, r in results.items():
        assert r.returncode == 0, (name, r.stderr[-3000:])

    # paused, stopped, resumed: each session billed from its start to its final state, the pause included
    evs = events_of(run_p)
    first, second = sessions_of(evs)
    paused_at = next(e["t"] for e in evs if e["type"] == "state" and e["state"] == "paused")
    continued = next(e["t"] for e in evs if e["type"] == "state" and e["state"] == "running" and e["t"] > paused_at)
    assert any(e["t"] >= paused_at and e["step"] == stopped_at_pause for e in first), "a pause's own cost event"
    assert [e for e in first if paused_at < e["t"] < continued], "the meter's timer bills a pause while it lasts"
    hand = sum(usd(s[-1]["t"] - s[0]["since"]) for s in (first, second))
    assert second[-1]["accumulated"] == pytest.approx(hand, abs=usd(0.01))
    assert second[0]["accumulated"] >= first[-1]["accumulated"], "a resumed run keeps its total"
    assert second[-1]["lost_steps"] == 0 and second[-1]["lost"] == 0
    started = next(e["t"] for e in evs if e["type"] == "state" and e["state"] == "running")
    assert first[0]["since"] < started, "billing starts with the process, before training"

    # killed: the steps between the last checkpoint and the last step event are redone, at what they cost
    evs = events_of(run_k)
    resume = next(e for e in evs if e["type"] == "resume")
    before = evs[:evs.index(resume)]
    redone_from = resume["step"]
    t_of = {e["step"]: e["t"] for e in before if e["type"] == "step"}
    assert last_step["step"] > redone_from, "the kill must land between checkpoints"
    after = [e for e in evs[evs.index(resume):] if e["type"] == "cost"]
    assert after[-1]["lost_steps"] == last_step["step"] - redone_from
    assert after[-1]["lost"] == pytest.approx(usd(t_of[last_step["step"]] - t_of[redone_from]), abs=usd(0.005))
    killed_session = [e for e in before if e["type"] == "cost"]
    billed_to = max(e["t"] for e in before if e["type"] != "log")
    assert after[0]["accumulated"] >= killed_session[-1]["accumulated"] + usd(billed_to - killed_session[-1]["t"]) - 1e-12

    # the command on the finished runs: a table and JSON
    rep = report(run_k)
    assert rep["state"] == "finished" and rep["lost_steps"] == after[-1]["lost_steps"]
    assert rep["accumulated"] == pytest.approx(after[-1]["accumulated"], abs=1e-9)
    est = rep["estimate"]
    assert est["label"] == "estimate" and est["instances"] and est["mfu_measured"] is False
    p5 = next(i for i in est["instances"] if i["instance_type"] == "p5.48xlarge")
    assert p5["whole_run_cost"] == pytest.approx(
        est["tflop_per_step"] * rep["total_steps"] / (0.4 * 989.0 * 8) / 3600 * 98.32, rel=1e-6)
    text = table(rep)
    assert "ESTIMATE" in text and "p5.48xlarge" in text and "lost" in text and "(config, fixed)" in text


def test_cost_command_refuses_what_is_not_a_run(tmp_path: Path, capsys):
    assert cli_main(["cost", str(tmp_path / "nope")]) == 2
    assert "no run directory" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.toml").write_text("")
    assert cli_main(["cost", str(tmp_path / "half")]) == 2
    assert "events.jsonl" in capsys.readouterr().err
    assert os.listdir(tmp_path / "half") == ["config.toml"], "read-only: nothing written"
