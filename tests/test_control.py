"""The control socket against a real running engine: every command, bad requests, stop, failure."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import popen_engine, TINY, engine_cmd, engine_env, events_of, only_run, run_engine, status_of, wait_for
from engine.checkpoint.store import load
from engine.config.loading import load as load_config
from contracts.control import send_command
from contracts.events import EXIT_FAILED, EXIT_STOPPED
from engine.train.schedule import lr_at

#: States in which the loop is training (a status reply may land during a periodic save).
TRAINING = ("running", "checkpointing")


@dataclass
class Live:
    proc: subprocess.Popen
    run: Path
    sock: str
    output: Path

    def log(self) -> str:
        return self.output.read_text(errors="replace")[-3000:]


def launch(base: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """Start the engine with stdout/stderr in a file (a pipe could fill and stall a long run)."""
    out = base / "engine-output.txt"
    with open(out, "w") as f:
        proc = popen_engine(args, env=env or engine_env(), stdout=f,
                                stderr=subprocess.STDOUT)
    return proc, out


def wait_alive(proc: subprocess.Popen, predicate, output: Path, what: str, timeout: float = 120):
    """wait_for, but fail at once (with the engine's output) if the engine exits meanwhile."""
    def check():
        value = predicate()
        if not value and proc.poll() is not None:
            raise AssertionError(f"engine exited ({proc.returncode}) while waiting for {what}:\n"
                                 + output.read_text(errors="replace")[-3000:])
        return value
    return wait_for(check, timeout=timeout, what=what)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Live:
    """One long run shared by the checks below; the stop test ends it."""
    base = tmp_path_factory.mktemp("control")
    (base / "tiny.toml").write_text(TINY)
    runs = base / "runs"
    proc, out = launch(base, "run", str(base / "tiny.toml"), "--runs-dir", str(runs),
                       "--set", "train.epochs=200")
    try:
        run = wait_alive(proc, lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), out,
                         "the run directory")
        wait_alive(proc, lambda: status_of(run).get("state") in TRAINING and status_of(run).get("step", 0) >= 2,
                   out, "training to start")
        yield Live(proc, run, status_of(run)["socket"], out)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def raw_request(path: str, payload: bytes) -> dict:
    """Send raw bytes over the control socket and decode the one-line reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(payload)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def step_events(run: Path, after: int = -1) -> list[dict]:
    return [e for e in events_of(run) if e["type"] == "step" and e["step"] > after]


def wait_steps_past(live: Live, step: int, count: int = 3) -> list[dict]:
    """Wait until `count` step events after `step` are in events.jsonl; return them."""
    return wait_alive(live.proc, lambda: len(step_events(live.run, step)) >= count and step_events(live.run, step),
                      live.output, f"{count} steps after step {step}")


def schedule_of(run: Path):
    return load_config(run / "config.toml").schedule


# ---- checks on the running engine (file order: the stop test comes last) --------------------


def test_socket_is_owner_only(live):
    st = os.stat(live.sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_status_replies_with_state_and_step(live):
    first = send_command(live.sock, "status")
    assert first["ok"] is True
    assert first["state"] in TRAINING
    assert isinstance(first["step"], int) and first["step"] >= 2
    assert first["run_id"] == live.run.name
    second = wait_alive(live.proc, lambda: (r := send_command(live.sock, "status"))["step"] > first["step"] and r,
                        live.output, "status to report progress")
    assert second["total_steps"] == first["total_steps"] == 200 * 45


def test_cli_send_status_prints_json_reply(live):
    done = run_engine("send", str(live.run), "status", timeout=120)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout.strip())
    assert reply["ok"] is True and reply["state"] in TRAINING and reply["step"] >= 2


def test_checkpoint_command_writes_a_loadable_checkpoint(live):
    reply = send_command(live.sock, "checkpoint")
    assert reply["ok"] is True, reply
    path, step = Path(reply["path"]), reply["step"]
    assert path.is_file()
    assert path.parent.resolve() == (live.run / "checkpoints").resolve()
    assert load(path)["step"] == step
    saved = [e for e in events_of(live.run) if e["type"] == "checkpoint" and e["step"] == step]
    assert saved and Path(saved[-1]["path"]).resolve() == path.resolve()


def test_set_lr_takes_effect_and_schedule_continues_from_it(live):
    new_lr = 0.0123
    reply = send_command(live.sock, "set", lr=new_lr)
    assert reply["ok"] is True, reply
    assert reply["lr"] == new_lr
    at, peak = reply["step"], reply["peak_lr"]
    later = wait_steps_past(live, at, count=5)
    assert later[0]["step"] == at + 1
    assert later[0]["lr"] == pytest.approx(new_lr, rel=1e-9), "the next step must train at the set lr"
    sched, total = schedule_of(live.run), live_total(live)
    for e in later:
        # step N's event reports the lr of optimizer step N-1 (0-based)
        assert e["lr"] == pytest.approx(lr_at(e["step"] - 1, total, peak, sched), rel=1e-9)
    assert max(e["lr"] for e in later) <= new_lr * (1 + 1e-9), "cosine keeps decaying from the set lr"
    status = send_command(live.sock, "status")  # the lr the next step will use
    assert status["lr"] == pytest.approx(lr_at(status["step"], total, peak, sched), rel=1e-9)


def live_total(live: Live) -> int:
    return send_command(live.sock, "status")["total_steps"]


def implied_peak(event: dict, run: Path, total: int) -> float:
    """The schedule peak a step event's lr implies."""
    return event["lr"] / lr_at(event["step"] - 1, total, 1.0, schedule_of(run))


def test_bad_requests_are_refused_and_training_is_unaffected(live):
    total = live_total(live)
    before = step_events(live.run)[-1]
    peak = implied_peak(before, live.run, total)
    bad = {
        "malformed JSON": raw_request(live.sock, b"{this is not json\n"),
        "not an object": raw_request(live.sock, b"[1, 2, 3]\n"),
        "unknown command": send_command(live.sock, "explode"),
        "oversized": raw_request(live.sock, b'{"cmd": "status", "pad": "' + b"x" * 10_000 + b'"}\n'),
        "negative lr": send_command(live.sock, "set", lr=-0.01),
        "zero lr": send_command(live.sock, "set", lr=0),
        "overflowing lr": send_command(live.sock, "set", lr=1e308),  # once failed the next step
        "lr far below the configured one": send_command(live.sock, "set", lr=1e-9),
    }
    for what, reply in bad.items():
        assert reply["ok"] is False, f"{what}: {reply}"
        assert isinstance(reply.get("error"), str) and reply["error"], f"{what}: {reply}"
    assert "JSON" in bad["malformed JSON"]["error"]
    assert "explode" in bad["unknown command"]["error"]
    assert "too large" in bad["oversized"]["error"]
    assert "positive" in bad["negative lr"]["error"]
    for what in ("overflowing lr", "lr far below the configured one"):
        assert "optim.lr = 0.05" in bad[what]["error"] and "nothing was changed" in bad[what]["error"], bad[what]

    status = send_command(live.sock, "status")
    assert status["state"] in TRAINING
    later = wait_steps_past(live, status["step"], count=3)
    assert live.proc.poll() is None
    for e in later:
        assert implied_peak(e, live.run, total) == pytest.approx(peak, rel=1e-9), "lr changed"


def test_a_crowd_of_clients_all_get_status_replies(live):
    """50 clients at once, 4 status requests each: every one answered, and training goes on.
    Half the clients do not retry a refused connect, so the listen backlog alone must hold the
    crowd (a backlog of 16 refused about two requests in three with EAGAIN); the other half are
    ours (send_command, which retries a full backlog briefly)."""
    import threading

    def without_retry() -> dict:
        return send_command(live.sock, "status", retry_s=0)

    clients, each = 50, 4
    barrier, lock = threading.Barrier(clients), threading.Lock()
    replies: list[dict] = []
    failures: list[str] = []

    def client(retrying: bool) -> None:
        barrier.wait()
        for _ in range(each):
            try:
                reply = send_command(live.sock, "status", timeout=30) if retrying else without_retry()
            except OSError as exc:
                reply = None
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
            if reply is not None:
                with lock:
                    replies.append(reply)

    threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, f"{len(failures)} of {clients * each} failed, e.g. {failures[:3]}"
    assert len(replies) == clients * each
    assert all(r["ok"] is True and r["state"] in TRAINING for r in replies), [r for r in replies if not r["ok"]][:3]
    step = max(r["step"] for r in replies)
    wait_steps_past(live, step, count=2)
    assert live.proc.poll() is None


def test_pause_stops_steps_and_continue_resumes(live):
    reply = send_command(live.sock, "pause")
    assert reply["ok"] is True and reply["state"] == "paused", reply
    paused_at = reply["step"]
    assert status_of(live.run)["state"] == "paused"
    for _ in range(3):
        time.sleep(0.4)
        now = send_command(live.sock, "status")
        assert now["state"] == "paused" and now["step"] == paused_at, now
    assert status_of(live.run)["step"] == paused_at
    assert max(e["step"] for e in step_events(live.run)) == paused_at

    # a second pause is harmless
    assert send_command(live.sock, "pause") == {"ok": True, "state": "paused", "step": paused_at}

    reply = send_command(live.sock, "continue")
    assert reply["ok"] is True and reply["state"] == "running", reply
    wait_alive(live.proc, lambda: status_of(live.run).get("step", 0) > paused_at, live.output,
               "steps after continue")
    states = [e["state"] for e in events_of(live.run) if e["type"] == "state"]
    assert "paused" in states and states[states.index("paused") + 1] == "running"


def test_stop_checkpoints_exits_3_and_removes_the_socket(live):
    # Stop from a paused run whose current step was just saved: the stop must still name it.
    send_command(live.sock, "pause")
    saved = send_command(live.sock, "checkpoint")
    reply = send_command(live.sock, "stop")
    assert reply["ok"] is True and reply["state"] == "stopped", reply
    step = reply["step"]
    assert step == saved["step"]
    assert live.proc.wait(timeout=120) == EXIT_STOPPED, live.log()

    status = status_of(live.run)
    assert status["state"] == "stopped" and status["step"] == step
    assert status["exit_code"] == EXIT_STOPPED
    states = [e for e in events_of(live.run) if e["type"] == "state"]
    assert states[-1]["state"] == "stopped" and states[-1]["step"] == step

    ckpt = live.run / "checkpoints" / f"step-{step:08d}.pt"
    assert ckpt.is_file() and load(ckpt)["step"] == step
    assert Path(reply["path"]).resolve() == ckpt.resolve()
    assert not Path(live.sock).exists(), "control.sock must be removed on exit"
    assert "stopped run directory" in live.output.read_text()


# ---- a failure inside the model ----------------------------------------------------------------

FAILING_MODEL = textwrap.dedent('''
    from torch import nn


    class Fragile(nn.Module):
        def __init__(self, num_classes, in_channels, fail_at):
            super().__init__()
            self.body = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                      nn.Linear(in_channels * 16, num_classes))
            self.calls, self.fail_at = 0, fail_at

        def forward(self, x):
            if self.training:
                self.calls += 1
                if self.calls == self.fail_at:
                    raise RuntimeError(f"deliberate failure in forward call {self.calls}")
            return self.body(x)


    def make(num_classes, in_channels, fail_at):
        return Fragile(num_classes, in_channels, fail_at)
''')


def test_exception_in_forward_fails_the_run_with_traceback(tmp_path):
    (tmp_path / "cockpit_fragile_model.py").write_text(FAILING_MODEL)
    config = TINY.replace('name = "small_cnn"\nfactory_args = { width = 8 }',
                          'name = "cockpit_fragile_model:make"\nfactory_args = { fail_at = 7 }')
    assert "cockpit_fragile_model" in config
    (tmp_path / "fragile.toml").write_text(config)
    env = engine_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    runs = tmp_path / "runs"
    done = subprocess.run(engine_cmd("run", str(tmp_path / "fragile.toml"), "--runs-dir", str(runs)),
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == EXIT_FAILED, done.stdout + done.stderr
    run = only_run(runs)

    status = status_of(run)
    assert status["state"] == "failed"
    assert "deliberate failure in forward call 7" in status["reason"]
    assert status["step"] == 6, "six steps completed before the seventh forward raised"

    errors = [e for e in events_of(run) if e["type"] == "error"]
    assert len(errors) == 1
    assert "RuntimeError: deliberate failure in forward call 7" in errors[0]["message"]
    trace = errors[0]["traceback"]
    assert trace.startswith("Traceback (most recent call last)")
    assert "cockpit_fragile_model.py" in trace and "in forward" in trace
    assert [e["state"] for e in events_of(run) if e["type"] == "state"][-1] == "failed"

    log = (run / "engine.log").read_text()
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: deliberate failure in forward call 7" in log
    assert "cockpit_fragile_model.py" in log
    assert not (run / "control.sock").exists()
