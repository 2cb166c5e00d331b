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
        self.staging = HostStaging(pin=pin)
        self.error: BaseException | None = None
        self.last_step = -1

    def save(self, step: int, reason: str, snapshot: Snapshot, best: bool = False,
             pending: list[Pending] = ()) -> Callable[[], None]:
        """Checkpoint `step` (a second call at the same step only moves `best` and answers).

        Returns what answers `pending` for a checkpoint written here, for the caller to call
        once its state is restored; an asynchronous write answers by itself when it lands.
        """
        if step == self.last_step:
            if self.dist.main:
                self._again(step, best, pending)
            return _nothing
        self.last_step = step
        if self.dist.sharded:
            return self._save_shards(step, reason, snapshot, best, pending)
        rngs = self.dist.gather(capture_rng()) if self.dist.active else None
        if not self.dist.main:
            return _nothing
        if self.saver is not None:
            start = time.perf_counter()
            state, release = self.staging.copy(snapshot(rngs))
            self.saver.submit(Job(state, step, best, reason, time.perf_counter() - start,
                                  done=lambda saved, job: self._answer(pending, saved, job),
                                  release=release))
            return _nothing
        saved = self.store.save(snapshot(rngs), step, best=best)
        job = Job(None, saved.step, best, reason, saved.seconds)
        self._report(saved, job)
        return lambda: self._answer(pending, saved, job)

    def _save_shards(self, step: int, reason: str, snapshot: Snapshot, best: bool,
                     pending: list[Pending]) -> Callable[[], None]:
        """FSDP: every rank writes its shards (synchronously) into one temporary directory,
        which rank 0 renames into place once all have written."""
        start = time.perf_counter()
        tmp = self.dist.broadcast(str(self.store.shards_tmp(step)) if self.dist.main else None)
        self.store.write_shard(Path(tmp), self.dist.rank, snapshot(None))
        self.dist.barrier()
        if not self.dist.main:
            return _nothing
        saved = self.store.commit_shards(Path(tmp), step, best, start)
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
        extra = {"stall_s": round(job.stall_s, 6)} if self.saver is not None else {}
        self.emit("checkpoint", path=str(saved.path), step=saved.step, seconds=round(saved.seconds, 4),
                  bytes=saved.bytes, reason=job.reason, best=job.best, **extra)

    def _failed(self, exc: BaseException, job: Job) -> None:
        self.error = exc

    def check(self) -> None:
        """Fail the run here if a background write failed (cheap: no waiting)."""
        if self.error is not None:
            self.flush()

    def flush(self) -> None:
        """Wait for queued checkpoints; a failed background write fails the run here."""
        if self.saver is not None:
            self.saver.wait()
        if self.error is not None:
            error, self.error = self.error, None
            raise RuntimeError(f"writing a checkpoint failed: {error}") from error

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
