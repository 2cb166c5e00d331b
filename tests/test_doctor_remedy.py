"""The doctor's remedy: it names a value, `resume --set` applies it exactly, the run directory and
the events keep the change, and the cockpit's `f` confirms it and resumes with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import engine_env, events_of, only_run, run_engines
from engine.telemetry.doctor import Diagnosis, suggest
from test_doctor import SLOW_DATA, config


def test_the_doctor_names_a_value():
    assert suggest("input", 0, False, 64, on_gpu=False, cpus=4) == ("data.num_workers", 0, 3)
    assert suggest("input", 0, False, 64, on_gpu=False, cpus=64) == ("data.num_workers", 0, 8)  # capped
    assert suggest("input", 0, False, 64, on_gpu=False, cpus=1) == ("data.num_workers", 0, 1)
    assert suggest("input", 8, False, 64, on_gpu=True, cpus=64) == ("data.pin_memory", False, True)
    assert suggest("input", 8, True, 64, on_gpu=True, cpus=64) is None
    # 64 samples peaked at 10 GiB of 80: 85% of 80 GiB holds 435 of them, down to a multiple of 8
    assert suggest("communication", 1, False, 64, True, 10 * 2**30, 80 * 2**30) == ("train.batch_size", 64, 432)
    assert suggest("communication", 1, False, 64, False) is None  # no measured memory on the CPU
    assert suggest("compute", 0, False, 64, False) is None
    d = Diagnosis("input", 0.8, "data.num_workers", "raise it", value=3, current=0)
    assert "set data.num_workers = 3 (now 0" in d.message()


def test_resume_with_a_new_num_workers_is_exact_and_recorded(tmp_path: Path, monkeypatch):
    (tmp_path / "slowdata.py").write_text(SLOW_DATA)
    env = engine_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    cfg = config('name = "slowdata:make"\nfactory_args = { delay = 0.004 }',
                 'name = "small_cnn"\nfactory_args = { width = 4 }')
    cfg = cfg.replace("max_steps = 12", "max_steps = 6").replace("every_steps = 2", "every_steps = 1")
    (tmp_path / "slow.toml").write_text(cfg.replace("deterministic = false", "deterministic = true"))
    done = run_engines({"first": {"args": ["run", str(tmp_path / "slow.toml"), "--runs-dir", str(tmp_path / "a")],
                                  "env": env}})
    assert done["first"].returncode == 0, done["first"].stderr[-3000:]
    run_a = only_run(tmp_path / "a")
    doctors = [e for e in events_of(run_a) if e["type"] == "doctor"]
    assert doctors and doctors[-1]["bound"] == "input"
    assert doctors[-1]["field"] == "data.num_workers" and doctors[-1]["current"] == 0 and doctors[-1]["value"] >= 1
    run_b = tmp_path / "b" / run_a.name
    shutil.copytree(run_a, run_b)  # the same checkpoint, resumed without the change: the reference
    more = ["--set", "train.max_steps=12"]
    done = run_engines({
        "fixed": {"args": ["resume", str(run_a), *more, "--set", "data.num_workers=2"], "env": env},
        "reference": {"args": ["resume", str(run_b), *more], "env": env}})
    for name, proc in done.items():
        assert proc.returncode == 0, (name, proc.stderr[-3000:])

    def losses(run: Path) -> dict[int, float]:
        after = False
        out = {}
        for e in events_of(run):
            after = after or e["type"] == "resume"
            if after and e["type"] == "step":
                out[e["step"]] = e["loss"]
        return out

    fixed, reference = losses(run_a), losses(run_b)
    assert sorted(fixed) == list(range(7, 13))
    assert fixed == reference  # the loader's workers change nothing the model sees
    changes = [e for e in events_of(run_a) if e["type"] == "config_change"]
    assert [(c["step"], c["changes"]["data.num_workers"], c["exact"]) for c in changes] == [(6, [0, 2], True)]
    assert "data.num_workers" not in next(e for e in events_of(run_b) if e["type"] == "config_change")["changes"]
    record = [json.loads(line) for line in (run_a / "overrides.jsonl").read_text().splitlines()]
    assert record[0]["step"] == 6 and record[0]["changes"]["data.num_workers"] == [0, 2]
    assert "num_workers = 2" in (run_a / "config.toml").read_text()

    # the engine kept steps.f64 beside the events across both sessions: the fast replay matches
    from cockpit import series_file
    from cockpit.link import RunLink
    from test_history_replay import assert_same, plain_fold

    monkeypatch.setattr(series_file, "MIN_RECORDS", 1)
    link = RunLink(run_a)
    assert series_file.replay(run_a) is not None
    link.poll()
    assert_same(link.history, plain_fold(run_a / "events.jsonl"))


# ---- the cockpit's f ------------------------------------------------------------------------

def test_f_confirms_the_doctors_change_then_resumes_with_it(tmp_path: Path, monkeypatch):
    import asyncio

    from cockpit import launcher
    from cockpit.app import CockpitApp
    from cockpit.screens.modals import ConfirmFix
    from cockpit.settings import Settings
    from cockpit_helpers import copy_recorded, until
    from contracts.events import encode_event, make_event

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    run = copy_recorded(tmp_path)  # a finished run: nothing to stop first
    with open(run / "events.jsonl", "a") as f:
        f.write(encode_event(make_event("doctor", t=1767268900.0, step=60, bound="input", share=0.81,
                                        field="data.num_workers", remedy="raise it", message="input-bound",
                                        value=3, current=0)))
    calls = []
    monkeypatch.setattr(launcher, "resume_run", lambda r, overrides=(): calls.append((r, list(overrides)))
                        or launcher.Launch(2, None, "refused in the test"))
    app = CockpitApp(run.parent, run=run, user=Settings(), poll_gpu=False)

    async def go():
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.link is not None and app.link.history.doctor.get("value") == 3,
                        what="the doctor's verdict")
            await pilot.press("f")
            await until(pilot, lambda: isinstance(app.screen, ConfirmFix), what="the confirmation")
            text = str(app.screen.query_one("#fix-text").render())
            assert "data.num_workers: 0 \u2192 3" in text and "input-bound: 81%" in text
            assert "breaks exact resume" not in text
            await pilot.press("y")
            await until(pilot, lambda: calls, what="the resume")

    asyncio.run(go())
    assert calls == [(run, ["data.num_workers=3"])]


def test_a_batch_size_change_says_it_breaks_exact_resume():
    from cockpit.screens.modals import ConfirmFix
    from cockpit.screens.run_control import INEXACT_ON_RESUME, toml_value
    from engine.run.session import INEXACT_ON_RESUME as ENGINE_LIST

    assert INEXACT_ON_RESUME == ENGINE_LIST
    assert toml_value(True) == "true" and toml_value(3) == "3"
    box = ConfirmFix("run", "train.batch_size", "64", "432", exact="train.batch_size" not in INEXACT_ON_RESUME)
    assert not box.exact


def test_history_says_what_changed_and_whether_it_helped():
    from cockpit.history import RunHistory
    from contracts.events import make_event

    h = RunHistory()
    h.apply(make_event("doctor", step=6, bound="input", share=0.8, field="data.num_workers", value=3, current=0))
    h.apply(make_event("resume", step=6, epoch=0, checkpoint="step-00000006.pt"))
    h.apply(make_event("config_change", step=6, changes={"data.num_workers": [0, 3]}, exact=True))
    h.apply(make_event("doctor", step=8, bound="compute", share=0.7, field="train.precision"))
    logs = [m for _, m in h.logs]
    assert "step 6: data.num_workers 0 \u2192 3" in logs
    assert "doctor after the change: compute-bound 70% (before it: input-bound 80%)" in logs
    assert h.changes[-1]["before"]["bound"] == "input"


@pytest.mark.slow
def test_f_on_a_live_input_bound_run_stops_it_and_resumes_it_with_the_change(tmp_path: Path, monkeypatch):
    """End to end: a real engine the doctor calls input-bound, `f` and `y` in the cockpit, the real
    stop (with its checkpoint) and the real detached resume with --set data.num_workers."""
    import asyncio

    from cockpit.app import CockpitApp
    from cockpit.screens.modals import ConfirmFix
    from cockpit.settings import Settings
    from cockpit_helpers import until
    from conftest import start_engine, status_of, wait_for

    (tmp_path / "slowdata.py").write_text(SLOW_DATA)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{engine_env()['PYTHONPATH']}")  # the detached resume too
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    cfg = config('name = "slowdata:make"\nfactory_args = { delay = 0.004 }',
                 'name = "small_cnn"\nfactory_args = { width = 4 }')
    (tmp_path / "slow.toml").write_text(cfg.replace("max_steps = 12", "max_steps = 100000"))
    proc = start_engine("run", str(tmp_path / "slow.toml"), "--runs-dir", str(tmp_path / "runs"))
    runs = tmp_path / "runs"
    run = wait_for(lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), what="run dir")
    wait_for(lambda: (run / "events.jsonl").is_file()  # the run directory comes a moment before its events
             and any(e["type"] == "doctor" and e.get("value") for e in events_of(run)), timeout=240,
             what="the doctor's verdict")
    app = CockpitApp(runs, run=run, user=Settings(), poll_gpu=False)

    async def go():
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.link is not None and app.link.history.doctor.get("value"),
                        timeout=60, what="the doctor's verdict in the cockpit")
            await pilot.press("f")
            # `y` only once the confirmation is up: on the run screen it toggles the loss chart's log scale
            await until(pilot, lambda: isinstance(app.screen, ConfirmFix), what="the confirmation")
            await pilot.press("y")
            await until(pilot, lambda: any(e["type"] == "config_change" for e in events_of(run)),
                        timeout=300, what="the resumed engine's config_change")

    try:
        asyncio.run(go())
        proc.communicate(timeout=120)
        assert proc.returncode == 3  # the first engine stopped with its checkpoint
        change = next(e for e in events_of(run) if e["type"] == "config_change")
        old, new = change["changes"]["data.num_workers"]
        assert old == 0 and new >= 1 and change["exact"] is True
        stopped_at = next(e for e in events_of(run) if e["type"] == "resume")["step"]
        assert change["step"] == stopped_at > 0
        wait_for(lambda: status_of(run).get("step", 0) > stopped_at, timeout=240, what="steps after the resume")
    finally:
        import os
        import signal

        if proc.poll() is None:
            proc.kill()
        pid = status_of(run).get("pid")
        if isinstance(pid, int) and pid != proc.pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---- every verdict is actionable: a value f applies, or plainly nothing -------------------------

def test_a_compute_bound_verdict_names_a_value_or_says_nothing_will_help():
    from engine.telemetry.doctor import nothing_to_change

    cpu = dict(num_workers=0, pin_memory=False, batch_size=64, on_gpu=False)
    # a CPU without native bf16: nothing in the config, and it says so
    assert suggest("compute", **cpu, precision="fp32", bf16=False, conv=True) is None
    words = nothing_to_change("compute", **cpu, precision="fp32")
    assert "nothing in the config will speed this up on this CPU" in words and "no native bf16" in words
    assert suggest("compute", **cpu, precision="fp32", bf16=True) == ("train.precision", "fp32", "bf16")
    assert suggest("compute", **cpu, precision="bf16", bf16=True, conv=True) is None
    gpu = dict(cpu, on_gpu=True)
    assert suggest("compute", **gpu, precision="fp32", bf16=True) == ("train.precision", "fp32", "bf16")
    assert suggest("compute", **gpu, precision="fp32", bf16=False) == ("train.precision", "fp32", "fp16")
    assert suggest("compute", **gpu, precision="bf16", bf16=True, conv=True) == ("train.channels_last", False, True)
    assert suggest("compute", **gpu, precision="bf16", bf16=True, conv=False) == ("train.compile", False, True)
    assert suggest("compute", **gpu, precision="bf16", conv=True, channels_last=True, compile=True) is None
    assert "nothing more in the config" in nothing_to_change("compute", **gpu, precision="bf16")
    # a pipeline: twice the micro-batches, else the next count that divides the batch, else nothing
    assert suggest("bubble", **cpu, microbatches=4) == ("distributed.microbatches", 4, 8)
    assert suggest("bubble", **dict(cpu, batch_size=12), microbatches=4) == ("distributed.microbatches", 4, 6)
    assert suggest("bubble", **dict(cpu, batch_size=12), microbatches=12) is None
    # every bound on every device, with every remedy taken: a value, or words that say nothing helps
    for bound in ("input", "communication", "compute", "bubble"):
        for on_gpu in (False, True):
            facts = dict(num_workers=64, pin_memory=True, batch_size=8, on_gpu=on_gpu, precision="bf16", bf16=True,
                         conv=True, channels_last=True, compile=True, microbatches=8)
            assert suggest(bound, **facts) is None, (bound, on_gpu)
            words = nothing_to_change(bound, **facts)
            assert words.startswith(("nothing", "no value to name")), (bound, on_gpu, words)
            d = Diagnosis(bound, 0.9, "x.y", words)
            assert d.message() == f"{bound}-bound: 90% of each step; {words}"


def test_f_and_the_pane_say_the_same_when_nothing_will_help(tmp_path: Path, monkeypatch):
    import asyncio

    from cockpit import launcher
    from cockpit.app import CockpitApp
    from cockpit.settings import Settings
    from cockpit.widgets.steptime_pane import StepTimePane
    from cockpit_helpers import copy_recorded, notes, until
    from contracts.events import encode_event, make_event
    from engine.telemetry.doctor import nothing_to_change

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    run = copy_recorded(tmp_path)
    words = nothing_to_change("compute", 0, False, 32, False, precision="fp32")
    verdict = Diagnosis("compute", 0.97, "train.precision", words)
    with open(run / "events.jsonl", "a") as f:
        f.write(encode_event(make_event("doctor", t=1767268900.0, step=60, bound="compute", share=0.97,
                                        field="train.precision", remedy=words, message=verdict.message())))
    calls = []
    monkeypatch.setattr(launcher, "resume_run", lambda r, overrides=(): calls.append(r)
                        or launcher.Launch(2, None, "refused in the test"))
    app = CockpitApp(run.parent, run=run, user=Settings(), poll_gpu=False)
    line = f"compute-bound: 97%; {words}"

    async def go():
        async with app.run_test(size=(160, 40)) as pilot:
            await until(pilot, lambda: app.link is not None and app.link.history.doctor.get("bound") == "compute",
                        what="the doctor's verdict")
            await until(pilot, lambda: "compute-bound" in app.query_one(StepTimePane).text.plain, what="the pane")
            assert line in " ".join(app.query_one(StepTimePane).text.plain.split())
            await pilot.press("f")
            await until(pilot, lambda: any("nothing for f to apply" in n for n in notes(app)), what="f's answer")
            (said,) = [n for n in notes(app) if "nothing for f to apply" in n]
            assert said == f"nothing for f to apply: {line}" and "(yet)" not in said

    asyncio.run(go())
    assert calls == []


def test_the_pane_shows_the_value_f_applies():
    from cockpit.widgets.steptime_pane import verdict_line

    assert verdict_line({"bound": "compute", "share": 0.9, "field": "train.precision", "value": "bf16",
                         "current": "fp32"}) == "compute-bound: 90%; set train.precision = 'bf16' (f applies it)"
    assert verdict_line({"bound": "input", "share": 0.5, "field": "data.pin_memory", "value": True}) == \
        "input-bound: 50%; set data.pin_memory = true (f applies it)"
