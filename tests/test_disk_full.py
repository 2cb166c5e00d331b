"""A full disk at a checkpoint, on a real small file system (a tmpfs this test mounts).

The run pauses (state `paused`, the reason in the events and status.json), nothing half-written
is left, training continues by itself once space is freed; without space it stops after
checkpoint.disk_full_wait_s with a one-paragraph message and the last good checkpoint intact.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import popen_engine, TINY, events_of, only_run, run_engine, status_of, wait_for
from contracts.control import send_command
from contracts.events import EXIT_FAILED, EXIT_FINISHED

CONFIG = TINY.replace("every_steps = 5\nkeep_last = 3", "every_steps = 15\nkeep_last = 3") \
    .replace("[logging]\nevery_steps = 1", "[logging]\nevery_steps = 5\ntensorboard = false")


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 8 MiB tmpfs mounted for this test (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): "
                    "a full disk needs a small real file system")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def start(base: Path, runs: Path, *sets: str) -> tuple[subprocess.Popen, Path]:
    (base / "tiny.toml").write_text(CONFIG)
    out = base / "engine-output.txt"
    args = ["run", str(base / "tiny.toml"), "--runs-dir", str(runs)]
    for s in sets:
        args += ["--set", s]
    with open(out, "w") as f:
        proc = popen_engine(args, stdout=f, stderr=subprocess.STDOUT)
    return proc, out


def alive(proc: subprocess.Popen, out: Path, predicate, what: str, timeout: float = 180):
    def check():
        value = predicate()
        if not value and proc.poll() is not None:
            raise AssertionError(f"engine exited ({proc.returncode}) while waiting for {what}:\n"
                                 + out.read_text(errors="replace")[-3000:])
        return value
    return wait_for(check, timeout=timeout, what=what)


def latest_of(run: Path) -> Path | None:
    try:
        return run / "checkpoints" / json.loads((run / "checkpoints" / "latest").read_text())["file"]
    except (OSError, ValueError, KeyError):
        return None


def fill_all_but(mnt: Path, keep: int) -> Path:
    """A filler file that leaves `keep` bytes free on the file system."""
    filler = mnt / "filler"
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - keep))
    return filler


def fill_while_paused(proc, out, run: Path, mnt: Path) -> tuple[Path, Path, int]:
    """Wait for the first checkpoint, pause, leave half a checkpoint free, continue.
    Returns (the filler, the last good checkpoint, its size)."""
    first = alive(proc, out, lambda: latest_of(run), "the first checkpoint")
    sock = alive(proc, out, lambda: status_of(run).get("socket"), "the control socket")
    assert send_command(sock, "pause")["state"] == "paused"
    good = latest_of(run)
    size = good.stat().st_size
    assert first.exists() and size > 4096
    filler = fill_all_but(mnt, size // 2)  # room for events and status.json, not for a checkpoint
    assert send_command(sock, "continue")["ok"] is True
    return filler, good, size


def no_temporaries(run: Path) -> None:
    left = [p.name for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]
    assert not left, f"half-written checkpoints left: {left}"


def test_a_full_disk_pauses_the_run_until_space_is_freed(small_fs: Path, tmp_path: Path):
    runs = small_fs / "runs"
    proc, out = start(tmp_path, runs)  # checkpoint.async_save (the default): the writer thread fails
    try:
        run = alive(proc, out, lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), "the run")
        filler, good, size = fill_while_paused(proc, out, run, small_fs)
        status = alive(proc, out, lambda: (s := status_of(run)).get("state") == "paused"
                       and "disk full" in str(s.get("reason")) and s, "a pause for the full disk")
        reason = status["reason"]
        assert str(run / "checkpoints") in reason and "free" in reason and good.name in reason, reason
        paused = [e for e in events_of(run) if e["type"] == "state" and "disk full" in str(e.get("reason"))]
        assert paused and paused[0]["state"] == "paused"
        warning = [e for e in events_of(run) if e["type"] == "log" and "disk full" in e["message"]]
        assert warning and warning[0]["level"] == "warning" and "disk_full_wait_s" in warning[0]["message"]
        assert "disk full" in (run / "engine.log").read_text()
        step = status["step"]
        time.sleep(1.5)  # no training while the checkpoint waits
        assert status_of(run)["state"] == "paused" and status_of(run)["step"] == step
        assert send_command(status["socket"], "status")["reason"] == status_of(run)["reason"]
        no_temporaries(run)
        assert latest_of(run) == good and torch.load(good, weights_only=True)["step"] < step + 1

        filler.unlink()  # space again: the retry writes the checkpoint and training goes on by itself
        assert proc.wait(timeout=240) == EXIT_FINISHED, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = events_of(run)
    states = [e for e in events if e["type"] == "state"]
    at = next(i for i, e in enumerate(states) if "disk full" in str(e.get("reason")))
    assert states[at + 1]["state"] == "running" and states[-1]["state"] == "finished", states
    saved = sorted({e["step"] for e in events if e["type"] == "checkpoint"})
    assert step in saved, (step, saved)
    total = max(e["step"] for e in events if e["type"] == "step")
    # every periodic checkpoint; the one whose background write found the disk full is replaced by
    # the step at which the loop noticed (a step or a few later, before the next periodic one)
    late = [m for m in range(15, total + 1, 15) if m not in saved]
    assert len(late) <= 1 and all(m < step < m + 15 for m in late), (late, step, saved)
    assert any("written after" in e.get("message", "") for e in events if e["type"] == "log")
    no_temporaries(run)
    final = latest_of(run)
    assert torch.load(final, weights_only=True)["step"] == total

    again = run_engine("resume", str(run))
    assert again.returncode == EXIT_FINISHED, again.stdout + again.stderr
    resumed = [e for e in events_of(run) if e["type"] == "resume"]
    assert resumed and resumed[-1]["checkpoint"] == final.name


def test_no_space_for_too_long_fails_with_one_paragraph(small_fs: Path, tmp_path: Path):
    runs = small_fs / "runs"
    proc, out = start(tmp_path, runs, "checkpoint.async_save=false", "checkpoint.disk_full_wait_s=3")
    try:
        run = alive(proc, out, lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), "the run")
        _, good, _ = fill_while_paused(proc, out, run, small_fs)
        assert proc.wait(timeout=240) == EXIT_FAILED, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output, log = out.read_text(), (run / "engine.log").read_text()
    assert "Traceback" not in output and "Traceback" not in log, output[-3000:]
    status = status_of(run)
    assert status["state"] == "failed" and status["exit_code"] == EXIT_FAILED
    message = status["reason"]
    assert "\n" not in message and "could not be written" in message and "disk_full_wait_s = 3" in message
    assert good.name in message and "cockpit-engine resume" in message, message
    errors = [e for e in events_of(run) if e["type"] == "error"]
    assert errors and errors[-1]["message"] == message and "traceback" not in errors[-1]
    assert message in output
    no_temporaries(run)
    assert latest_of(run) == good
    assert torch.load(good, weights_only=True)["step"] > 0


def test_a_stop_while_waiting_for_space_stops_on_the_last_good_checkpoint(small_fs: Path, tmp_path: Path):
    runs = small_fs / "runs"
    proc, out = start(tmp_path, runs, "checkpoint.async_save=false")
    try:
        run = alive(proc, out, lambda: runs.is_dir() and any(runs.iterdir()) and only_run(runs), "the run")
        _, good, _ = fill_while_paused(proc, out, run, small_fs)
        status = alive(proc, out, lambda: (s := status_of(run)).get("state") == "paused"
                       and "disk full" in str(s.get("reason")) and s, "a pause for the full disk")
        reply = send_command(status["socket"], "stop")  # tries once more, then stops without it
        assert reply["ok"] is True and reply["state"] == "stopped", reply
        assert reply["path"] == str(good) and good.name in reply["reason"], reply
        assert proc.wait(timeout=120) == 3, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    final = status_of(run)
    assert final["state"] == "stopped" and "could not be written" in final["reason"] and good.name in final["reason"]
    no_temporaries(run)
    assert latest_of(run) == good and torch.load(good, weights_only=True)["step"] < status["step"]
