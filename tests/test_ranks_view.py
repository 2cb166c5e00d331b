"""Every rank in view in the cockpit (#20 part 2): the ranks pane, the full ranks screen, every node's
GPUs from the ranks events, and alerts as notifications and a list.

The straggler is real: four Gloo ranks of a user's model whose forward sleeps on rank 2 (the
model reads RANK itself, as in tests/test_alerts.py). The 1,024-rank and live-alert cases read
events files the test writes in the engine's schema (engine/telemetry/ranks.py records).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cockpit.app import CockpitApp
from cockpit.screens.alerts_screen import AlertsScreen
from cockpit.screens.ranks_screen import RanksScreen
from cockpit.settings import Settings
from cockpit.widgets.gpu_pane import GpuPane
from cockpit.widgets.ranks_pane import SLOWEST, RanksPane
from cockpit.widgets.ranks_table import RanksTable
from cockpit_helpers import notes, until
from conftest import engine_env, events_of, run_engine

pytestmark = pytest.mark.timeout(600)

SLOW_MODEL = '''
import os
import time

from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.slow = os.environ.get("RANK") == "2"

    def forward(self, x):
        if self.slow:
            time.sleep(0.03)
        return self.net(x)


def make(num_classes, in_channels):
    return Net(num_classes, in_channels)
'''

CONFIG = """
[model]
name = "slowrank:make"
[data]
name = "digits"
[train]
epochs = 1
batch_size = 16
[logging]
every_steps = 1
max_step_events_per_s = 100000
tensorboard = false
"""


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory) -> Path:
    """A finished run of four Gloo ranks, rank 2 sleeping in every forward: a straggler."""
    tmp = tmp_path_factory.mktemp("four")
    (tmp / "slowrank.py").write_text(SLOW_MODEL)
    (tmp / "run.toml").write_text(CONFIG)
    env = engine_env()
    env["PYTHONPATH"] = f"{tmp}{os.pathsep}{env['PYTHONPATH']}"
    done = run_engine("run", str(tmp / "run.toml"), "--runs-dir", str(tmp / "runs"), "--run-id", "four",
                      "--nproc", "4", env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "runs" / "four"


def app_for(run: Path) -> CockpitApp:
    return CockpitApp(run.parent, run=run, user=Settings(), poll_gpu=False)


def rows(pane: RanksPane) -> list[str]:
    """The pane's rank rows (after its header line)."""
    lines = pane.text.plain.splitlines()
    return lines[[i for i, line in enumerate(lines) if "busy ms" in line][-1] + 1:]


async def test_four_real_ranks_show_four_rows_with_the_straggler_marked_and_alerted(four_ranks: Path, monkeypatch,
                                                                                   tmp_path: Path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    events = events_of(four_ranks)
    last = [e for e in events if e["type"] == "ranks"][-1]
    assert [r["rank"] for r in last["ranks"]] == [0, 1, 2, 3]
    app = app_for(four_ranks)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = app.run_screen.query_one(RanksPane)
        await until(pilot, lambda: pane.display and pane.slowest is not None, what="the ranks pane")
        assert pane.slowest == last["slowest"] == 2
        lines = rows(pane)
        assert len(lines) == 4, lines
        assert [line.split()[1 if line.startswith(SLOWEST) else 0] for line in lines] == ["0", "1", "2", "3"]
        (marked,) = [line for line in lines if line.startswith(SLOWEST)]
        assert marked.split()[1] == "2"
        # the run's past alerts (the straggler among them) are told in one line on attach, the newest named
        alerts = [e for e in events if e["type"] == "alert"]
        await until(pilot, lambda: any("earlier in this run" in n for n in notes(app)), what="the alerts' notification")
        assert any(f"{len(alerts)} alert(s) earlier" in n and alerts[-1]["message"] in n for n in notes(app))
        await pilot.press("exclamation_mark")
        await until(pilot, lambda: isinstance(app.screen, AlertsScreen), what="the alerts list")
        table = app.screen.query_one("#alerts-table")
        await until(pilot, lambda: table.row_count == len(alerts), what="the alerts' rows")
        listed = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        (straggler,) = [cells for cells in listed if cells[2] == "straggler"]
        assert straggler[3] == "2" and "rank 2 on " in straggler[4]
        await pilot.press("escape")
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, RanksScreen), what="the ranks screen")
        ranks_table = app.screen.query_one(RanksTable)
        await until(pilot, lambda: ranks_table.row_count == 4, what="four rows")
        assert ranks_table.slowest == 2


# ---- synthetic runs in the engine's schema ---------------------------------------------------------

def line(event_type: str, **fields) -> str:
    return json.dumps({"v": 1, "t": time.time(), "type": event_type, **fields}) + "\n"


def record(rank: int, busy: float, hosts: int = 128, gpu: bool = False) -> dict:
    """One rank's record as engine/telemetry/ranks.py writes it (busy = data + h2d + compute + optim)."""
    data, h2d, optim = 0.002, 0.001, 0.003
    rec = {"rank": rank, "host": f"node-{rank // (1024 // hosts or 1):03d}", "local_rank": rank % 8, "pid": 1000 + rank,
           "data_s": data, "h2d_s": h2d, "compute_s": busy - data - h2d - optim, "comm_s": 0.004, "optim_s": optim,
           "busy_s": busy, "mem_peak_bytes": 2**30 + rank * 2**20}
    gpu_fields = ("gpu_util", "gpu_mem_bytes", "gpu_temp_c", "gpu_power_w", "gpu_sm_mhz", "gpu_throttle")
    rec.update(dict.fromkeys(gpu_fields))
    if gpu:
        rec.update(gpu_util=90.0 - rank, gpu_mem_bytes=40 * 2**30, gpu_temp_c=70.0, gpu_power_w=300.0,
                   gpu_sm_mhz=1980.0, gpu_throttle=0x20 if rank == 1 else 0)
    return rec


def ranks_event(step: int, busy: dict[int, float], world: int, gpu: bool = False) -> str:
    recs = [record(r, busy.get(r, 0.030 + r * 1e-6), gpu=gpu) for r in range(world)]
    slowest = max(recs, key=lambda r: r["busy_s"])["rank"]
    return line("ranks", step=step, slowest=slowest, ranks=recs)


def step_event(step: int, world: int) -> str:
    return line("step", step=step, epoch=0, batch=step, batches_per_epoch=1000, loss=2.0 / step, lr=0.1,
                samples_per_s=1000.0, steps_per_s=10.0, time_data_s=0.002, time_h2d_s=0.001, time_compute_s=0.024,
                time_optim_s=0.003, time_comm_s=0.004, world_size=world)


def write_run(tmp_path: Path, lines: list[str]) -> Path:
    run = tmp_path / "runs" / "synthetic"
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text(line("state", state="running", step=0) + "".join(lines))
    return run


WORST = {700: 0.200, 3: 0.150, 1000: 0.120, 512: 0.100, 77: 0.090}


async def test_1024_ranks_are_summarised_worst_first_and_the_full_screen_lists_every_rank(tmp_path: Path,
                                                                                          monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    lines = []
    for step in range(1, 6):
        lines += [step_event(step, 1024), ranks_event(step, WORST, 1024)]
    run = write_run(tmp_path, lines)
    app = app_for(run)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = app.run_screen.query_one(RanksPane)
        await until(pilot, lambda: pane.display and pane.slowest == 700, what="the ranks pane")
        text = pane.text.plain
        assert "min" in text and "median" in text and "max" in text and "5 worst" in text
        busy = [ln for ln in text.splitlines() if ln.startswith("busy")][0].split()
        assert busy[-3:] == ["30.0", "30.5", "200"]  # min, median, max in ms
        assert [r.split()[1 if r.startswith(SLOWEST) else 0] for r in rows(pane)] == ["700", "3", "1000", "512", "77"]
        assert rows(pane)[0].startswith(SLOWEST)
        assert "1024" in pane.border_title and "R: every rank" in pane.border_title

        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, RanksScreen), what="the ranks screen")
        table = app.screen.query_one(RanksTable)
        await until(pilot, lambda: table.row_count == 1024, what="every rank's row")
        assert table.slowest == 700 and str(table.get_row("700")[0]) == SLOWEST
        version = table.shown_version
        # a new event: the same table, rows updated in place; the mark moves to the new slowest
        with open(run / "events.jsonl", "a") as f:
            f.write(step_event(6, 1024) + ranks_event(6, {**WORST, 3: 0.300}, 1024))
        await until(pilot, lambda: table.shown_version != version, what="the next event")
        assert app.screen.query_one(RanksTable) is table and table.row_count == 1024
        assert table.slowest == 3 and str(table.get_row("3")[0]) == SLOWEST
        assert table.stale, "rows out of view wait until they are scrolled to"
        table.move_cursor(row=700)  # scrolls there: the row is brought up to date
        await until(pilot, lambda: str(table.get_row("700")[0]) == "", what="rank 700's row up to date")
        await pilot.press("s")
        assert [str(c) for c in table.get_row_at(0)][1] == "3"  # by busy time, longest first
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.run_screen, what="back to the run")


async def test_a_live_alert_is_notified_and_the_past_ones_only_counted(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    past = line("alert", kind="loss_spike", severity="warning", step=2, message="loss 9.1 is a spike: z = 12")
    run = write_run(tmp_path, [step_event(1, 2), ranks_event(1, {}, 2), past])
    app = app_for(run)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.link is not None and app.link.alerts_at_attach == 1, what="the replay")
        await until(pilot, lambda: any("earlier in this run" in n for n in notes(app)), what="the past, counted")
        assert not any(n.startswith("alert (") for n in notes(app))
        with open(run / "events.jsonl", "a") as f:
            f.write(line("alert", kind="straggler", severity="critical", step=12, rank=1, host="node-b", ratio=3.0,
                         message="rank 1 on node-b is a straggler: 3.0x the other ranks' median busy time"))
        await until(pilot, lambda: any(n.startswith("alert (straggler, step 12): rank 1 on node-b") for n in notes(app)),
                    what="the live alert's notification")
        (note,) = [n for n in app._notifications if str(n.message).startswith("alert (")]
        assert note.severity == "error"  # critical
        await pilot.press("exclamation_mark")
        await until(pilot, lambda: isinstance(app.screen, AlertsScreen), what="the alerts list")
        table = app.screen.query_one("#alerts-table")
        await until(pilot, lambda: table.row_count == 2, what="both alerts")
        assert [str(table.get_row_at(i)[2]) for i in range(2)] == ["straggler", "loss_spike"]  # newest first


async def test_every_nodes_gpus_come_from_the_ranks_events(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    run = write_run(tmp_path, [step_event(1, 4), ranks_event(1, {}, 4, gpu=True)])
    app = app_for(run)
    async with app.run_test(size=(160, 48)) as pilot:
        gpu = app.run_screen.query_one(GpuPane)
        await until(pilot, lambda: gpu.from_ranks, what="the GPUs from the records")
        text = gpu.text.plain
        hosts = [ln.split()[0] for ln in text.splitlines() if "%" in ln]
        assert hosts == ["node-000:0", "node-000:1", "node-000:2", "node-000:3"], text
        lines = text.splitlines()
        at = [i for i, ln in enumerate(lines) if ln.startswith("node-000:1")][0]
        assert "throttled" in lines[at + 1] and sum("throttled" in ln for ln in lines) == 1  # by its sparkline
        assert "4 on 1 host" in gpu.border_title


def test_a_replay_folds_ranks_events_as_one_at_a_time_would_and_keeps_the_newest_alerts():
    from cockpit.history import RunHistory
    from cockpit.ranks import MAX_ALERTS, SPARK_LEN

    events = []
    for step in range(1, 3 * SPARK_LEN):
        events += [json.loads(step_event(step, 8)),
                   json.loads(ranks_event(step, {step % 8: 0.05 + step * 1e-3}, 8))]
    events += [json.loads(line("alert", kind="loss_spike", severity="warning", step=i, message=f"spike {i}"))
               for i in range(MAX_ALERTS + 100)]
    replayed, one_by_one = RunHistory(), RunHistory()
    replayed.apply_many(events)
    for e in events:
        one_by_one.apply(e)
    assert replayed.ranks == one_by_one.ranks and replayed.events_seen == one_by_one.events_seen
    assert len(replayed.ranks.busy[0]) == SPARK_LEN and replayed.ranks.step == 3 * SPARK_LEN - 1
    assert replayed.alerts == one_by_one.alerts and len(replayed.alerts) == MAX_ALERTS
    assert replayed.alerts_total == MAX_ALERTS + 100 and replayed.alerts[0]["message"] == "spike 100"
    assert replayed.loss.points() == one_by_one.loss.points()  # ranks events no longer split the runs of steps
