"""Saving a run's checkpoints: synchronously, on a writer thread, or as shards, behind one call.

The loop calls `Checkpointer.save(step, reason, snapshot, best, pending)` at a step boundary on
every rank. Rank 0 gathers every rank's RNG state and writes one file (or, under FSDP, every
rank writes its shard into one directory that rank 0 renames into place). With
checkpoint.async_save the loop only pays for a host copy; the writer thread writes, reports
and answers the commands that asked for the checkpoint, through the same `_answer`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from contracts.layout import LATEST
from engine.checkpoint.rng import capture_rng
from engine.checkpoint.space import DiskFull, free_bytes, is_disk_full, state_bytes
from engine.checkpoint.store import CheckpointStore, Saved
from engine.checkpoint.writer import AsyncSaver, HostStaging, Job
from engine.parallel.dist import Dist
from contracts.control import Pending

Snapshot = Callable[[list[dict[str, Any]] | None], dict[str, Any]]


class Checkpointer:
    """One run's checkpoint saving: at most one checkpoint per step, every write reported."""

    def __init__(self, store: CheckpointStore, dist: Dist, emit: Callable[..., Any],
                 async_save: bool, pin: bool):
        self.store, self.dist, self.emit = store, dist, emit
        self.saver = (AsyncSaver(store, self._report, self._failed)
                      if async_save and dist.main and not dist.sharded else None)
        self.async_save = async_save and not dist.sharded  # the same on every rank
        self.staging = HostStaging(pin=pin)
        self.error: BaseException | None = None
        self.full: DiskFull | None = None  # a background write found the disk full
        self.saved_step = -1  # the newest step written (rank 0)
        self.last_step = -1

    def save(self, step: int, reason: str, snapshot: Snapshot, best: bool = False,
             pending: list[Pending] = (), wait: bool = False) -> Callable[[], None]:
        """Checkpoint `step` (a second call at the same step only moves `best` and answers).

        Returns what answers `pending` for a checkpoint written here, for the caller to call
        once its state is restored; an asynchronous write answers by itself when it lands.
        `wait` (the same on every rank) writes on this thread even with async_save, so the
        outcome is known (and agreed) on return. Raises DiskFull on every rank when the disk
        has no room for it; nothing is written then and a later call at this step retries.
        """
        if self.async_save:
            if self.saver is not None and (wait or step == self.last_step):
                self.saver.wait()  # a failure of the queued writes is known below
            if self._agreed(self.full is not None):  # a background write found the disk full
                self.full, self.last_step, wait = None, -1, True  # write this one while the loop waits
        if step == self.last_step:
            if self.dist.main:
                self._again(step, best, pending)
            return _nothing
        self.last_step = step
        if self.dist.sharded:
            return self._save_shards(step, reason, snapshot, best, pending)
        rngs = self.dist.gather(capture_rng()) if self.dist.active else None
        if self.saver is not None and not wait:
            start = time.perf_counter()
            state, release = self.staging.copy(snapshot(rngs))
            self.saver.submit(Job(state, step, best, reason, time.perf_counter() - start,
                                  done=lambda saved, job: self._answer(pending, saved, job),
                                  release=release))
            return _nothing
        if self.async_save and not wait:  # ranks other than 0: rank 0's writer has it
            return _nothing
        saved, state, failure = None, None, None
        if self.dist.main:
            try:
                state = snapshot(rngs)
                saved = self.store.save(state, step, best=best)
            except Exception as exc:  # noqa: BLE001 - agreed below, then raised on every rank
                failure = exc
        self._outcome(step, state, failure)
        if not self.dist.main:
            return _nothing
        self.saved_step = step
        job = Job(None, saved.step, best, reason, saved.seconds)
        self._report(saved, job)
        return lambda: self._answer(pending, saved, job)

    def _agreed(self, flag: bool) -> bool:
        """True when `flag` is true on any rank."""
        return bool(self.dist.agree_max([1.0 if flag else 0.0])[0]) if self.dist.active else flag

    def _outcome(self, step: int, state: dict[str, Any] | None, failure: BaseException | None) -> None:
        """Agree on a save's outcome across ranks: return when every rank wrote, else raise on
        every rank (DiskFull when the disk had no room) and forget that this step was saved."""
        code = 0.0
        if failure is not None:
            code = 1.0 if is_disk_full(failure, self.store.folder, self._needed(state)) else 2.0
        if self.dist.active:
            code = self.dist.agree_max([code])[0]
        if not code:
            return
        self.last_step = -1
        if code == 1.0:
            raise self._disk_full(step, state, failure) from failure
        if failure is not None:
            raise failure
        raise RuntimeError(f"another rank failed to write its part of the checkpoint of step {step}")

    def _needed(self, state: dict[str, Any] | None) -> int | None:
        """About how many bytes the checkpoint needs: its tensors, or the newest file's size."""
        sizes = [state_bytes(state)] if state is not None else []
        latest = self.latest()
        try:
            sizes.append(sum(f.stat().st_size for f in latest.iterdir()) if latest.is_dir()
                         else latest.stat().st_size)
        except (OSError, AttributeError):
            pass
        return max(sizes) if sizes and max(sizes) > 0 else None

    def _disk_full(self, step: int, state: dict[str, Any] | None, cause: BaseException | None) -> DiskFull:
        latest = self.latest()
        last = f"{latest.name} (step {self.store.pointer_step('latest')})" if latest is not None else None
        return DiskFull(step, self.store.folder, self._needed(state), free_bytes(self.store.folder), last,
                        f"{type(cause).__name__}: {cause}" if cause is not None else "another rank")

    def _save_shards(self, step: int, reason: str, snapshot: Snapshot, best: bool,
                     pending: list[Pending]) -> Callable[[], None]:
        """FSDP: every rank writes its shards (synchronously) into one temporary directory,
        which rank 0 renames into place once all have written (a rank that could not write
        fails the save on every rank, and the directory is removed)."""
        start = time.perf_counter()
        tmp = self.dist.broadcast(str(self.store.shards_tmp(step)) if self.dist.main else None)
        state, failure = None, None
        try:
            state = snapshot(None)
            self.store.write_shard(Path(tmp), self.dist.rank, state)
        except Exception as exc:  # noqa: BLE001 - agreed (the barrier), then raised on every rank
            failure = exc
        try:
            self._outcome(step, state, failure)
        except Exception:
            if self.dist.main:
                self.store.discard(Path(tmp))
            raise
        if not self.dist.main:
            return _nothing
        saved = self.store.commit_shards(Path(tmp), step, best, start)
        self.saved_step = step
        job = Job(None, saved.step, best, reason, saved.seconds)
        self._report(saved, job)
        return lambda: self._answer(pending, saved, job)

    def _again(self, step: int, best: bool, pending: list[Pending]) -> None:
        """A second request at the same step: move the best pointer, answer with the file."""
        if self.saver is not None:
            if best:
                self.saver.submit(Job(None, step, True, "best", 0.0))
            self.saver.wait()
        elif best:
            self.store.mark_best(step)
        path = self.store.path_for(step)
        size = path.stat().st_size if path.is_file() else None
        self._answer(pending, Saved(path, step, size, 0.0), None)

    def _answer(self, pending: list[Pending], saved: Saved | None, job: Job | None) -> None:
        """Reply to the commands that asked for this checkpoint (the one place that does)."""
        for p in pending:
            if saved is None:
                p.answer(False, error=f"checkpoint at step {job.step} failed: {self.error}")
                continue
            extra = {"stall_s": job.stall_s} if job is not None and self.saver is not None else {}
            p.answer(step=saved.step, path=str(saved.path), bytes=saved.bytes, seconds=saved.seconds, **extra)

    def _report(self, saved: Saved, job: Job) -> None:
        """The checkpoint event (from the writer thread when saving asynchronously)."""
        self.saved_step = max(self.saved_step, saved.step)
        extra = {"stall_s": round(job.stall_s, 6)} if self.saver is not None else {}
        self.emit("checkpoint", path=str(saved.path), step=saved.step, seconds=round(saved.seconds, 4),
                  bytes=saved.bytes, reason=job.reason, best=job.best, **extra)

    def _failed(self, exc: BaseException, job: Job) -> None:
        """The writer thread's failure: a full disk is retried by the loop, anything else fails the run."""
        if job.state is not None and isinstance(exc, Exception) and is_disk_full(
                exc, self.store.folder, self._needed(job.state)):
            self.full = self._disk_full(job.step, job.state, exc)
        else:
            self.error = exc

    def check(self) -> DiskFull | None:
        """At a step boundary: fail the run here if a background write failed (cheap: no
        waiting); in one process, a write that found the disk full is returned for the loop
        to pause on and retry (under torchrun the next save agrees on it instead)."""
        if self.error is not None:
            self.flush()
        full = self.full
        if full is None or self.dist.active:
            return None
        self.full = None
        if self.saved_step > full.step:  # a later checkpoint has landed since
            return None
        self.last_step = -1  # nothing was saved at that step: the retry writes this one
        return full

    def settle(self) -> DiskFull | None:
        """Every rank: wait for the queued writes; the DiskFull of one that found the disk full
        (agreed across ranks), else None. Nothing to wait for without checkpoint.async_save."""
        if not self.async_save:
            return None
        if self.saver is not None:
            self.saver.wait()
        if self.error is not None:
            self.flush()
        if not self._agreed(self.full is not None):
            return None
        full = self.full or DiskFull(self.last_step, self.store.folder, None, None, None, "another rank")
        self.full, self.last_step = None, -1
        return full

    def flush(self) -> None:
        """Wait for queued checkpoints; a failed background write fails the run here."""
        if self.saver is not None:
            self.saver.wait()
        if self.error is not None:
            error, self.error = self.error, None
            raise RuntimeError(f"writing a checkpoint failed: {error}") from error
        if self.full is not None and self.full.step >= self.saved_step:
            full, self.full = self.full, None
            self.last_step = -1
            raise full

    def last_good(self) -> Path | None:
        """The newest checkpoint once the queued writes have landed (each was checked finite)."""
        try:
            self.flush()
        except RuntimeError as exc:  # the newest file on disk is still the last good one
            self.emit("log", level="error", message=str(exc))
        return self.latest()

    def latest(self) -> Path | None:
        """The newest checkpoint written (rank 0), for the stop reply and messages."""
        name = self.store.pointer(LATEST) if self.dist.main else None
        return self.store.folder / name if name else None

    def close(self) -> None:
        """Finish the writes already queued (a failed run still gets them), then stop."""
        if self.saver is not None:
            self.saver.close()


def _nothing() -> None:
    """No reply to send."""
