"""Resume from S3: bring a mirrored run into the local run directory when S3 is ahead of it.

A new instance has no local directory at all: `cockpit-engine resume RUN-ID --s3
s3://bucket/prefix` creates it from `<prefix>/<RUN-ID>/` (config.toml, events.jsonl and the
checkpoint S3's `latest` names). A local directory whose newest checkpoint is older than S3's
gets that checkpoint (and S3's history and config) too; one that is as new or newer is left
alone. Files land atomically (boto3 downloads to a temporary name and renames; a directory of
shards is renamed into place once complete). Loading stays `weights_only=True` (the usual
resume path reads the file). A run another engine holds the lease on is refused (exit 2)
before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

from contracts.layout import BEST, LATEST, RunLayout
from contracts.atomic import write_atomic, write_json_atomic
from engine.cloud.lease import refuse_if_held
from engine.cloud.s3 import S3Location, client, is_missing, transfer_config, unreachable, uri_problem
from contracts.errors import BadInput


def locate(arg: str, root: Path, s3_uri: str | None, wait_s: float = 0.0) -> tuple[Path, list[str]]:
    """The local run directory for `resume ARG [--s3 URI]`, pulled from S3 where S3 is ahead,
    and the --set overrides that keep mirroring to URI (waiting up to `wait_s` for a lease)."""
    if s3_uri is not None and uri_problem(s3_uri):
        raise BadInput(f"--s3 {s3_uri!r}: {uri_problem(s3_uri)}")
    local = next((c for c in (Path(arg), root / arg) if RunLayout(c).config.is_file()), None)
    configured = _configured_uri(local) if local else None
    uri = s3_uri or configured
    if local is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return local, []  # one rank of several: the launcher pulled already, and rank 0 holds the lease
    if uri is None:
        if local is None:
            raise BadInput(f"run {arg!r}: no run directory with a config.toml here or under {str(root)!r} "
                           "(to continue a run mirrored to S3, add --s3 s3://bucket/prefix)")
        return local, []
    if local is None:
        local = Path(arg) if os.sep in arg or arg.startswith(".") else root / arg
    where = S3Location.parse(uri).child(local.name)
    try:
        pull(local, where, f"resume {arg!r}", wait_s)
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore: no network, no access, no bucket
        raise unreachable(f"resume {arg!r}", where, exc) from None
    return local, ([f"checkpoint.s3_uri={json.dumps(uri)}"] if s3_uri and s3_uri != configured else [])


def _configured_uri(run: Path) -> str | None:
    try:
        value = tomllib.loads(RunLayout(run).config.read_text()).get("checkpoint", {}).get("s3_uri")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


def pointer(s3: Any, where: S3Location, name: str = LATEST) -> dict[str, Any] | None:
    """A pointer object in S3 ({"file", "step"}), or None."""
    try:
        doc = json.loads(s3.get_object(Bucket=where.bucket, Key=where.key("checkpoints", name))["Body"].read())
        return doc if isinstance(doc, dict) and isinstance(doc.get("file"), str) else None
    except Exception as exc:  # noqa: BLE001
        if is_missing(exc):
            return None
        raise


def local_step(run: Path) -> int | None:
    """The step of the local `latest` checkpoint, if it names one that exists."""
    try:
        doc = json.loads(RunLayout(run).latest.read_text())
        return int(doc["step"]) if (RunLayout(run).checkpoints / doc["file"]).exists() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pull(run: Path, where: S3Location, what: str, wait_s: float = 0.0) -> str | None:
    """Bring S3's newer state into `run`; a line saying what was pulled (None: nothing to do)."""
    s3 = client()
    refuse_if_held(s3, where, what, wait_s)
    latest = pointer(s3, where)
    have_config = RunLayout(run).config.is_file()
    if latest is None:
        if have_config:
            return None  # nothing in S3 beyond what we have
        raise BadInput(f"{what}: no run in {where} (no checkpoints/latest) and no local run directory "
                       f"{str(run)!r}; nothing was changed")
    mine = local_step(run) if have_config else None
    if mine is not None and mine >= int(latest["step"]):
        return None
    files = _checkpoint_keys(s3, where, latest["file"])
    if not files:
        raise BadInput(f"{what}: {where}/checkpoints/latest names {latest['file']!r}, which is not in S3; "
                       "nothing was changed")
    config = _get(s3, where, "config.toml")
    if config is None and not have_config:
        raise BadInput(f"{what}: {where} has checkpoints but no config.toml; nothing was changed")
    folder = RunLayout(run).checkpoints
    folder.mkdir(parents=True, exist_ok=True)
    _download_checkpoint(s3, where, latest["file"], files, folder)
    write_json_atomic(folder / LATEST, {"file": latest["file"], "step": int(latest["step"])})
    best = pointer(s3, where, BEST)
    if best and (folder / best["file"]).exists():
        write_json_atomic(folder / BEST, {"file": best["file"], "step": int(best["step"])})
    if config is not None:
        write_atomic(RunLayout(run).config, lambda f: f.write(config))
    events = _get(s3, where, "events.jsonl")
    local_events = RunLayout(run).events
    if events is not None and (not local_events.exists() or local_events.stat().st_size < len(events)):
        write_atomic(local_events, lambda f: f.write(events))
    return f"pulled {latest['file']} (step {latest['step']}) from {where}"


def _get(s3: Any, where: S3Location, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=where.bucket, Key=where.key(key))["Body"].read()
    except Exception as exc:  # noqa: BLE001
        if is_missing(exc):
            return None
        raise


def _checkpoint_keys(s3: Any, where: S3Location, name: str) -> list[str]:
    """The object keys of one checkpoint (one file, or a directory's files)."""
    base = where.key("checkpoints", name)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=base):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"] == base or o["Key"].startswith(base + "/")]
    return keys


def _download_checkpoint(s3: Any, where: S3Location, name: str, keys: list[str], folder: Path) -> None:
    config = transfer_config()
    base = where.key("checkpoints", name)
    target = folder / name
    if keys == [base]:  # one file
        s3.download_file(where.bucket, base, str(target), Config=config)
        return
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for key in keys:
        s3.download_file(where.bucket, key, str(tmp / key[len(base) + 1:]), Config=config)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
