"""Hangs (#20 part 4): a rank frozen with SIGSTOP is named by rank 0's watchdog long before the
collectives' timeout, with its Python stack; after SIGCONT the run goes on; frozen again and
killed, the run fails naming it. Four real Gloo ranks under torchrun; nothing in the engine is
hooked (the rank is stopped from outside, as a stuck NFS read or a debugger would)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from conftest import events_of, start_engine, status_of, wait_for
from contracts.events import EXIT_FAILED

pytestmark = pytest.mark.timeout(600)

HANG_WARN_S = 6
CONFIG = f"""
[model]
factory_args = {{{{ width = 8 }}}}
[data]
name = "digits"
[train]
epochs = 1000
batch_size = 16
deterministic = false
[distributed]
timeout_s = 240
hang_warn_s = {HANG_WARN_S}
[logging]
every_steps = 2
tensorboard = false
status_every_s = 0.1
[alerts]
command = "{sys.executable} {{catch}} {{out}}"
"""

CATCH = '''
import sys
with open(sys.argv[1], "a") as f:
    f.write(sys.stdin.read())
'''


def of_kind(run: Path, kind: str) -> list[dict]:
    return [e for e in events_of(run) if e["type"] == "alert" and e["kind"] == kind]


def test_a_frozen_rank_is_named_then_the_run_goes_on_and_a_killed_one_fails_the_run_naming_it(tmp_path):
    (tmp_path / "catch.py").write_text(CATCH)
    (tmp_path / "run.toml").write_text(CONFIG.format(catch=tmp_path / "catch.py", out=tmp_path / "alerts.jsonl"))
    runs, run = tmp_path / "runs", tmp_path / "runs" / "hang"
    proc = start_engine("run", str(tmp_path / "run.toml"), "--runs-dir", str(runs), "--run-id", "hang",
                        "--nproc", "4")
    frozen = None
    try:
        wait_for(lambda: status_of(run).get("step", 0) >= 6 and status_of(run).get("rank_pids"), timeout=300,
                 what="four ranks to train")
        pids = status_of(run)["rank_pids"]
        assert len(pids) == 4
        frozen = pids[2]
        os.kill(frozen, signal.SIGSTOP)
        (hang,) = wait_for(lambda: of_kind(run, "hang"), timeout=120, what="a hang alert")
        assert hang["rank"] == 2 and hang["pid"] == frozen and hang["why"] == "silent", hang
        assert hang["severity"] == "critical" and hang["waited_s"] >= HANG_WARN_S
        assert hang["message"].startswith("rank 2 on ") and "the others wait in" in hang["message"], hang
        assert f"has not reached step {hang['step_waited']}" in hang["message"]
        if shutil.which("py-spy"):  # the stopped rank's Python stack, read by py-spy without waking it
            assert "MainThread" in hang.get("stack", ""), hang
        status = status_of(run)
        assert status["state"] == "running", status  # told long before the collectives give up (240 s)

        os.kill(frozen, signal.SIGCONT)  # the run goes on; the episode ends
        at = status_of(run)["step"]
        wait_for(lambda: status_of(run).get("step", 0) >= at + 6, timeout=120, what="steps after SIGCONT")
        wait_for(lambda: any(e["type"] == "log" and "move again" in e.get("message", "") for e in events_of(run)),
                 what="the end of the hang episode")

        os.kill(frozen, signal.SIGSTOP)  # a second episode: a second alert, then the rank dies
        wait_for(lambda: len(of_kind(run, "hang")) == 2, timeout=120, what="a second hang alert")
        os.kill(frozen, signal.SIGKILL)
        frozen = None
        proc.communicate(timeout=240)
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_FAILED
    final = status_of(run)
    assert final["state"] == "failed" and final["reason"].startswith("rank 2 on "), final
    assert "exited" in final["reason"] or "stopped answering" in final["reason"]
    told = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [a["kind"] for a in told if a["kind"] == "hang"] == ["hang", "hang"]
    assert all(a["type"] == "alert" and a["rank"] == 2 for a in told if a["kind"] == "hang")
