"""Optuna sweeps: real studies of real engine runs (digits, tiny CNNs) on SQLite and PostgreSQL.

Every trial is a `cockpit-engine run` started by the worker; the tests read the study back with
`optuna.load_study` and the runs' own files. Nothing leaves the loopback interface.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

from conftest import popen_engine, engine_cmd, engine_env, status_of, wait_for

optuna = pytest.importorskip("optuna")

from engine.sweep.storage import mask_url  # noqa: E402

BASE = """
[model]
name = "small_cnn"
factory_args = { width = 4 }
[data]
name = "digits"
num_workers = 0
[optim]
name = "sgd"
lr = 0.05
[train]
epochs = 3
batch_size = 64
[logging]
status_every_s = 0.2
"""

SPACE = """
[sweep]
enabled = true
trials = 8
pruner = "median"
warmup_epochs = 1
startup_trials = 1
[sweep.space]
"optim.lr" = { choices = [0.1, 0.000001] }
"model.factory_args.width" = { low = 4, high = 8, step = 4 }
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def sqlite_url(runs: Path) -> str:
    return f"sqlite:///{(runs / 'sweeps.db').resolve()}"


def load(url: str, study: str):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study, storage=url)


def start_worker(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    out = open(log, "wb")
    return popen_engine(["sweep", *args], env=env or engine_env(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 540) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    return log.read_text(errors="replace")


# -- storage URLs ------------------------------------------------------------------------------

def test_passwords_in_storage_urls_are_masked():
    assert mask_url("postgresql+psycopg2://optuna:s3cret@db.lan:5432/sweeps") == \
        "postgresql+psycopg2://optuna:***@db.lan:5432/sweeps"
    assert mask_url("mysql://u:p%40ss@h/db?charset=utf8") == "mysql://u:***@h/db?charset=utf8"
    assert mask_url("postgresql://h/db?user=u&password=hunter2&sslmode=require") == \
        "postgresql://h/db?user=u&password=***&sslmode=require"
    assert mask_url("storage postgresql://u:pw@h/db refused: (psycopg2) could not connect") == \
        "storage postgresql://u:***@h/db refused: (psycopg2) could not connect"
    for unchanged in ("sqlite:////tmp/runs/sweeps.db", "postgresql://u@h/db", "no url at all"):
        assert mask_url(unchanged) == unchanged


# -- bad sweep configs: exit 2, the key named, nothing written ---------------------------------

BAD = {
    "not-a-field": ('"optim.lrr" = { low = 0.001, high = 0.1 }', ["sweep.space.'optim.lrr'", "did you mean 'lr'"]),
    "not-a-section": ('"optimizer.lr" = { low = 0.001, high = 0.1 }', ["sweep.space.'optimizer.lr'", "not a field"]),
    "refused-bound": ('"optim.lr" = { low = 0.0, high = 0.1 }', ["sweep.space.'optim.lr'", "optim.lr = 0.0 is refused"]),
    "refused-choice": ('"model.name" = { choices = ["small_cnn", 3] }', ["sweep.space.'model.name'", "is refused"]),
    "log-without-positive-low": ('"train.epochs" = { low = 0, high = 3, log = true }',
                                 ["sweep.space.train.epochs", "log scale needs low > 0"]),
    "neither-range-nor-choices": ('"optim.lr" = { log = true }', ["sweep.space.optim.lr", "choices"]),
}


def test_bad_sweep_configs_exit_2_naming_the_key_and_write_nothing(tmp_path: Path, capsys):
    from engine.cli import main  # in-process: the refusal happens before torch or a trial

    jobs = {}
    for name, (line, _) in BAD.items():
        cfg = write(tmp_path / f"{name}.toml", BASE + "[sweep]\nenabled = true\n[sweep.space]\n" + line + "\n")
        jobs[name] = ["sweep", str(cfg), "--runs-dir", str(tmp_path / f"runs-{name}")]
    cfg = write(tmp_path / "disabled.toml", BASE)
    jobs["no-sweep-section"] = ["sweep", str(cfg), "--runs-dir", str(tmp_path / "runs-no-sweep-section")]
    cfg = write(tmp_path / "ok.toml", BASE + SPACE)
    jobs["bad-trials"] = ["sweep", str(cfg), "--trials", "0", "--runs-dir", str(tmp_path / "runs-bad-trials")]
    jobs["bad-storage"] = ["sweep", str(cfg), "--storage", "postgresql+psycopg2://u:hunter2@127.0.0.1:9/x",
                           "--runs-dir", str(tmp_path / "runs-bad-storage")]
    expected = {**{n: words for n, (_, words) in BAD.items()}, "no-sweep-section": ["enabled = true", "sweep.space"],
                "bad-trials": ["--trials 0"], "bad-storage": ["postgresql+psycopg2://u:***@127.0.0.1:9/x"]}
    for name, argv in jobs.items():
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 2, (name, out, err)
        for words in expected[name]:
            assert words in err, (name, words, err)
        assert "hunter2" not in out + err and "Traceback" not in err, err
        if name != "bad-storage":  # the storage is only opened after the config passed
            assert not (tmp_path / f"runs-{name}").exists(), name


# -- a real study, two workers at once on SQLite -----------------------------------------------

PACED_DIGITS = '''
import time
from torch.utils.data import Dataset
import torch
from engine.data.sources import TensorImages, digits_arrays

class Paced(Dataset):
    """The digits, each training sample handed over after a short sleep (no CPU)."""

    classes = list(range(10))

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.inner[i]

def make(delay):
    images, target = digits_arrays()
    full = TensorImages(torch.tensor(images, dtype=torch.float32).unsqueeze(1), torch.tensor(target), scale=16.0)
    train, val = full.split(0.2)
    return Paced(train, delay), val
'''


def test_a_study_of_eight_trials_by_two_workers_on_sqlite_prunes_and_reports_the_best(tmp_path: Path):
    # The digits, paced: each training epoch lasts at least 1437 x 2 ms of sleep (no CPU), so a
    # pruned trial's last two epochs take 5.7 s or more whatever the load, and the prune command the
    # worker sends after epoch 1 reaches the engine before its run could finish (the run ends
    # "pruned", exit 3). On a loaded machine every step is slower, which only widens that margin.
    write(tmp_path / "pacedigits.py", PACED_DIGITS)
    env = engine_env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    paced = BASE.replace('name = "digits"', 'name = "pacedigits:make"\nfactory_args = { delay = 0.002 }')
    cfg = write(tmp_path / "digits.toml", paced + SPACE)
    runs = tmp_path / "runs"
    runs.mkdir()
    url = sqlite_url(runs)
    # The first four trials learn (lr 0.1), the next two cannot (lr 1e-6): they start only once a
    # slot is free, i.e. after a trial ended, so at least one completed trial exists for the
    # median pruner (startup_trials = 1) when they report their first epoch, and their accuracy
    # (chance, ~0.1) is far below it. Trials 6 and 7 are TPE's own.
    study = optuna.create_study(study_name="digits", storage=url, direction="maximize")
    for lr, width in [(0.1, 4), (0.1, 8), (0.1, 4), (0.1, 8), (1e-6, 4), (1e-6, 8)]:
        study.enqueue_trial({"optim.lr": lr, "model.factory_args.width": width})
    a = start_worker(str(cfg), "--runs-dir", str(runs), "--parallel", "2", "--json", log=tmp_path / "a.log", env=env)
    b = start_worker(str(cfg), "--runs-dir", str(runs), "--parallel", "2", log=tmp_path / "b.log", env=env)
    out_a, out_b = finish(a, tmp_path / "a.log"), finish(b, tmp_path / "b.log")
    assert (a.returncode, b.returncode) == (0, 0), (out_a[-3000:], out_b[-3000:])
    for out in (out_a, out_b):
        assert "database is locked" not in out and "Traceback" not in out, out[-3000:]

    trials = load(url, "digits").get_trials()
    TS = optuna.trial.TrialState
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and 8 <= len(trials) <= 10, numbers  # two workers may overshoot by one each
    assert all(t.state in (TS.COMPLETE, TS.PRUNED) for t in trials), (
        [(t.number, t.state) for t in trials], out_a[-4000:], out_b[-4000:])
    by_number = {t.number: t for t in trials}
    for n in (4, 5):
        assert by_number[n].state == TS.PRUNED and by_number[n].params["optim.lr"] == 1e-6
        assert min(by_number[n].intermediate_values) == 1, by_number[n].intermediate_values
    for t in trials:
        if "same_as" in t.user_attrs:  # TPE repeated a point of this 4-point space: told the twin's value, not run
            twin = by_number[t.user_attrs["same_as"]]
            assert twin.state == TS.COMPLETE and (t.params, t.value) == (twin.params, twin.value)
            assert t.user_attrs["run_dir"] == twin.user_attrs["run_dir"] and not (runs / f"digits-t{t.number:03d}").exists()
            continue
        run = Path(t.user_attrs["run_dir"])
        assert run == runs / f"digits-t{t.number:03d}" and t.user_attrs["run_id"] == run.name
        assert json.loads((run / "sweep.json").read_text())["study"] == "digits"
        assert json.loads((run / "sweep.json").read_text())["trial"] == t.number
        assert set(t.params) == {"optim.lr", "model.factory_args.width"}
        assert t.intermediate_values, t.number
        state = status_of(run)["state"]
        # a pruned trial's run ends "pruned"; on a loaded machine the engine may finish its last
        # epoch before the prune command reaches a step boundary: the trial is PRUNED all the same
        assert state in (("pruned", "finished") if t.state == TS.PRUNED else ("finished",)), (t.number, state)
        if t.state == TS.COMPLETE:
            assert sorted(t.intermediate_values) == [1, 2, 3] and t.value == t.intermediate_values[3]
        resolved = tomllib.loads((run / "config.toml").read_text())  # the suggested values became the run's config
        assert resolved["optim"]["lr"] == t.params["optim.lr"]
        assert resolved["model"]["factory_args"]["width"] == t.params["model.factory_args.width"]
    pruned_runs = [status_of(Path(t.user_attrs["run_dir"])) for t in trials if t.state == TS.PRUNED]
    pruned_runs = [s for s in pruned_runs if s["state"] == "pruned"]
    assert pruned_runs and all(s["exit_code"] == 3 for s in pruned_runs)
    assert "pruned by the sweep's pruner after epoch" in pruned_runs[0]["reason"]

    summary = json.loads(out_a.strip().splitlines()[-1])
    best = max((t for t in trials if t.state == TS.COMPLETE), key=lambda t: t.value)
    assert summary["study"] == "digits" and summary["best"]["params"]["optim.lr"] == 0.1
    assert summary["best"]["run_dir"].startswith(str(runs)) and summary["best"]["value"] <= best.value
    assert summary["importances"] is None or set(summary["importances"]) <= {"optim.lr", "model.factory_args.width"}
    assert "best trial" in out_b and "params: " in out_b and "run dir: " in out_b
    assert "parameter importances" in out_b


# -- a worker killed with SIGKILL: its engine stops, the trial is retried from its checkpoint ---

def test_a_killed_worker_leaves_no_trial_running_and_the_restart_resumes_its_run(tmp_path: Path):
    slow = BASE.replace("epochs = 3", "epochs = 2").replace("batch_size = 64", "batch_size = 16")
    cfg = write(tmp_path / "dead.toml", slow + "[checkpoint]\nevery_steps = 5\n" + SPACE.replace(
        "trials = 8", "trials = 1").replace('"optim.lr" = { choices = [0.1, 0.000001] }', '"optim.lr" = { choices = [0.05] }'))
    runs = tmp_path / "runs"
    url = sqlite_url(runs)
    flags = ["--runs-dir", str(runs), "--heartbeat-s", "1", "--grace-s", "3"]
    worker = start_worker(str(cfg), *flags, log=tmp_path / "first.log")
    run = runs / "dead-t000"
    wait_for(lambda: status_of(run).get("state") == "running" and status_of(run).get("step", 0) >= 10
             and (run / "checkpoints" / "latest").is_file(), timeout=240, what="the trial to train past a checkpoint")
    from contracts.control import send_command

    engine_pid = status_of(run)["pid"]
    paused = send_command(status_of(run)["socket"], "pause")  # hold it mid-run so the kill lands mid-trial
    assert paused["ok"], paused
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    # the engine dies with its worker (PR_SET_PDEATHSIG: SIGTERM, a stop with a checkpoint)
    wait_for(lambda: status_of(run).get("state") == "stopped", timeout=120, what="the orphaned engine to stop")
    wait_for(lambda: not _alive(engine_pid), timeout=60, what="the engine process to exit")
    stopped_at = status_of(run)["step"]
    assert 10 <= stopped_at < status_of(run)["total_steps"]

    from engine.sweep.storage import open_storage

    TS = optuna.trial.TrialState
    study = optuna.load_study(study_name="dead", storage=open_storage(url, heartbeat_s=1, grace_s=3))
    assert [t.state for t in study.get_trials()] == [TS.RUNNING]  # nobody noticed yet

    def stale_failed():
        optuna.storages.fail_stale_trials(study)  # what every worker (and the cockpit) does
        return all(t.state != TS.RUNNING for t in study.get_trials())

    wait_for(stale_failed, timeout=60, what="the dead trial to be failed after the grace period")
    states = {t.number: t for t in study.get_trials()}
    assert states[0].state == TS.FAIL and states[1].state == TS.WAITING
    assert states[1].system_attrs["failed_trial"] == 0 and states[1].user_attrs["run_dir"] == str(run)

    restarted = subprocess.run(engine_cmd("sweep", str(cfg), *flags), env=engine_env(), capture_output=True,
                               text=True, timeout=400)
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
    assert "resumes dead trial 0's run" in restarted.stdout
    trials = load(url, "dead").get_trials()
    assert [(t.number, t.state) for t in trials] == [(0, TS.FAIL), (1, TS.COMPLETE)]
    assert trials[1].user_attrs["run_dir"] == str(run) and trials[1].params == trials[0].params
    assert sorted(p.name for p in runs.iterdir() if p.is_dir() and p.name != "sweeps") == ["dead-t000"]
    status = status_of(run)
    assert status["state"] == "finished" and status["step"] == status["total_steps"]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    resumes = [e for e in events if e["type"] == "resume"]
    assert resumes and resumes[-1]["step"] == stopped_at, (resumes, stopped_at)
    assert json.loads((run / "sweep.json").read_text()) == {
        "study": "dead", "trial": 1, "storage": url, "retry_of": 0}


def _alive(pid: int) -> bool:
    from cockpit.runs import pid_alive  # a zombie (exited, not reaped by a dead parent's init yet) counts as gone

    return pid_alive(pid)


# -- two workers on a real PostgreSQL server on loopback ---------------------------------------

def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True):
        return candidate.parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PG_PASSWORD = "pg-s3cret-for-the-test"


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of our own on 127.0.0.1 (password auth there), stopped after."""
    pytest.importorskip("psycopg2", reason="psycopg2-binary is in the test extra")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (pg_ctl): apt-get install postgresql (.ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="cockpit-pg-"))  # not under pytest's 0700 tmp: the postgres user reads it
    os.chmod(root, 0o755)
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    pwfile = root / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and pg_ctl refuse to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        import pwd

        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to start PostgreSQL as")
        for path in (root, sockets, pwfile):
            os.chown(path, pg.pw_uid, pg.pw_gid)
        os.chmod(root, 0o755)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def pg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=timeout, cwd=root)

    done = pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}",
              "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
    assert done.returncode == 0, done.stdout + done.stderr
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets} -c fsync=off"
    done = pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w", "-t", "60",
              "start")
    assert done.returncode == 0, done.stdout + done.stderr + (root / "server.log").read_text(errors="replace")
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=PG_PASSWORD, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE sweeps")
        conn.close()
        yield f"postgresql+psycopg2://postgres:{PG_PASSWORD}@127.0.0.1:{port}/sweeps"
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_study_on_postgresql(tmp_path: Path, postgres: str):
    quick = BASE.replace("epochs = 3", "epochs = 1")
    cfg = write(tmp_path / "pg.toml", quick + SPACE.replace("trials = 8", "trials = 2").replace(
        'pruner = "median"', 'pruner = "none"').replace("0.000001", "0.05"))
    runs = tmp_path / "runs"
    a = start_worker(str(cfg), "--runs-dir", str(runs), "--storage", postgres, "--json", log=tmp_path / "a.log")
    # the second worker the way the cockpit starts one: detached, its own session, a log of its own
    detach = subprocess.run(engine_cmd("sweep", str(cfg), "--runs-dir", str(runs), "--storage", postgres, "--detach"),
                            env=engine_env(), capture_output=True, text=True, timeout=200)
    assert detach.returncode == 0, detach.stdout + detach.stderr
    line = re.fullmatch(r"started sweep worker pg \(pid (\d+), log (.+)\)", detach.stdout.strip())
    assert line, detach.stdout
    b_pid, b_log = int(line.group(1)), Path(line.group(2))
    assert b_log == runs.resolve() / "sweeps" / "pg.log"
    out_a = finish(a, tmp_path / "a.log")
    wait_for(lambda: not _alive(b_pid), timeout=400, what="the detached worker to finish")
    out_b = b_log.read_text(errors="replace")
    assert a.returncode == 0 and "best trial" in out_b, (out_a[-3000:], out_b[-3000:])
    for out in (out_a, out_b):
        assert PG_PASSWORD not in out, "the password must be masked"
        assert "postgres:***@127.0.0.1" in out
    trials = load(postgres, "pg").get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and 2 <= len(trials) <= 3, numbers
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    assert all(status_of(Path(t.user_attrs["run_dir"]))["state"] == "finished" for t in trials)
    assert json.loads(out_a.strip().splitlines()[-1])["storage"] == postgres.replace(PG_PASSWORD, "***")


# -- the prune command -------------------------------------------------------------------------

def test_the_prune_command_stops_with_reason_pruned_and_its_words():
    from contracts.control import COMMANDS, decode_request, encode_request
    from contracts.events import FINAL_STATES
    from contracts.control import Pending
    from contracts.stops import OUTCOMES, Reason
    from engine.run.sources import Commands

    assert "prune" in COMMANDS and "pruned" in FINAL_STATES and OUTCOMES[Reason.PRUNED] == ("pruned", 3)
    request = decode_request(encode_request("prune", reason="pruned by the sweep's pruner after epoch 1"))

    class Server:
        def poll(self):
            return [Pending(request)]

    plan = Commands(Server(), 0.1, lambda lr: lr).poll()
    assert plan.reason == Reason.PRUNED and plan.reason.stops
    assert plan.why == "pruned by the sweep's pruner after epoch 1" and [p.cmd for p in plan.pending] == ["prune"]
    plain = Commands(type("S", (), {"poll": lambda self: [Pending({"cmd": "prune"})]})(), 0.1, lambda lr: lr).poll()
    assert plain.why == "prune command"
