"""Where a study lives: an Optuna RDB storage (SQLite by default), and URLs with their
passwords masked wherever they are shown."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from contracts.layout import SWEEPS_DB

#: Seconds between heartbeats and before a silent trial counts as dead (overridable for tests).
HEARTBEAT_S = int(os.environ.get("COCKPIT_SWEEP_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("COCKPIT_SWEEP_GRACE_S", "60"))
#: How many times a dead trial is retried (each retry resumes the same run directory).
MAX_RETRY = 3

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@")
_QUERY_PW = re.compile(r"(?i)([?&;](?:password|pass|pwd)=)[^&;\s]*")


def mask_url(text: Any) -> str:
    """`text` with the password of every URL in it replaced by ***: the userinfo's
    (postgresql+psycopg2://user:secret@host/db) and a password=... query argument."""
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))
    return _QUERY_PW.sub(r"\1***", out)


def default_url(runs_dir: Path) -> str:
    return f"sqlite:///{(runs_dir / SWEEPS_DB).resolve()}"


def open_storage(url: str, heartbeat_s: int | None = None, grace_s: int | None = None) -> Any:
    """An RDBStorage with heartbeats and the retry of stale trials; SQLite gets WAL and a busy
    timeout so that several workers on one machine never see "database is locked"."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 30}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # ask-and-tell with heartbeats is what we do on purpose (a thread per trial records them)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    if url.startswith("sqlite"):
        _wal_on_connect()
    return RDBStorage(
        url, engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_s or HEARTBEAT_S, grace_period=grace_s or GRACE_S,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))


_installed = False


def _wal_on_connect() -> None:
    """PRAGMA journal_mode=WAL (and a busy timeout) on every SQLite connection."""
    global _installed
    if _installed:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        if type(dbapi_connection).__module__.startswith("sqlite3"):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    _installed = True
