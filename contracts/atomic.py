"""Atomic file replacement: a same-directory temporary, fsync, rename, fsync the directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Any], None], durable: bool = True) -> int:
    """Write a file through a same-directory temporary and a rename; return its size.

    `durable=False` skips the fsyncs: readers still never see half a file (the rename is
    atomic), but a power cut may lose the newest version. Right for live status files.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return size


def write_json_atomic(path: Path, obj: Any, durable: bool = True) -> None:
    """Replace a small JSON file atomically."""
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode()), durable)
