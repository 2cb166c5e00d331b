"""A checkpoint the disk has no room for: how it is recognized and how it is described.

A full disk (or quota) shows up as OSError ENOSPC/EDQUOT from a write, flush or fsync, or,
when torch's serializer (inline_container.cc) is the one writing, as a RuntimeError such as
"unexpected pos 165632 vs 165528" with the OSError at best somewhere in the exception chain.
Such a failure is a `DiskFull`: the loop pauses and retries instead of failing the run.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import torch

_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: Words torch's zip writer uses when a write fell short (the OS error itself is often lost).
_SERIALIZER = ("inline_container", "unexpected pos", "PytorchStreamWriter failed")


class DiskFull(RuntimeError):
    """A checkpoint could not be written for want of space (every rank raises it, agreed)."""

    def __init__(self, step: int, folder: Path, needed: int | None, free: int | None,
                 last_good: str | None, cause: str):
        self.step, self.folder, self.needed, self.free = step, folder, needed, free
        self.last_good, self.cause = last_good, cause
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        """One line: why the run is paused (the state event's and status.json's reason)."""
        size = f"about {human(self.needed)}" if self.needed else "a checkpoint"
        free = human(self.free) if self.free is not None else "unknown"
        last = self.last_good or "none yet"
        return (f"disk full: the checkpoint of step {self.step} ({size}) does not fit in {self.folder} "
                f"({free} free); last good checkpoint: {last}; retrying when space is freed")


class DiskFullTimeout(RuntimeError):
    """No room for a checkpoint within checkpoint.disk_full_wait_s: the run fails, explained in
    one paragraph (no traceback unless --debug)."""

    explained = True  # engine.train.trainer: the message says it all


def is_disk_full(exc: BaseException, folder: Path, needed: int | None) -> bool:
    """True when `exc` means the disk (or quota) had no room for the checkpoint."""
    seen: set[int] = set()
    current: BaseException | None = exc
    serializer = False
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _ERRNOS:
            return True
        text = str(current)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        serializer = serializer or (isinstance(current, RuntimeError) and any(w in text for w in _SERIALIZER))
        current = current.__cause__ or current.__context__
    if serializer:  # the zip writer lost the OS error: ask the file system
        free = free_bytes(folder)
        return free is not None and needed is not None and free < needed + (1 << 20)
    return False


def free_bytes(folder: Path) -> int | None:
    """Bytes free to us in `folder`'s file system (None if it cannot be asked)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def state_bytes(obj: Any) -> int:
    """The bytes of the tensors in a checkpoint dictionary (a lower bound on its file size)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def human(n: int | None) -> str:
    """1536 -> '1.5 KiB'."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
