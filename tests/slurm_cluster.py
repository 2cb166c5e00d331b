"""A real single-node Slurm cluster on loopback, in a folder of its own, for the tests.

`SlurmCluster.start(folder)` writes a munge key and a `slurm.conf` there, starts `munged`,
`slurmctld -D -i -c` and `slurmd -D` as child processes and waits until `sinfo` shows the node
idle; `stop()` ends them (by their own pids). Every client command (`sbatch`, `squeue`, ...) must
run with `cluster.env`, whose `SLURM_CONF` points at this cluster's config; `cluster.run(...)`
does that. Two clusters (two pytest-xdist workers) can run side by side: each picks free ports
and its own munge socket.

Needs Debian's `slurmctld slurmd slurm-client munge` (`.ci/run` installs them) and root (slurmd
starts jobs as their user). `SlurmUnavailable` says why a cluster could not start; the fixture
turns it into a skip.

Settings that make the tests quick (measured on Slurm 22.05): `AuthInfo=cred_expire=10` and
`SchedulerParameters=sched_interval=5`: a requeued job is held for cred_expire (default 120 s)
before it may run again, and the main scheduler only looks every sched_interval (default 60 s).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
#: Generous: on a loaded 2-core machine slurmctld may take a while to answer its first RPC.
START_TIMEOUT_S = 60.0
#: At the end, how long cancelled jobs get to end (their SIGTERM: an engine checkpoints) before
#: the daemons stop and whatever is left is killed.
STOP_WAIT_S = 45.0


class SlurmUnavailable(RuntimeError):
    """The cluster cannot run here (binaries missing, not root, or a daemon would not start)."""


def find(program: str) -> str | None:
    """A Slurm or munge program on PATH or in the sbin folders Debian puts daemons in."""
    found = shutil.which(program)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(folder) / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_programs() -> list[str]:
    return [p for p in (*DAEMONS, *CLIENTS) if find(p) is None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_memory_mb(slurmd: str) -> int:
    """RealMemory as `slurmd -C` reports it (the config may not claim more), less a margin."""
    done = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30)
    for word in done.stdout.split():
        if word.startswith("RealMemory="):
            return max(1, int(word.split("=", 1)[1]) - 64)
    return 1000


@dataclass
class SlurmCluster:
    folder: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    partition: str = "debug"
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    conf: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: Seconds from the first daemon's start until the node was idle.
    start_s: float = 0.0

    # -- the pieces -------------------------------------------------------------------------

    def write_config(self) -> Path:
        f = self.folder
        for sub in ("state", "spool", "log", "munge", "jobs"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        (f / "munge").chmod(0o700)
        key = f / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        user = os.environ.get("USER") or "root"
        try:
            import pwd

            user = pwd.getpwuid(os.geteuid()).pw_name
        except (ImportError, KeyError):
            pass
        mem = node_memory_mb(find("slurmd"))
        sock = f / "munge" / "munge.socket"
        lines = [
            "ClusterName=cockpit",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=cred_expire=10,socket={sock}",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MailProg=/bin/true",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=5,bf_interval=5",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "KillWait=30",
            "MinJobAge=300",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE "
            "OverSubscribe=YES State=UP",
        ]
        self.conf = f / "slurm.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.env = dict(os.environ)
        self.env["SLURM_CONF"] = str(self.conf)
        sbin = ":".join(d for d in ("/usr/sbin", "/sbin") if d not in self.env.get("PATH", "").split(":"))
        if sbin:
            self.env["PATH"] = self.env.get("PATH", "") + ":" + sbin
        return self.conf

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.folder / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(args, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise SlurmUnavailable(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 12) -> str:
        texts = []
        for path in (self.folder / "log" / f"{name}.out", self.folder / "log" / f"{name}.log"):
            try:
                texts += path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return " | ".join(texts[-lines:])

    def run(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster (SLURM_CONF set), its output as text."""
        return subprocess.run([*args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=check, stdin=subprocess.DEVNULL)

    def node_state(self) -> str:
        done = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", timeout=20)
        return done.stdout.strip().lower() if done.returncode == 0 else ""

    # -- start and stop ---------------------------------------------------------------------

    def start(self) -> "SlurmCluster":
        missing = missing_programs()
        if missing:
            raise SlurmUnavailable(f"missing {', '.join(missing)}: apt-get install slurmctld slurmd "
                                   "slurm-client munge (.ci/run does)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("slurmd starts jobs as their user: the test cluster needs root")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.write_config()
        began = time.monotonic()
        m = self.folder / "munge"
        try:
            self._spawn("munged", [find("munged"), "-F", "--force", f"--socket={m / 'munge.socket'}",
                                   f"--key-file={m / 'munge.key'}", f"--log-file={self.folder / 'log' / 'munged.log'}",
                                   f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}"])
            self._wait(lambda: (m / "munge.socket").exists(), "munged's socket")
            self._spawn("slurmctld", [find("slurmctld"), "-D", "-i", "-c", "-f", str(self.conf)])
            self._wait(lambda: self.run("scontrol", "ping", timeout=20).stdout.count("UP") > 0,
                       "slurmctld to answer")
            self._spawn("slurmd", [find("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait(self._node_ready, "the node to be idle")
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - began
        return self

    def _node_ready(self) -> bool:
        state = self.node_state()
        if state.startswith(("down", "drain", "fail")):
            self.run("scontrol", "update", f"nodename={self.node}", "state=resume", timeout=20)
            return False
        return state.startswith("idle")

    def _wait(self, predicate, what: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if predicate():
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.2)
        raise SlurmUnavailable(f"timed out waiting for {what}: slurmctld: {self.log_tail('slurmctld')}; "
                               f"slurmd: {self.log_tail('slurmd')}")

    def cancel_all(self) -> None:
        """Cancel every job still known (so nothing a test submitted outlives it)."""
        self.run("scancel", "--full", f"--partition={self.partition}", timeout=20)

    def stop(self) -> None:
        """End the daemons (and the jobs slurmd started), slurmd first."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            try:
                self.cancel_all()
                self._wait_jobs_gone(timeout=STOP_WAIT_S)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: the daemon and its helpers
            except OSError:
                proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    proc.kill()
                proc.wait(timeout=10)
        self._kill_job_steps()

    def _wait_jobs_gone(self, timeout: float) -> None:
        """Until squeue lists no job that still has processes (cancelled jobs get SIGTERM, then
        SIGKILL after KillWait), at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.run("squeue", "-h", "-t", "RUNNING,COMPLETING,CONFIGURING,SUSPENDED", "-o", "%i", timeout=20)
            if done.returncode != 0 or not done.stdout.strip():
                return
            time.sleep(0.2)

    def _kill_job_steps(self) -> None:
        """Whatever this cluster started that outlived its daemons: slurmstepd, and the jobs' own
        processes (a job's environment holds SLURM_CONF=<this cluster's config>, as sbatch exports it)."""
        mine = f"SLURM_CONF={self.conf}".encode() + b"\0"
        spared = {os.getpid(), os.getppid()}
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit() or int(proc_dir.name) in spared:
                continue
            try:
                cmdline = (proc_dir / "cmdline").read_bytes()
                environ = (proc_dir / "environ").read_bytes()
            except OSError:
                continue
            if not cmdline:
                continue  # a zombie, or a kernel thread
            ours = (b"slurmstepd" in cmdline and str(self.folder).encode() in environ + cmdline) or (
                mine in environ and (b"SLURM_JOB_ID=" in environ or b"slurmstepd" in cmdline))
            if ours:
                try:
                    os.kill(int(proc_dir.name), signal.SIGKILL)
                except OSError:
                    pass

    # -- conveniences for tests -------------------------------------------------------------

    def submit(self, *args: str) -> int:
        """`sbatch --parsable ARGS` in this cluster's jobs folder; the job id."""
        done = self.run("sbatch", "--parsable", f"--chdir={self.folder / 'jobs'}", *args, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {done.stderr.strip()}")
        return int(done.stdout.strip().split(";")[0])

    def squeue(self) -> dict:
        done = self.run("squeue", "--json", timeout=30, check=True)
        return json.loads(done.stdout)
