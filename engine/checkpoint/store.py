"""Checkpoints: atomic writes, keep the last K plus the best, load with fallback.

A checkpoint is complete or absent: it is written to a temporary file in the same
directory, flushed and fsynced, renamed into place, and the directory is fsynced. Loading
uses ``weights_only=True`` so a crafted file cannot run code, and a truncated or corrupt
newest file makes loading fall back to the previous valid one, with a warning.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from contracts.layout import BEST, LATEST
from contracts.atomic import fsync_dir, write_atomic, write_json_atomic

FORMAT = 1
REQUIRED = ("format", "step", "model", "optimizer", "trainer", "rng", "config")
_NAME = re.compile(r"^step-(\d{8,})\.(pt|shards)$")
SHARD = "rank-{:05d}.pt"  # one file per rank inside step-NNNNNNNN.shards/ (FSDP)


@dataclass
class Saved:
    """One checkpoint on disk."""

    path: Path
    step: int
    bytes: int
    seconds: float


class CheckpointStore:
    """The run's checkpoints/ folder."""

    def __init__(self, folder: Path, keep_last: int = 3):
        self.folder, self.keep_last = folder, keep_last
        folder.mkdir(parents=True, exist_ok=True)

    def files(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete checkpoint file, oldest first."""
        found = []
        for p in self.folder.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def clean_temporaries(self) -> None:
        """Remove temporaries left by a writer that was killed mid-save."""
        for p in self.folder.glob(".*.tmp-*"):
            _remove(p)

    def path_for(self, step: int) -> Path:
        """The checkpoint written at `step` (a file, or a directory of shards)."""
        shards = self.folder / f"step-{step:08d}.shards"
        return shards if shards.is_dir() else self.folder / f"step-{step:08d}.pt"

    # ---- sharded checkpoints (FSDP): every rank writes its own file ---------------------

    def shards_tmp(self, step: int) -> Path:
        """Rank 0: a fresh temporary directory for the ranks' shard files of `step`."""
        tmp = self.folder / f".step-{step:08d}.shards.tmp-{os.getpid()}"
        _remove(tmp)
        tmp.mkdir()
        return tmp

    @staticmethod
    def write_shard(tmp: Path, rank: int, state: dict[str, Any]) -> int:
        """Any rank: write its shard atomically into the temporary directory."""
        return write_atomic(tmp / SHARD.format(rank), lambda f: torch.save(state, f))

    @staticmethod
    def discard(tmp: Path) -> None:
        """Remove a temporary directory of shards whose save failed."""
        _remove(tmp)

    def commit_shards(self, tmp: Path, step: int, best: bool, start: float) -> Saved:
        """Rank 0, once every rank has written: rename the directory into place (complete or
        absent, as for a single file), then update the pointers and prune."""
        path = self.folder / f"step-{step:08d}.shards"
        fsync_dir(tmp)
        _remove(path)
        tmp.rename(path)
        fsync_dir(self.folder)
        size = sum(f.stat().st_size for f in path.iterdir())
        write_json_atomic(self.folder / LATEST, {"file": path.name, "step": step})
        if best:
            write_json_atomic(self.folder / BEST, {"file": path.name, "step": step})
        self.prune()
        return Saved(path, step, size, time.perf_counter() - start)

    def save(self, state: dict[str, Any], step: int, best: bool = False) -> Saved:
        """Write `state` as step-NNNNNNNN.pt, update the pointers, prune old files."""
        start = time.perf_counter()
        path = self.folder / f"step-{step:08d}.pt"
        size = write_atomic(path, lambda f: torch.save(state, f))
        write_json_atomic(self.folder / LATEST, {"file": path.name, "step": step})
        if best:
            write_json_atomic(self.folder / BEST, {"file": path.name, "step": step})
        self.prune()
        return Saved(path, step, size, time.perf_counter() - start)

    def pointer(self, name: str) -> str | None:
        """The file a pointer (latest, best) names, if readable."""
        try:
            return json.loads((self.folder / name).read_text())["file"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def pointer_step(self, name: str) -> int | None:
        """The step a pointer (latest, best) names, if readable."""
        try:
            return int(json.loads((self.folder / name).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def prune(self) -> None:
        """Delete all but the newest keep_last files and the best one."""
        keep = {p.name for _, p in self.files()[-self.keep_last:]}
        best = self.pointer(BEST)
        for _, p in self.files():
            if p.name not in keep and p.name != best:
                _remove(p)

    def load_latest(self, warn: Callable[[str], None]) -> tuple[dict[str, Any], Path] | None:
        """The newest checkpoint that loads and is complete; older ones on failure.

        Once a usable one is found, the unusable newer files are renamed to *.unusable: kept
        for inspection, but no longer taking a keep_last slot or warning at every resume.
        With no usable file at all, nothing is touched.
        """
        bad: list[Path] = []
        for _, path in reversed(self.files()):
            try:
                state = load_rank(path, 0)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped
                warn(f"checkpoint {path.name} is unusable ({_short(exc)}); trying the previous one")
                bad.append(path)
                continue
            for b in bad:
                b.replace(b.with_name(b.name + ".unusable"))
            return state, path
        return None

    def mark_best(self, step: int) -> None:
        """Point `best` at the checkpoint already written for this step."""
        write_json_atomic(self.folder / BEST, {"file": self.path_for(step).name, "step": step})


def best_or_latest(folder: Path) -> Path | None:
    """A run's best checkpoint, else its latest (by the pointers; None when neither names a
    file that exists). Only reads: a finished run used as a teacher or quantized is never changed."""
    for pointer in (BEST, LATEST):
        try:
            name = json.loads((folder / pointer).read_text())["file"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (folder / name).exists():
            return folder / name
    return None


def load(path: Path) -> dict[str, Any]:
    """Load and check one checkpoint (weights only: unpickling cannot run code)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("not a checkpoint dictionary")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if state["format"] != FORMAT:
        raise ValueError(f"format version {state['format']}, this engine reads {FORMAT}")
    return state


def load_rank(path: Path, rank: int) -> dict[str, Any]:
    """One rank's state: the file itself, or that rank's file in a directory of shards."""
    if not path.is_dir():
        return load(path)
    state = load(path / SHARD.format(rank))
    world = state.get("world_size", 1)
    missing = [SHARD.format(r) for r in range(world) if not (path / SHARD.format(r)).is_file()]
    if missing:
        raise ValueError(f"shards missing: {', '.join(missing)}")
    return state


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _short(exc: Exception) -> str:
    lines = f"{type(exc).__name__}: {exc}".splitlines()
    # torch's weights-only refusal puts the reason on a later line ("WeightsUnpickler error:
    # Unsupported global: GLOBAL exec ..." or "Trying to load unsupported GLOBAL posix.system ...")
    reason = next((ln.strip() for ln in lines if "WeightsUnpickler error" in ln or "GLOBAL" in ln), "")
    return (lines[0][:100] + (f" {reason[:160]}" if reason else "")).strip()
