"""Headless output: plain lines in a pipe, JSON lines with --json, a live progress line on a terminal."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import popen_engine, run_engine, TINY, only_run, status_of
from contracts.events import EXIT_FINISHED, decode_event

ONE_EPOCH = ("--set", "train.epochs=1")


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str
    runs: Path

    @property
    def run(self) -> Path:
        return only_run(self.runs)

    def why(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.stdout[-2000:]}\nstderr:\n{self.stderr[-2000:]}"


def piped(runs: Path, *args: str) -> Finished:
    done = run_engine(*args, "--runs-dir", str(runs), timeout=240)
    return Finished(done.returncode, done.stdout, done.stderr, runs)


def on_terminal(runs: Path, *args: str) -> Finished:
    """Run with stdout and stderr on a pseudo-terminal; return everything it drew."""
    master, slave = pty.openpty()
    try:
        proc = popen_engine([*args, "--runs-dir", str(runs)],
                                stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    code = proc.wait(timeout=240)
    return Finished(code, b"".join(chunks).decode(errors="replace"), "", runs)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Finished]:
    """The four runs, concurrently (most of each is interpreter and torch start-up)."""
    base = tmp_path_factory.mktemp("headless")
    config = base / "tiny.toml"
    config.write_text(TINY)
    jobs = {
        "plain": (piped, base / "plain", "run", str(config), *ONE_EPOCH),
        "json": (piped, base / "json", "run", str(config), "--json", *ONE_EPOCH),
        "tty": (on_terminal, base / "tty", "run", str(config), *ONE_EPOCH),
        "demo": (piped, base / "demo", "demo", *ONE_EPOCH),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(fn, *args) for name, (fn, *args) in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", ["plain", "json", "tty", "demo"])
def test_finished_run_exits_0_with_status_finished(outputs, name):
    out = outputs[name]
    assert out.code == EXIT_FINISHED, out.why()
    status = status_of(out.run)
    assert status["state"] == "finished"
    assert status["step"] == status["total_steps"] > 0


def test_piped_output_is_plain_lines(outputs):
    out = outputs["plain"]
    assert out.stdout, out.why()
    bad = sorted({repr(ch) for ch in out.stdout if (ord(ch) < 32 and ch not in "\n\t") or ord(ch) == 127})
    assert not bad, f"control characters in piped output: {bad}"
    assert f"run directory: {out.run}" in out.stdout
    assert re.search(r"^epoch 1 validation: loss \d+\.\d+ accuracy \d+\.\d+$", out.stdout, re.M), out.stdout
    assert re.search(r"^epoch 1 step \d+ loss ", out.stdout, re.M), "at least one progress line"
    assert out.stdout.rstrip("\n").splitlines()[-1] == f"finished run directory: {out.run}"


def test_json_output_is_only_protocol_events(outputs):
    out = outputs["json"]
    lines = out.stdout.splitlines()
    assert lines, out.why()
    events = [decode_event(line) for line in lines]
    undecodable = [line for line, e in zip(lines, events) if e is None]
    assert not undecodable, f"stdout lines that are not events: {undecodable[:3]}"
    types = {e["type"] for e in events}
    assert {"state", "step", "eval", "checkpoint"} <= types
    assert events[-1]["type"] == "state" and events[-1]["state"] == "finished"
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert steps == sorted(steps) and steps[-1] == status_of(out.run)["step"]
    # the human announcement goes to stderr so that stdout stays machine-readable
    assert f"run directory: {out.run}" in out.stderr


def test_terminal_shows_a_live_progress_line(outputs):
    out = outputs["tty"]
    text = out.stdout
    progress = re.findall(r"\r\x1b\[K(epoch \d+ step \d+ loss \d+\.\d+ lr \S+ [\d,]+ samples/s ETA \S+)", text)
    assert len(progress) >= 2, f"no live progress line in: {text[-1500:]!r}"
    assert progress[-1].startswith("epoch 1 step 45 ")
    assert re.search(r"ETA (\d+m)?\d+s", text)
    assert f"run directory: {out.run}" in text
    assert re.search(r"epoch 1 validation: loss \d+\.\d+ accuracy", text)


def test_demo_finishes_and_says_where_its_run_is(outputs):
    out = outputs["demo"]
    run = out.run
    assert "demo" in run.name
    assert f"new run directory: {run}" in out.stdout
    assert f"finished run directory: {run}" in out.stdout
    assert (run / "config.toml").is_file() and (run / "events.jsonl").is_file()
    assert list((run / "checkpoints").glob("step-*.pt")), "the demo leaves a resumable checkpoint"


def test_a_warm_up_longer_than_the_run_is_warned_about(tmp_path: Path):
    (tmp_path / "tiny.toml").write_text(TINY)
    done = piped(tmp_path / "runs", "run", str(tmp_path / "tiny.toml"), "--set", "train.max_steps=3",
                 "--set", "schedule.warmup_steps=1000000")
    assert done.code == EXIT_FINISHED, done.why()
    warning = "schedule.warmup_steps = 1000000 is longer than the run's 3 steps"
    assert warning in done.stdout, done.why()
    assert warning in (done.run / "engine.log").read_text()
