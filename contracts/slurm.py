"""Slurm's queue as both halves read it: `squeue --json` (Slurm 22.05 and newer), and `scancel`.

The layout of squeue's JSON changed between versions; `jobs()` reads both:

- 22.05 (data_parser 0.0.38): `job_state` is a string ("RUNNING"), `time_limit` an int of minutes,
  `start_time`/`end_time` ints (Unix seconds), `node_count` an int, `restart_cnt` an int;
- 23.02 and newer: `job_state` is a list (["PENDING", "REQUEUED"]), and numbers are objects
  `{"set": bool, "infinite": bool, "number": N}`.

A job the cockpit submitted (`cockpit-engine slurm submit`) carries `--comment=cockpit-run:<run
directory>` and `--job-name=cockpit-<run id>`: `Job.run_dir` and `Job.run_id` read them back.
Standard library only, like the rest of contracts/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

#: The comment a cockpit-submitted job carries: `cockpit-run:<absolute run directory>`.
COMMENT_PREFIX = "cockpit-run:"
#: The job name a cockpit-submitted job carries: `cockpit-<run id>`.
NAME_PREFIX = "cockpit-"
#: Slurm's "no value" and "infinite" in 32-bit fields (NO_VAL, INFINITE).
_NO_VALUE = {0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF}
#: Seconds one squeue or scancel may take before it counts as failed.
TIMEOUT_S = 20.0


class SlurmError(RuntimeError):
    """A Slurm command failed; the message names the command and what it wrote on stderr."""


@dataclass(frozen=True)
class Job:
    """One job in squeue, as the runs list shows it."""

    job_id: int
    name: str
    state: str                     # PENDING, RUNNING, REQUEUED, COMPLETING, CONFIGURING, ...
    reason: str = ""               # state_reason ("Resources", "Priority", "BeginTime"); "" for "None"
    nodes: int | None = None       # node count
    node_list: str = ""
    partition: str = ""
    time_limit_s: int | None = None  # None: no limit
    time_left_s: int | None = None   # a running job: end_time - now; a pending one: its limit
    work_dir: str = ""
    comment: str = ""
    restart_count: int = 0         # requeues so far (SLURM_RESTART_COUNT in the job)
    user: str = ""
    start_time: int | None = None  # Unix seconds (a pending job's is Slurm's estimate, if any)
    end_time: int | None = None
    flags: tuple[str, ...] = field(default=())  # the other words of a list-valued job_state

    @property
    def run_dir(self) -> Path | None:
        """The run directory of a job the cockpit submitted (its comment), else None."""
        if self.comment.startswith(COMMENT_PREFIX):
            rest = self.comment[len(COMMENT_PREFIX):].strip()
            return Path(rest) if rest else None
        return None

    @property
    def run_id(self) -> str | None:
        """The run id in a cockpit job's name (`cockpit-<run id>`), else None."""
        if self.name.startswith(NAME_PREFIX) and len(self.name) > len(NAME_PREFIX):
            return self.name[len(NAME_PREFIX):]
        return None

    @property
    def pending(self) -> bool:
        return self.state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED")

    @property
    def label(self) -> str:
        """The state as a person reads it: `PENDING (Resources)`, `RUNNING`, `CANCELLED`, `PENDING
        (BeginTime) requeued 1x` (the reason only while the job waits)."""
        text = self.state
        if self.reason and self.pending:  # a finished job keeps the last reason it waited for
            text += f" ({self.reason})"
        if self.restart_count:
            text += f" requeued {self.restart_count}x"
        return text


def _number(value: Any) -> int | None:
    """An int from 22.05's plain numbers or 23.02's {"set", "infinite", "number"}; None for unset,
    infinite or Slurm's NO_VAL."""
    if isinstance(value, Mapping):
        if value.get("infinite") or value.get("set") is False:
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = int(value)
    return None if value in _NO_VALUE or value < 0 else value


def _state(value: Any) -> tuple[str, tuple[str, ...]]:
    if isinstance(value, (list, tuple)):
        words = [str(v) for v in value if v]
        return (words[0] if words else "UNKNOWN"), tuple(words[1:])
    return (str(value) if value else "UNKNOWN"), ()


def parse_job(raw: Mapping[str, Any], now: float | None = None) -> Job:
    """One element of squeue --json's `jobs` list."""
    now = time.time() if now is None else now
    state, flags = _state(raw.get("job_state"))
    if state == "PENDING" and "REQUEUED" in flags:
        state, flags = "REQUEUED", tuple(f for f in flags if f != "REQUEUED")
    limit_min = _number(raw.get("time_limit"))
    limit_s = None if limit_min is None else limit_min * 60
    start, end = _number(raw.get("start_time")), _number(raw.get("end_time"))
    if state in ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED") and end:
        left = max(0, int(end - now))
    else:
        left = limit_s
    reason = str(raw.get("state_reason") or "")
    nodes = _number(raw.get("node_count"))
    return Job(
        job_id=_number(raw.get("job_id")) or 0,
        name=str(raw.get("name") or ""),
        state=state,
        reason="" if reason == "None" else reason,
        nodes=nodes,
        node_list=str(raw.get("nodes") or ""),
        partition=str(raw.get("partition") or ""),
        time_limit_s=limit_s,
        time_left_s=left,
        work_dir=str(raw.get("current_working_directory") or ""),
        comment=str(raw.get("comment") or ""),
        restart_count=_number(raw.get("restart_cnt")) or 0,
        user=str(raw.get("user_name") or ""),
        start_time=start or None,
        end_time=end or None,
        flags=flags,
    )


def parse_squeue(text: str | bytes, now: float | None = None) -> list[Job]:
    """squeue --json's whole output: its jobs, in squeue's order."""
    data = json.loads(text)
    raw_jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(raw_jobs, list):
        raise SlurmError("squeue --json: no 'jobs' list in its output")
    return [parse_job(j, now) for j in raw_jobs if isinstance(j, Mapping)]


def _path_of(env: Mapping[str, str] | None) -> str | None:
    return (env if env is not None else os.environ).get("PATH")


def available(env: Mapping[str, str] | None = None, program: str = "squeue") -> bool:
    """Whether `squeue` (or another Slurm program) is on PATH (env's, if given)."""
    return shutil.which(program, path=_path_of(env)) is not None


#: Where Slurm's clients look for slurm.conf when SLURM_CONF is not set (Debian's, the source
#: build's default, and configless mode's cache on a node running slurmd or sackd).
CONF_PATHS = ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/usr/local/etc/slurm.conf",
              "/run/slurm/conf/slurm.conf", "/var/spool/slurmd/conf-cache/slurm.conf")


def configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether squeue is on PATH and has a config to read (SLURM_CONF, else a usual place).

    Without one squeue does not fail quickly: it looks for a configless controller and waits.
    """
    if not available(env):
        return False
    conf = (env if env is not None else os.environ).get("SLURM_CONF")
    if conf:
        return os.path.isfile(conf)
    return any(os.path.isfile(p) for p in CONF_PATHS)


def _run(args: list[str], env: Mapping[str, str] | None) -> subprocess.CompletedProcess:
    exe = shutil.which(args[0], path=_path_of(env))
    if exe is None:
        raise SlurmError(f"{args[0]}: not found on PATH (is this a Slurm login node?)")
    try:
        done = subprocess.run([exe, *args[1:]], env=dict(env) if env is not None else None,
                              capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(args)}: no answer within {TIMEOUT_S:.0f} s") from None
    except OSError as e:
        raise SlurmError(f"{' '.join(args)}: {e}") from None
    if done.returncode != 0:
        raise SlurmError(f"{' '.join(args)} failed (exit {done.returncode}): "
                         f"{done.stderr.strip() or done.stdout.strip() or 'no message'}")
    return done


def jobs(env: Mapping[str, str] | None = None, job_ids: list[int] | None = None,
         user: str | None = None, now: float | None = None) -> list[Job]:
    """The jobs in Slurm's queue (`squeue --json`), optionally only these ids or this user's.

    The filters are applied here, not by squeue: squeue fails outright on a job id it no longer
    knows, and some versions' --json ignores its filter options.
    """
    done = _run(["squeue", "--json"], env)
    try:
        found = parse_squeue(done.stdout, now)
    except ValueError as e:
        raise SlurmError(f"squeue --json: unreadable output ({e})") from None
    if job_ids is not None:
        wanted = {int(j) for j in job_ids}
        found = [j for j in found if j.job_id in wanted]
    if user is not None:
        found = [j for j in found if j.user == user]
    return found


def cancel(job_id: int | str, env: Mapping[str, str] | None = None) -> None:
    """`scancel JOB` (SlurmError if scancel fails; `-v`: scancel exits 0 and says nothing about a job id
    it does not know unless asked to talk)."""
    done = _run(["scancel", "-v", str(job_id)], env)
    errors = [line.split("error:", 1)[1].strip() for line in done.stderr.splitlines() if "error:" in line]
    if errors:
        raise SlurmError(f"scancel {job_id}: {'; '.join(errors)}")
