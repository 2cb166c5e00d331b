"""The cockpit's runs list with a real Slurm cluster (the `slurm` fixture): jobs beside local runs,
PENDING with its reason while the node is busy, then RUNNING; `s` on a pending job cancels it after
a confirmation; `n` offers "submit to Slurm" where sbatch is on PATH. Driven by Textual's Pilot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cockpit import launcher
from cockpit.app import CockpitApp
from cockpit.runs import list_runs
from cockpit.screens.modals import ConfirmCancelJob, NewRunScreen, SlurmSubmit
from cockpit.screens.runs_screen import RunsScreen
from cockpit.settings import Settings
from cockpit.widgets.runs_list import COLUMNS, SLURM_COLUMNS, RunsList
from cockpit_helpers import notes, until
from conftest import ROOT, TINY, wait_for
from contracts import slurm as slurm_api

SLURM_COL = len(COLUMNS) + SLURM_COLUMNS.index("slurm")


@pytest.fixture
def slurm_env(slurm, monkeypatch, tmp_path: Path):
    """The cockpit (and contracts.slurm) reach the test cluster through SLURM_CONF."""
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    monkeypatch.setenv("PATH", slurm.env["PATH"])
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return slurm


def job_state(slurm, job_id: int) -> str | None:
    found = slurm_api.jobs(env=slurm.env, job_ids=[job_id])
    return found[0].state if found else None


def row_cells(table: RunsList, key: str) -> list[str]:
    if key not in table.rows:
        return []
    return [c.plain for c in table.get_row_at(table.get_row_index(key))]


async def test_pending_then_running_and_s_cancels_a_pending_job(slurm_env, tmp_path: Path):
    slurm = slurm_env
    runs = tmp_path / "runs"
    runs.mkdir()
    waiting, doomed = runs / "waiting", runs / "doomed"
    doomed.joinpath("slurm").mkdir(parents=True)  # submitted: the record, no config or events yet
    jobs: list[int] = []
    try:
        busy = slurm.submit("--wrap", "sleep 600", "--exclusive", "--job-name=busy")
        jobs.append(busy)
        wait_for(lambda: job_state(slurm, busy) == "RUNNING", timeout=120, what="the node busy")
        a = slurm.submit("--wrap", "sleep 600", "--time=10", f"--comment=cockpit-run:{waiting}",
                         "--job-name=cockpit-waiting")
        b = slurm.submit("--wrap", "sleep 600", "--time=10", f"--comment=cockpit-run:{doomed}",
                         "--job-name=cockpit-doomed")
        jobs += [a, b]
        doomed.joinpath("slurm", "job.json").write_text(json.dumps({"job_id": str(b), "script": "slurm/job.sh"}))

        app = CockpitApp(runs, user=Settings(), poll_gpu=False)
        async with app.run_test(size=(160, 30)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs screen")
            table = app.screen.query_one(RunsList)
            assert table.slurm_on
            await until(pilot, lambda: row_cells(table, str(waiting))[SLURM_COL:SLURM_COL + 1] in
                        (["PENDING (Resources)"], ["PENDING (Priority)"]), timeout=120,
                        what="the waiting job PENDING with its reason")
            cells = row_cells(table, str(waiting))
            assert cells[len(COLUMNS)] == str(a) and cells[SLURM_COL + 1] == "1"
            assert cells[SLURM_COL + 2] == "0:10:00"  # pending: its whole limit is left
            assert cells[1] == "queued"  # no engine has written its status
            table.move_cursor(row=table.get_row_index(str(waiting)), animate=False)
            await pilot.press("enter")  # nothing to follow yet: said, and the list stays
            await until(pilot, lambda: any(f"Slurm job {a} has not started its engine yet" in n for n in notes(app)),
                        what="the nothing-to-follow note")
            assert isinstance(app.screen, RunsScreen)
            # the run directory with only slurm/job.json is one row (not two)
            await until(pilot, lambda: row_cells(table, str(doomed))[SLURM_COL:SLURM_COL + 1] in
                        (["PENDING (Resources)"], ["PENDING (Priority)"]), timeout=60, what="the doomed row")
            assert sum(1 for key in table.rows if "doomed" in str(key.value)) == 1

            table.move_cursor(row=table.get_row_index(str(doomed)), animate=False)
            await pilot.press("s")
            await until(pilot, lambda: isinstance(app.screen, ConfirmCancelJob), what="the confirmation")
            assert f"Cancel Slurm job {b}?" in str(app.screen.query_one("Label").render())
            await pilot.press("y")
            await until(pilot, lambda: any(f"cancelled Slurm job {b}" in n for n in notes(app)), timeout=30,
                        what="the cancel notification")
            assert job_state(slurm, b) in (None, "CANCELLED")  # squeue no longer lists it as waiting
            await until(pilot, lambda: row_cells(table, str(doomed))[SLURM_COL:SLURM_COL + 1] in
                        (["not queued"], ["CANCELLED"]), timeout=60, what="the doomed row updated")

            # `s` then `n` on the waiting job keeps it
            table.move_cursor(row=table.get_row_index(str(waiting)), animate=False)
            await pilot.press("s")
            await until(pilot, lambda: isinstance(app.screen, ConfirmCancelJob), what="the confirmation")
            await pilot.press("n")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), what="back to the list")
            assert job_state(slurm, a) == "PENDING"

            slurm.run("scancel", str(busy))  # the node frees up: the waiting job runs
            await until(pilot, lambda: row_cells(table, str(waiting))[SLURM_COL:SLURM_COL + 1] == ["RUNNING"],
                        timeout=120, what="the waiting job RUNNING")
            left = row_cells(table, str(waiting))[SLURM_COL + 2]
            assert left.startswith("0:") and left != "0:00:00"
    finally:
        for job in jobs:
            slurm.run("scancel", str(job))


async def test_new_run_offers_slurm_where_sbatch_is_on_path(slurm_env, tmp_path: Path):
    app = CockpitApp(tmp_path / "runs", user=Settings(), poll_gpu=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NewRunScreen), what="the new-run form")
        form = app.screen
        assert form.slurm and not form.query_one("#slurm-nodes").display
        await pilot.click("#new-slurm")
        await until(pilot, lambda: form.query_one("#slurm-nodes").display, what="the Slurm fields")
        answers = []
        form.dismiss = answers.append  # capture the typed answer instead of submitting it
        form.query_one("#config-path").value = "run.toml"
        form.query_one("#slurm-nodes").value = "2"
        form.query_one("#slurm-gpus").value = "x"
        form.query_one("#slurm-partition").value = "debug"
        form.query_one("#slurm-partition").focus()
        await pilot.press("enter")
        assert not answers and "GPUs per node" in str(form.query_one("#new-error").render())
        form.query_one("#slurm-gpus").value = "8"
        form.query_one("#slurm-time").value = "2:00:00"
        form.query_one("#slurm-partition").focus()
        await pilot.press("enter")
        assert answers == [SlurmSubmit("run.toml", 2, 8, "2:00:00", "debug")]


def test_the_submit_command_line():
    cmd = launcher.slurm_submit_cmd("run.toml", Path("/shared/runs"), 4, 8, "12:00:00", "gpu", run_id="r7")
    assert cmd == [sys.executable, "-m", "engine.cli", "slurm", "submit", "run.toml", "--run-id", "r7",
                   "--runs-dir", "/shared/runs", "--nodes", "4", "--gpus-per-node", "8", "--time", "12:00:00",
                   "--partition", "gpu"]
    assert "--partition" not in launcher.slurm_submit_cmd("run.toml", Path("r"))


def engine_slurm_works() -> bool:
    done = subprocess.run([sys.executable, "-m", "engine.cli", "slurm", "submit", "--help"], capture_output=True,
                          cwd=ROOT, timeout=120)
    return done.returncode == 0


def test_submitting_through_the_launcher_lists_the_job_and_bad_input_comes_back(slurm_env, tmp_path: Path):
    if not engine_slurm_works():
        pytest.skip("cockpit-engine slurm submit is not there yet")
    slurm = slurm_env
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    runs = tmp_path / "runs"
    bad = launcher.slurm_submit(str(config), runs, time="1", partition="no-such-partition")
    assert bad.code == 2 and bad.job_id is None and bad.message
    busy = slurm.submit("--wrap", "sleep 600", "--exclusive", "--job-name=busy")  # the job waits: no engine runs
    done = None
    try:
        done = launcher.slurm_submit(str(config), runs, time="30", run_id="from-the-cockpit")
        assert done.code == 0, done.message
        assert done.job_id and done.run == (runs / "from-the-cockpit").resolve()
        jobs = slurm_api.jobs(env=slurm.env, job_ids=[done.job_id])
        (info,) = [i for i in list_runs(runs, jobs) if i.name == "from-the-cockpit"]
        assert info.job_id == done.job_id and info.job is not None and info.job.run_dir == done.run
    finally:
        if done is not None and done.job_id:
            slurm.run("scancel", str(done.job_id))
        slurm.run("scancel", str(busy))


def test_cockpit_runs_shows_the_job(slurm_env, tmp_path: Path, capsys):
    from cockpit import cli

    slurm = slurm_env
    run = tmp_path / "runs" / "queued-run"
    run.joinpath("slurm").mkdir(parents=True)
    busy = slurm.submit("--wrap", "sleep 600", "--exclusive", "--job-name=busy")
    job = slurm.submit("--wrap", "sleep 600", f"--comment=cockpit-run:{run}", "--job-name=cockpit-queued-run")
    run.joinpath("slurm", "job.json").write_text(json.dumps({"job_id": str(job), "script": "slurm/job.sh"}))
    try:
        wait_for(lambda: job_state(slurm, job) == "PENDING", timeout=60, what="the job to wait")
        assert cli.main(["--runs-dir", str(run.parent), "runs", "--json"]) == 0
        (record,) = [r for r in json.loads(capsys.readouterr().out) if r["run"] == "queued-run"]
        assert record["state"] == "queued" and record["slurm_job"] == job
        assert record["slurm_state"].startswith("PENDING")
        assert cli.main(["--runs-dir", str(run.parent), "runs"]) == 0
        head, *rows = capsys.readouterr().out.splitlines()
        (row,) = [r for r in rows if r.startswith("queued-run ")]
        assert head.split()[-2:] == ["job", "slurm"] and f" {job} " in row and "PENDING" in row
    finally:
        slurm.run("scancel", str(job))
        slurm.run("scancel", str(busy))
