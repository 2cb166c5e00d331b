"""Asynchronous checkpoints: the loop pays for a host copy; a worker thread does the writing.

At a step boundary the loop copies the state to host memory (on the CPU: clones) and hands
it to one background thread, which writes it atomically (engine.checkpoint.store), prunes, moves
the pointers and reports. Requests that arrive while one is being written wait in a queue:
none is lost. A crash mid-write leaves the previous checkpoint in place, as with a
synchronous save.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch

from engine.checkpoint.store import CheckpointStore, Saved


class HostStaging:
    """Reusable host buffers for snapshots, in two slots so the loop can copy into one while
    the writer is still saving the other. Reuse avoids fresh allocations (page faults) on
    every save; on a GPU the buffers are pinned, so device-to-host copies run at full speed.
    """

    def __init__(self, pin: bool = False, slots: int = 2):
        self.pin = pin
        self.buffers: list[dict[str, torch.Tensor]] = [{} for _ in range(slots)]
        self.free = [threading.Event() for _ in range(slots)]
        for event in self.free:
            event.set()
        self.next = 0

    def copy(self, state: Any) -> tuple[Any, Callable[[], None]]:
        """A host copy of `state` and the function that gives its buffers back."""
        slot = self.next
        self.next = (slot + 1) % len(self.buffers)
        self.free[slot].wait()  # the writer is done with this slot's previous snapshot
        self.free[slot].clear()
        out = self._copy(state, self.buffers[slot], "")
        if self.pin and torch.cuda.is_available():
            torch.cuda.current_stream().synchronize()  # non_blocking copies must land first
        return out, self.free[slot].set

    def _copy(self, obj: Any, bufs: dict[str, torch.Tensor], path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            buf = bufs.get(path)
            if buf is None or buf.shape != obj.shape or buf.dtype != obj.dtype:
                buf = torch.empty(obj.shape, dtype=obj.dtype, device="cpu", pin_memory=self.pin)
                bufs[path] = buf
            buf.copy_(obj.detach(), non_blocking=self.pin)
            return buf
        if isinstance(obj, dict):
            return like(obj, {k: self._copy(v, bufs, f"{path}/{k}") for k, v in obj.items()})
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._copy(v, bufs, f"{path}/{i}") for i, v in enumerate(obj))
        return obj


def like(original: dict, items: dict) -> dict:
    """A copied dict that keeps a state_dict's `_metadata` (each module's state version, which
    `load_state_dict` hands to `_load_from_state_dict`: without it torchao's observers take the
    state for version 1 and reset their `eps`, and a resumed QAT run drifts)."""
    meta = getattr(original, "_metadata", None)
    if meta is None:
        return items
    out = OrderedDict(items)
    out._metadata = copy.deepcopy(meta)  # type: ignore[attr-defined]
    return out


def host_copy(obj: Any) -> Any:
    """The same structure with every tensor copied to host memory (detached from training)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return like(obj, {k: host_copy(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


@dataclass
class Job:
    """One checkpoint to write (or, with state None, a best pointer to move)."""

    state: dict[str, Any] | None
    step: int
    best: bool
    reason: str
    stall_s: float
    done: Callable[[Saved | None, "Job"], None] | None = None
    release: Callable[[], None] | None = None  # gives the staging buffers back


class AsyncSaver:
    """One writer thread over a CheckpointStore."""

    def __init__(self, store: CheckpointStore, report: Callable[[Saved, Job], None],
                 fail: Callable[[BaseException, Job], None]):
        self.store, self.report, self.fail = store, report, fail
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job; returns at once."""
        self.jobs.put(job)

    def wait(self) -> None:
        """Block until every queued job is written."""
        self.jobs.join()

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self.jobs.put(None)
        self.thread.join()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                self._write(job)
            finally:
                self.jobs.task_done()

    def _write(self, job: Job) -> None:
        try:
            if job.state is None:
                self.store.mark_best(job.step)
                saved = None
            else:
                start = time.perf_counter()
                saved = self.store.save(job.state, job.step, best=job.best)
                saved.seconds = time.perf_counter() - start
                self.report(saved, job)
        except BaseException as exc:  # noqa: BLE001 - reported to the loop, which fails the run
            self.fail(exc, job)
            saved = None
        if job.release is not None:
            job.release()
        if job.done is not None:
            job.done(saved, job)
