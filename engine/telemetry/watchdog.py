"""Hangs and stalls, seen from rank 0 without a collective.

Every rank keeps its place (`Progress`: the step it finished, the phase it is in, a counter
of evaluation batches) in plain attributes the loop sets, and a thread of its own publishes it
with a heartbeat counter to the c10d store the process group already has (one key a rank,
every `beat_s`). A thread on rank 0 (`Watchdog`) reads every rank's key and, when no rank's
place has moved for `distributed.hang_warn_s`, names the rank the others wait for: one whose
process is gone, one whose heartbeat stopped (SIGSTOP, a frozen host), one behind the others,
or one in another phase. Where that rank runs on this host, its Python stack (py-spy's
`dump --nonblocking`, which reads a stopped process too) rides along.

The same thread watches for a stall (no step for `alerts.stall_factor` x the median step
time, at least `alerts.stall_min_s`) and a disk nearly full (room for fewer than
`alerts.disk_free_checkpoints` more checkpoints of the newest one's size). A single process
has the watchdog too (no store, no hang: only stalls and the disk).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

#: What a phase means, in a sentence ("the others wait in ...").
PHASES = {"starting": "start-up", "data": "the data loader", "compute": "forward/backward (and its all-reduce)",
          "optimizer": "the optimizer step", "boundary": "the step boundary's all-reduce",
          "evaluation": "evaluation", "checkpointing": "writing a checkpoint", "paused": "a pause",
          "stopping": "stopping"}
QUIET = ("starting", "paused", "stopping")  # phases where standing still is expected
KEY = "cockpit/progress/%d"


class Progress:
    """This rank's place, set by the loop (plain attribute writes: nothing waits)."""

    def __init__(self) -> None:
        self.step, self.phase, self.ticks = 0, "starting", 0
        self.stepped = time.monotonic()  # when the last step finished
        self.intervals: deque[float] = deque(maxlen=50)  # seconds between recent steps

    def at(self, phase: str) -> None:
        self.phase = phase

    def stepped_to(self, step: int) -> None:
        now = time.monotonic()
        if self.step and step == self.step + 1:
            self.intervals.append(now - self.stepped)
        self.step, self.stepped = step, now

    def tick(self) -> None:
        """A batch of evaluation (or any other long phase) went by."""
        self.ticks += 1

    def place(self) -> tuple[int, str, int]:
        return (self.step, self.phase, self.ticks)


def store_of_group() -> Any:
    """The c10d store of the default process group (torchrun's rendezvous store)."""
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


class Publisher(threading.Thread):
    """Every rank: its place and a heartbeat counter in the store, every `beat_s`."""

    def __init__(self, store: Any, rank: int, progress: Progress, beat_s: float):
        super().__init__(daemon=True, name="cockpit-progress")
        self.store, self.rank, self.progress, self.beat_s = store, rank, progress, beat_s
        self.stopping = threading.Event()
        self.beats = 0

    def publish(self) -> None:
        self.beats += 1
        step, phase, ticks = self.progress.place()
        self.store.set(KEY % self.rank, json.dumps([self.beats, step, phase, ticks]))

    def run(self) -> None:
        while not self.stopping.wait(self.beat_s):
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - the store is gone (the run is ending): stop publishing
                return

    def close(self) -> None:
        self.stopping.set()


def read_places(store: Any, world: int) -> list[list[Any] | None]:
    """Every rank's [beats, step, phase, ticks] (None where unreadable)."""
    keys = [KEY % r for r in range(world)]
    try:
        raw = store.multi_get(keys) if hasattr(store, "multi_get") else [store.get(k) for k in keys]
    except Exception:  # noqa: BLE001 - the store is gone: nothing to judge
        return [None] * world
    out: list[list[Any] | None] = []
    for value in raw:
        try:
            out.append(json.loads(bytes(value).decode()))
        except (ValueError, TypeError):
            out.append(None)
    return out


def alive(pid: int) -> bool:
    """Whether a process on this host is still running (a zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def python_stack(pid: int, timeout: float = 15.0) -> str | None:
    """py-spy's dump of a process's Python threads (works on a stopped one), or None."""
    spy = shutil.which("py-spy")
    if spy is None:
        return None
    try:
        done = subprocess.run([spy, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()[-4000:] if done.returncode == 0 and done.stdout.strip() else None


class Ranks:
    """Rank 0's view of every rank's published place, judged by rank 0's own clock."""

    def __init__(self, world: int, ids: list[dict[str, Any]], beat_s: float, silent_s: float):
        """`silent_s`: a heartbeat this much older than the others' means a stopped rank."""
        self.world, self.ids, self.beat_s, self.silent_s = world, ids, beat_s, silent_s
        now = time.monotonic()
        self.places: list[list[Any] | None] = [None] * world
        self.heard = [now] * world  # when each rank's heartbeat last moved
        self.moved = now  # when any rank's place last moved

    def update(self, places: list[list[Any] | None], now: float) -> None:
        for r, new in enumerate(places):
            old = self.places[r]
            if new is None:
                continue
            if old is None or new[0] != old[0]:
                self.heard[r] = now
            if old is None or new[1:] != old[1:]:
                self.moved = now
            self.places[r] = new

    def still_for(self, now: float) -> float:
        return now - self.moved

    def culprit(self, now: float, here: str) -> dict[str, Any] | None:
        """The rank the others wait for, and why: gone, silent, behind, or elsewhere in the step."""
        def who(r: int, why: str, **extra: Any) -> dict[str, Any]:
            ident = self.ids[r] if r < len(self.ids) else {}
            place = self.places[r] or [0, 0, "starting", 0]
            return {"rank": r, "host": ident.get("host"), "pid": ident.get("pid"), "why": why,
                    "rank_step": place[1], "rank_phase": place[2], **extra}

        gone = [r for r in range(1, self.world)  # rank 0 is the one asking
                if (self.ids[r] if r < len(self.ids) else {}).get("host") == here
                and self.ids[r].get("pid") and not alive(self.ids[r]["pid"])]
        if gone:  # the first to fall silent went first (torchrun then stops the others)
            return who(min(gone, key=lambda i: self.heard[i]), "exited")
        silent = [r for r in range(1, self.world) if now - self.heard[r] > self.silent_s]
        if silent:
            r = min(silent, key=lambda i: self.heard[i])
            return who(r, "silent", silent_s=now - self.heard[r])
        known = [(r, p) for r, p in enumerate(self.places) if p is not None]
        if not known:
            return None
        lowest = min(p[1] for _, p in known)
        behind = [r for r, p in known if p[1] == lowest]
        if len(behind) < len(known):
            return who(behind[0], "behind")
        phases: dict[str, list[int]] = {}
        for r, p in known:
            phases.setdefault(p[2], []).append(r)
        if len(phases) > 1:  # the lone one(s) in a phase the majority is not in
            few = min(phases.values(), key=len)
            return who(few[0], "elsewhere")
        return None

    def others_phase(self, rank: int) -> str:
        phases = [p[2] for r, p in enumerate(self.places) if p is not None and r != rank]
        return statistics.mode(phases) if phases else "starting"


def hang_message(c: dict[str, Any], waited: float, others: str, next_step: int) -> str:
    where = f"rank {c['rank']} on {c['host']}"
    why = {"exited": f"{where} (pid {c['pid']}) has exited",
           "silent": f"{where} has not reached step {next_step} for {waited:.0f} s and stopped answering "
                     f"(no heartbeat for {c.get('silent_s', 0):.0f} s: stopped, frozen or its host is gone)",
           "behind": f"{where} has not reached step {next_step} for {waited:.0f} s (it is in "
                     f"{PHASES.get(c['rank_phase'], c['rank_phase'])} of step {c['rank_step'] + 1})",
           "elsewhere": f"{where} has not reached step {next_step} for {waited:.0f} s (it is in "
                        f"{PHASES.get(c['rank_phase'], c['rank_phase'])})"}[c["why"]]
    return f"{why}; the others wait in {PHASES.get(others, others)}"


class Watchdog(threading.Thread):
    """Rank 0: hang, stall and disk-space alerts, judged every `beat_s` on a thread of its own."""

    def __init__(self, progress: Progress, alerts: Any, cfg: Any, hang_warn_s: float,
                 checkpoints: Path, store: Any = None, world: int = 1, ids: list[dict[str, Any]] | None = None,
                 beat_s: float | None = None, here: str | None = None):
        super().__init__(daemon=True, name="cockpit-watchdog")
        self.progress, self.cfg, self.hang_warn_s = progress, cfg, hang_warn_s
        self.fire, self.emit = alerts.fire, alerts.emit
        self.checkpoints, self.store, self.world = checkpoints, store, world
        self.beat_s = beat_s or beat_for(hang_warn_s)
        self.tick_s = min(self.beat_s, max(0.25, cfg.stall_min_s / 4))  # how often this thread looks
        silent_s = max(3 * self.beat_s, hang_warn_s / 2)  # a busy host delays a beat, not for half of it
        self.ranks = Ranks(world, ids or [], self.beat_s, silent_s) if store is not None and world > 1 else None
        self.here = here
        self.stopping = threading.Event()
        self.hung = self.stalled = self.low_disk = False

    def run(self) -> None:
        while not self.stopping.wait(self.tick_s):
            try:
                self.check(time.monotonic())
            except Exception:  # noqa: BLE001 - a watchdog never takes the run down
                pass

    def close(self) -> None:
        self.stopping.set()

    def check(self, now: float) -> None:
        self._hang(now)
        self._stall(now)
        self._disk()

    # ---- a hang: every rank still, one of them the reason ----------------------------

    def _hang(self, now: float) -> None:
        if self.ranks is None:
            return
        self.ranks.update(read_places(self.store, self.world), now)
        still = self.ranks.still_for(now)
        if still < self.hang_warn_s or self.progress.phase in QUIET:
            if still < self.hang_warn_s and self.hung:
                self.hung = False
                self.emit("log", level="info", message=f"the ranks move again (a hang alert's episode ended at "
                          f"step {self.progress.step})")
            return
        if self.hung or not self.cfg.hang:
            return
        c = self.ranks.culprit(now, self.here or "")
        if c is None:
            return  # every rank alive, in one place: a stall, said by _stall
        self.hung = True
        others = self.ranks.others_phase(c["rank"])
        next_step = self.progress.step + 1
        message = hang_message(c, still, others, next_step)
        stack = python_stack(c["pid"]) if c.get("host") == self.here and c.get("pid") and c["why"] != "exited" else None
        self.fire("hang", "critical", self.progress.step, message, **c, waited_s=still, step_waited=next_step,
                  others_phase=others, **({"stack": stack} if stack else {}))

    def culprit_now(self) -> dict[str, Any] | None:
        """For a failing rank 0: who the others lost (read afresh)."""
        if self.ranks is None:
            return None
        now = time.monotonic()
        self.ranks.update(read_places(self.store, self.world), now)
        return self.ranks.culprit(now, self.here or "")

    # ---- a stall: no step for much longer than usual ----------------------------------

    def _stall(self, now: float) -> None:
        p, cfg = self.progress, self.cfg
        if not cfg.stall or len(p.intervals) < 5:
            return
        median = statistics.median(p.intervals)
        limit = max(cfg.stall_factor * median, cfg.stall_min_s)
        waited = now - p.stepped
        if waited < limit or p.phase in QUIET or p.phase in ("evaluation", "checkpointing"):
            if waited < limit:
                self.stalled = False
            return
        if self.stalled or self.hung:
            return
        self.stalled = True
        self.fire("stall", "warning", p.step,
                  f"no step for {waited:.0f} s after step {p.step} ({waited / median:.0f}x the median step time "
                  f"{median:.2g} s); rank 0 is in {PHASES.get(p.phase, p.phase)}",
                  waited_s=waited, median_step_s=median, phase=p.phase)

    # ---- the disk under the checkpoints -------------------------------------------------

    def _disk(self) -> None:
        if not self.cfg.disk_full:
            return
        newest = newest_checkpoint_bytes(self.checkpoints)
        if not newest:
            return
        try:
            free = shutil.disk_usage(self.checkpoints).free
        except OSError:
            return
        room = free / newest
        if room >= self.cfg.disk_free_checkpoints:
            self.low_disk = False
            return
        if self.low_disk:
            return
        self.low_disk = True
        self.fire("disk_full", "warning", self.progress.step,
                  f"the disk under {self.checkpoints} is nearly full: {free / 1e6:,.0f} MB free, room for "
                  f"{room:.1f} more checkpoints of {newest / 1e6:,.1f} MB (checkpoint.keep_last, or free space)",
                  free_bytes=free, checkpoint_bytes=newest, field="checkpoint.keep_last")


def newest_checkpoint_bytes(folder: Path) -> int:
    """The size of the newest checkpoint (a file, or a folder of shards), 0 if none."""
    try:
        entries = [p for p in folder.iterdir() if p.name.startswith("step-") and not p.name.endswith(".tmp")]
    except OSError:
        return 0
    if not entries:
        return 0
    newest = max(entries, key=lambda p: p.name)
    try:
        if newest.is_dir():
            return sum(f.stat().st_size for f in newest.rglob("*") if f.is_file())
        return newest.stat().st_size
    except OSError:
        return 0


def beat_for(hang_warn_s: float) -> float:
    """How often ranks publish and rank 0 looks: a tenth of the warning time, 0.25 to 5 s."""
    return min(5.0, max(0.25, hang_warn_s / 10))

