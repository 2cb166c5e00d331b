"""The engine's side of a run directory: its id, status.json, the single-writer lock (the layout
itself is contracts.layout)."""

from __future__ import annotations

import fcntl
import os
from contracts.errors import BadInput
from contracts.layout import RunLayout


class RunDir(RunLayout):
    """One run directory as the engine holds it: the layout (and its status writes), plus its lock."""

    def lock(self) -> int:
        """Hold the run's lock for this process's life; BadInput if another engine has it.

        A POSIX record lock, not flock: forked DataLoader workers must not inherit it, or a
        killed engine's orphaned workers would keep the run locked against `resume`.
        """
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            os.close(fd)
            raise BadInput(f"run {str(self.path)!r} is already being trained by another engine") from None
        return fd
