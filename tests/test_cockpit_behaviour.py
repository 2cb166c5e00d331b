"""What a user of the cockpit notices: hostile run files, a vanished engine, two cockpits on one
run, themes and key remapping, the runs list, and TensorBoard. Driven by Textual's Pilot."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
from pathlib import Path

import psutil
import pytest

from cockpit import settings as settings_mod
from cockpit.app import CockpitApp
from cockpit.gpu import GpuSampler
from cockpit.runs import pid_alive, read_status
from cockpit.settings import Settings
from cockpit.screens.runs_screen import RunsScreen
from cockpit.widgets.banner import RunBanner
from cockpit.widgets.checkpoints_pane import CheckpointsPane
from cockpit.widgets.cost_pane import CostPane
from cockpit.widgets.gpu_pane import GpuPane
from cockpit.widgets.log_pane import LogPane
from cockpit.widgets.steptime_pane import StepTimePane
from cockpit.widgets.throughput_pane import ThroughputPane
from cockpit_helpers import (ENGINE_PID, FIXED_NOW, N_EVENTS, RUN_NAME, FakeNvml, copy_recorded, notes,
                             until)
from conftest import run_engines

pytestmark = pytest.mark.timeout(120)

# Trains for minutes (400 epochs), starts quickly (no workers, no deterministic algorithms).
LIVE = """
[model]
name = "small_cnn"
factory_args = { width = 8 }
[data]
name = "digits"
num_workers = 0
[optim]
name = "sgd"
lr = 0.05
[train]
epochs = 400
batch_size = 32
deterministic = false
[checkpoint]
every_steps = 100000
keep_last = 100000  # the engine prunes to keep_last: a test must find its checkpoint still there
[logging]
every_steps = 5
status_every_s = 0.2
"""


@pytest.fixture(autouse=True)
def own_settings(tmp_path: Path, monkeypatch) -> Path:
    """Every test reads and writes its own settings file, never the user's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config" / "training-cockpit" / "settings.toml"


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, Path]:
    """Two detached engines, started side by side: "shared" (commands) and "doomed" (SIGKILL)."""
    base = tmp_path_factory.mktemp("live")
    (base / "live.toml").write_text(LIVE)
    names = ("shared", "doomed")
    done = run_engines({name: {"args": ["run", str(base / "live.toml"), "--runs-dir", str(base / name),
                                        "--detach"]} for name in names}, timeout=120)
    runs = {}
    for name in names:
        assert done[name].returncode == 0, done[name].stderr
        (runs[name],) = [p for p in (base / name).iterdir() if p.is_dir()]
    yield runs
    for run in runs.values():
        pid = read_status(run).get("pid")
        if pid_alive(pid) and read_status(run).get("state") not in ("stopped", "finished", "failed"):
            os.kill(pid, signal.SIGTERM)  # it checkpoints and stops
            try:
                psutil.Process(pid).wait(20)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired):
                pass


def attached(run: Path, **kwargs) -> CockpitApp:
    kwargs.setdefault("user", Settings())
    kwargs.setdefault("poll_gpu", False)
    return CockpitApp(run.parent, run=run, **kwargs)


# ---- hostile run files ------------------------------------------------------------------

ESC_CLEAR, OSC_TITLE = "\x1b[2J", "\x1b]0;owned\x07"
MARKUP = "[bold red]x[/]"
LINK = "[link=https://evil.example]click[/link]"
NAME = "exp [bold red]x [link=javascript:x]"


def ev(type_: str, t: float = 1767268800.0, **fields) -> str:
    return json.dumps({"v": 1, "t": t, "type": type_, **fields}) + "\n"


def hostile_run(root: Path) -> Path:
    run = root / NAME  # a run's name is any directory name, markup included
    run.mkdir(parents=True)
    (run / "config.toml").write_text("[model]\n")
    (run / "status.json").write_text(json.dumps({
        "pid": 10**30, "state": "running", "step": f"{ESC_CLEAR}[/] {MARKUP}", "host": socket.gethostname(),
        "loss": "NaN", "updated_at": "yesterday"}))
    lines = [
        ev("state", state="running", step=0, pid=-5),
        ev("log", level="warning", message=f"{OSC_TITLE}{ESC_CLEAR}{MARKUP} {LINK}"),
        "this is not JSON\n",
        '{"v": 1, "t": 1, "type": "step", "step": 1, "loss": 0.5\n',  # cut short
        "[1, 2, 3]\n",
        ev("log", level="info", message="y" * 100_000),
        "z" * 100_000 + "\n",
        ev("step", step=2, epoch="two", batch="?", batches_per_epoch=[], loss="nan", lr={},
           samples_per_s="fast", steps_per_s=None, eta_s="soon", time_data_s="x"),
        ev("step", step=3, epoch=0, batch=-10**30, batches_per_epoch=1, loss=0.9, lr=0.1,
           samples_per_s=100.0, steps_per_s=3.0, eta_s=5.0, time_data_s=0.1, time_compute_s=0.2),
        ev("resume", step=float("nan"), checkpoint=MARKUP),  # json writes NaN; a reader accepts it
        ev("eval", step=3, epoch=0, metrics=[MARKUP]),
        ev("checkpoint", path=f"{run}/checkpoints/[blink]ck[reverse].pt", step="three", bytes="big", t=1),
        ev("checkpoint", path=f"{run}/checkpoints/[blink]ck[reverse].pt", step=3, bytes="big", t="x"),
        ev("doctor", step=3, bound=f"{ESC_CLEAR}data", share="most", field=MARKUP, message=MARKUP),
        ev("cost", price_per_hour="free", accumulated=MARKUP, projected=None, currency=OSC_TITLE),
        ev("error", message=f"RuntimeError: {MARKUP}{ESC_CLEAR}",
           traceback=f"Traceback (most recent call last):\n  File \"{LINK}\", line 1\n"
                     f"{OSC_TITLE}RuntimeError: {MARKUP}{ESC_CLEAR}\x07\n"),
        ev("state", state="failed", step=3, reason=f"{MARKUP}{OSC_TITLE}", exit_code=1),
        '{"v": 1, "t": 2, "type": "log", "mess',  # the engine died mid-line
    ]
    (run / "events.jsonl").write_text("".join(lines))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "[blink]ck[reverse].pt").write_bytes(b"x")
    (run / "engine.log").write_text(
        f"{OSC_TITLE}start\n" + "w" * 100_000 + "\n"
        f"{OSC_TITLE}see {LINK}\n"
        f"warning: {ESC_CLEAR}{MARKUP}\x1b[31mred\x1b[0m\x08\n"
        f"Traceback (most recent call last): {MARKUP}\n")
    return run


async def test_hostile_run_files_are_shown_literally_and_do_not_crash(tmp_path: Path):
    run = hostile_run(tmp_path / "runs")
    no_nvml = GpuSampler(nvml=object())  # so the GPU pane samples the engine's pid with psutil
    app = attached(run, clock=lambda: FIXED_NOW, poll_gpu=True, gpu=no_nvml)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.link.history.state == "failed", what="the failed state")
        await pilot.pause(1.2)  # a few refreshes of every pane
        banner = app.query_one(RunBanner).text.plain
        log = app.query_one(LogPane).text.plain
        assert "FAILED" in banner and NAME in banner
        assert f"RuntimeError: {MARKUP}" in banner and LINK in banner  # the traceback's tail, literally
        assert MARKUP in log and LINK in log
        for pane in (RunBanner, LogPane, CostPane, CheckpointsPane, ThroughputPane, StepTimePane, GpuPane):
            text = app.query_one(pane).text.plain
            assert "\x1b" not in text and "\x07" not in text and "\x08" not in text, pane.__name__
        assert f"change {MARKUP}" in app.query_one(StepTimePane).text.plain  # the doctor's verdict
        assert app.link.history.loss.points() == ([3.0], [0.9])  # the NaN resume dropped nothing
        assert "ep 1 " + "░" * 10 in app.query_one(ThroughputPane).text.plain  # batch -1e30: an empty bar
        assert "0.0000  so far" in app.query_one(CostPane).text.plain  # non-numbers shown as nothing
        assert max(len(line) for line in log.splitlines()) <= 120  # the 100k line is cut to the pane

        await pilot.press("l")  # the runs list shows the hostile status.json literally
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs screen")
        table = app.screen.query_one("#runs")
        await until(pilot, lambda: table.row_count == 1, what="the runs list")
        cells = [c.plain for c in table.get_row_at(0)]
        assert cells[0] == NAME and cells[2] == f"[/] {MARKUP}"  # "[/]" alone is a markup error
        assert cells[1] == "exited"  # status.json says running, and no process has that pid
        await pilot.press("l", "s")  # the stop confirmation names the run literally
        assert NAME in str(app.screen.query_one("Label").render())
        await pilot.press("n")
        await pilot.pause(1.2)  # two more refreshes, the runs list included
    assert app.return_code in (None, 0)


# ---- a vanished engine ------------------------------------------------------------------

async def test_engine_killed_shows_exited_unexpectedly_and_the_app_keeps_working(engines):
    run = engines["doomed"]
    app = attached(run)
    async with app.run_test(size=(100, 30)) as pilot:
        h = lambda: app.link.history  # noqa: E731
        await until(pilot, lambda: h().state == "running" and h().last_step, timeout=30, what="running")
        os.kill(read_status(run)["pid"], signal.SIGKILL)
        banner = app.query_one(RunBanner)
        await until(pilot, lambda: "engine exited unexpectedly" in banner.text.plain, timeout=10,
                    what="the banner to notice")
        # the banner can show it (at a pane refresh) before the EngineVanished message is handled
        await until(pilot, lambda: any("the engine exited unexpectedly" in n and "press r" in n
                                       for n in notes(app)), timeout=10, what="the notification")

        assert app.current_mode == "run"
        await pilot.press("l")  # the runs list is a screen of its own
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs screen")
        runs = app.screen.query_one("#runs")
        await until(pilot, lambda: runs.row_count == 1, what="the runs list")
        assert runs.get_row_at(0)[1].plain == "exited"  # status.json says running; its pid is gone


# ---- two cockpits, one engine -----------------------------------------------------------

async def test_two_cockpits_on_one_run_both_drive_it(engines):
    run = engines["shared"]
    one, two = attached(run), attached(run)
    async with one.run_test(size=(100, 30)) as p1, two.run_test(size=(100, 30)) as p2:
        for pilot, app in ((p1, one), (p2, two)):
            await until(pilot, lambda: app.link.history.state == "running", timeout=30, what="running")

        await p1.press("p")
        await until(p1, lambda: any(n.startswith("paused at step") for n in notes(one)), what="paused")
        await until(p2, lambda: two.link.history.state == "paused", what="the other cockpit to see it")
        await p2.press("p")  # the second cockpit continues what the first paused
        await until(p2, lambda: any(n.startswith("running at step") for n in notes(two)), what="continued")
        await until(p1, lambda: one.link.history.state == "running", what="the first cockpit to see it")

        replies = await asyncio.gather(asyncio.to_thread(one.link.send, "status"),
                                       asyncio.to_thread(two.link.send, "status"))
        assert all(r["ok"] and r["state"] in ("running", "checkpointing") for r in replies), replies


# ---- themes and keys --------------------------------------------------------------------

async def test_ctrl_t_cycles_the_theme_and_a_new_cockpit_remembers_it(tmp_path: Path, own_settings: Path):
    run = copy_recorded(tmp_path)
    app = CockpitApp(run.parent, run=run, poll_gpu=False)  # the user's settings: none yet
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.theme == "cockpit-dark"
        assert not own_settings.exists(), "starting up is not a choice: nothing is written"
        await pilot.press("ctrl+t")
        assert app.theme == "cockpit-light"
        assert str(app.screen.styles.background.hex).upper() == "#F7F7F4"
    assert settings_mod.load().theme == "cockpit-light"
    assert 'theme = "cockpit-light"' in own_settings.read_text()

    again = CockpitApp(run.parent, run=run, poll_gpu=False)
    async with again.run_test(size=(80, 24)) as pilot:
        assert again.theme == "cockpit-light"
        await pilot.press("ctrl+t")
        assert again.theme == "cockpit-contrast"  # and round it goes
    assert settings_mod.load().theme == "cockpit-contrast"


async def test_the_step_time_bar_takes_its_colours_from_the_theme(tmp_path: Path):
    run = copy_recorded(tmp_path)
    app = attached(run, clock=lambda: FIXED_NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(StepTimePane)

        def bar_colours() -> set[str]:
            bar_end = pane.text.plain.index("\n")
            return {str(s.style) for s in pane.text.spans if s.end <= bar_end}

        await until(pilot, lambda: "█" in pane.text.plain, what="the step-time bar")
        dark = app.theme_variables
        assert bar_colours() == {dark["steptime-data"], dark["steptime-compute"], dark["steptime-optim"]}
        await pilot.press("ctrl+t")
        light = app.get_theme("cockpit-light").variables
        assert light["steptime-compute"] != dark["steptime-compute"]
        await until(pilot, lambda: light["steptime-compute"] in bar_colours(), what="the light theme's colours")
        assert bar_colours() == {light["steptime-data"], light["steptime-compute"], light["steptime-optim"]}

async def test_a_remapped_key_triggers_its_action(engines):
    run = engines["shared"]
    app = attached(run, user=Settings(keys={"checkpoint": "x"}))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.link.history.state == "running", timeout=30, what="running")
        await pilot.press("c")  # no longer the checkpoint key
        await pilot.pause(0.3)
        # (an engine alert, such as a loss spike on the long run, may come at any time: not ours)
        assert not app.run_screen.checkpoint_in_flight and not [n for n in notes(app) if "alert" not in n]
        await pilot.press("x")
        await until(pilot, lambda: any(n.startswith("checkpoint saved at step") for n in notes(app)),
                    what="the checkpoint")
        step = int(next(n for n in notes(app) if "saved at step" in n).split("step ")[1].split()[0])
        assert (run / "checkpoints" / f"step-{step:08d}.pt").exists()
        await pilot.press("question_mark")  # the help screen lists the key the user chose
        assert "x" in [key for key, description, _ in app.screen.rows if description == "Checkpoint"]


# ---- the runs list ----------------------------------------------------------------------

async def test_runs_list_shows_runs_and_enter_attaches_the_highlighted_one(tmp_path: Path):
    run = copy_recorded(tmp_path)
    older = run.parent / "20251231-090000-small_cnn-old0"
    shutil.copytree(run, older)
    app = CockpitApp(run.parent, user=Settings(), poll_gpu=False, clock=lambda: FIXED_NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.current_mode == "runs", "started without a run: the runs list comes first"
        table = app.query_one("#runs")
        assert app.link is None, "no run is followed until one is chosen"
        rows = [[c.plain for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert [r[:4] for r in rows] == [[RUN_NAME, "finished", "60", "0.5911"],
                                         [older.name, "finished", "60", "0.5911"]]
        assert rows[0][4:6] == ["0.744", "2m"]  # best accuracy of the last eval; age by the clock

        await pilot.press("down")
        table.refresh_runs()  # the 2-second re-read must not move the cursor back to the top
        await pilot.pause()
        assert table.cursor_row == 1
        await pilot.press("enter")
        await until(pilot, lambda: app.link is not None and app.link.history.events_seen == N_EVENTS,
                    what="the history")
        await pilot.pause(0.3)
        assert app.link.run == older
        assert app.current_mode == "run"
        assert app.run_screen.query_one(RunBanner).text.plain.strip().startswith(f"{older.name}  FINISHED")
        await pilot.press("l")  # and back: the list is re-read, the cursor still on that run
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs screen")
        assert table.cursor_row == 1


async def test_the_command_palette_runs_the_screens_actions(tmp_path: Path):
    run = copy_recorded(tmp_path)
    app = attached(run, clock=lambda: FIXED_NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.current_mode == "run"
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press(*"Runs", "enter")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs list")
        assert app.screen.query_one("#runs").row_count == 1

# ---- GPU pane, polled -------------------------------------------------------------------

async def test_gpu_pane_polls_nvml_and_highlights_the_engine(tmp_path: Path):
    run = copy_recorded(tmp_path)
    fake = FakeNvml()
    app = attached(run, poll_gpu=True, gpu=GpuSampler(nvml=fake), clock=lambda: FIXED_NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(GpuPane)
        await until(pilot, lambda: "GPU1" in pane.text.plain, what="a GPU sample")
        text = pane.text
        assert fake.initialised and "GPU0" in text.plain and "GPU1   3% 0.5/80 GiB" in text.plain
        engine_line = next(line for line in text.split() if f"pid {ENGINE_PID}" in line.plain)
        other_line = next(line for line in text.split() if "pid 4242" in line.plain)
        assert any(str(s.style) == "reverse" for s in engine_line.spans)
        assert not any(str(s.style) == "reverse" for s in other_line.spans)



async def test_gpu_pane_highlights_every_rank_of_a_ddp_run(tmp_path: Path):
    """With several processes the engine's step events carry world_size and status.json lists
    every rank's pid; the GPU pane marks all of them as the run's own."""
    run = copy_recorded(tmp_path)
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    (run / "events.jsonl").write_text("".join(
        json.dumps({**e, "world_size": 2} if e["type"] == "step" else e) + "\n" for e in events))
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "rank_pids": [ENGINE_PID, 4242]}))
    app = attached(run, poll_gpu=True, gpu=GpuSampler(nvml=FakeNvml()), clock=lambda: FIXED_NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(GpuPane)
        await until(pilot, lambda: "pid 4242" in pane.text.plain and any(
            str(s.style) == "reverse" for line in pane.text.split() if "pid 4242" in line.plain
            for s in line.spans), what="rank 1's pid highlighted")
        engine_line = next(line for line in pane.text.split() if f"pid {ENGINE_PID}" in line.plain)
        assert any(str(s.style) == "reverse" for s in engine_line.spans)

# ---- TensorBoard ------------------------------------------------------------------------

def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_tensorboard_starts_on_localhost_and_stops_with_the_cockpit(tmp_path: Path):
    run = copy_recorded(tmp_path)
    app = attached(run)
    try:
        await tensorboard_session(app)
    finally:
        app.tb.stop()  # a skip or a failure must not leave it running


async def tensorboard_session(app: CockpitApp) -> None:
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("b")
        proc = app.tb.proc
        assert proc is not None
        note = next(n for n in notes(app) if n.startswith("TensorBoard at"))
        port = app.tb.port
        assert f"http://127.0.0.1:{port}" in note and f"ssh -L {port}:127.0.0.1:{port}" in note

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not listening(port):
            if proc.poll() is not None:
                pytest.skip(f"tensorboard exited with code {proc.returncode} here (cannot start)")
            if loop.time() > deadline:
                pytest.skip("tensorboard did not listen within 60 s here")
            await pilot.pause(0.2)
        addresses = {c.laddr.ip for c in psutil.Process(proc.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN}
        assert addresses == {"127.0.0.1"}, addresses  # never reachable from other hosts
        children = psutil.Process(proc.pid).children(recursive=True)  # its data server, if any
        await pilot.press("q")
    assert proc.poll() is not None, "quitting the cockpit stops its TensorBoard"
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"TensorBoard's helpers outlive the cockpit: {alive}"
    assert not listening(port)


def test_an_exited_engine_not_yet_reaped_counts_as_gone():
    """A zombie (an engine started in the foreground by a parent that has not waited for it yet)
    has exited: the cockpit's stop-then-resume must not wait for it."""
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while pid_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(child.pid)
        assert child.poll() is not None  # reaped only now: it was a zombie while pid_alive said gone
    finally:
        child.kill() if child.poll() is None else None
    assert pid_alive(os.getpid()) and not pid_alive(0) and not pid_alive(None)


def test_throughput_shows_achieved_flops_and_mfu_where_the_engine_counted_them():
    from cockpit.history import RunHistory
    from contracts.events import make_event

    pane = ThroughputPane()
    h = RunHistory()
    h.apply(make_event("step", step=1, epoch=0, batch=1, batches_per_epoch=10, samples_per_s=100.0, steps_per_s=1.0))
    pane.show(h)
    assert "FLOP/s" not in pane.text.plain and "MFU" not in pane.text.plain
    h.apply(make_event("step", step=2, epoch=0, batch=2, batches_per_epoch=10, samples_per_s=100.0,
                       steps_per_s=1.0, tflops=0.0016))
    pane.show(h)
    assert "1.6 GFLOP/s" in pane.text.plain and "MFU" not in pane.text.plain  # a CPU: no peak, no MFU
    h.apply(make_event("step", step=3, epoch=0, batch=3, batches_per_epoch=10, samples_per_s=100.0,
                       steps_per_s=1.0, tflops=405.6, mfu=0.41))
    pane.show(h)
    assert "405.6 TFLOP/s · MFU 41%" in pane.text.plain
    h.apply(make_event("step", step=4, epoch=0, batch=4, batches_per_epoch=10, samples_per_s=100.0,
                       steps_per_s=1.0, tflops="NaN", mfu=None))
    pane.show(h)
    assert "FLOP/s" not in pane.text.plain  # not a number: shown as nothing
