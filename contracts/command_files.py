"""Commands through the run directory, for an engine on another host.

The control socket (contracts.control) is a Unix socket: it reaches an engine on this host only.
An engine on a Slurm compute node shares the run directory with the login node instead, so a
command can travel as a file:

    RUN/commands/<id>.json       {"cmd": "pause", "id": "<id>"}      (written by the client)
    RUN/events.jsonl             {"type": "command_reply", "id": "<id>", "cmd": "pause", "reply": {"ok": true, ...}}

The client writes the request atomically (a dot-file renamed into place, so the engine never
reads half of one); rank 0 of the engine looks into the folder at step boundaries (at most
every `POLL_S`), takes each file in name order (ids sort by time), deletes it, and answers at
the same boundary as a socket command would, with a `command_reply` event. The requests are
the socket's (`decode_request`); a file that is not one is answered with its error and removed.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterator

from contracts.control import MAX_REQUEST_BYTES, ProtocolError, decode_request, encode_request

FOLDER = "commands"
#: How often the engine looks into the folder (a listing on a network filesystem is a round trip).
POLL_S = 0.5
REPLY = "command_reply"


def folder(run: Path) -> Path:
    return Path(run) / FOLDER


def post(run: Path, cmd: str, **args: Any) -> str:
    """Leave one command for the engine of `run`; its id (the reply event carries it)."""
    request = decode_request(encode_request(cmd, **args))  # the socket's rules (ProtocolError)
    ident = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}"
    where = folder(run)
    where.mkdir(exist_ok=True)
    tmp = where / f".{ident}.tmp"
    tmp.write_text(json.dumps({**request, "id": ident}) + "\n", encoding="utf-8")
    os.replace(tmp, where / f"{ident}.json")
    return ident


def take(run: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """The engine: each waiting command as (id, request, None) or (id, None, error), oldest
    first; each file is removed as it is taken."""
    try:
        names = sorted(p.name for p in folder(run).iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        return
    for name in names:
        path = folder(run) / name
        ident = name[:-len(".json")]
        try:
            raw = path.read_bytes()
            path.unlink()
        except OSError:  # taken meanwhile (another reader) or unreadable: not ours to answer
            continue
        try:
            request = decode_request(_without_id(raw.strip()))
        except ProtocolError as exc:
            yield ident, None, str(exc)
            continue
        yield ident, request, None


def _without_id(raw: bytes) -> bytes:
    """The request line less the file's own `id` (a command that checks its fields, such as
    `set` or `target`, would refuse it)."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw  # decode_request says what is wrong
    if not isinstance(obj, dict) or "id" not in obj or len(raw) > 2 * MAX_REQUEST_BYTES:
        return raw
    obj.pop("id")
    return json.dumps(obj).encode()


def reply_of(events: list[dict[str, Any]], ident: str) -> dict[str, Any] | None:
    """The reply to command `ident` among these events, if it came."""
    for e in events:
        if e.get("type") == REPLY and e.get("id") == ident:
            return e.get("reply")
    return None


def wait_reply(run: Path, ident: str, timeout: float, poll_s: float = 0.2) -> dict[str, Any]:
    """Follow RUN/events.jsonl until the reply to `ident` (TimeoutError after `timeout` s)."""
    from contracts.events import read_events

    deadline = time.monotonic() + timeout
    offset = 0  # bytes of whole lines already read
    path = Path(run) / "events.jsonl"
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            data = b""
        cut = data.rfind(b"\n") + 1
        if cut:
            offset += cut
            found = reply_of(list(read_events(io.StringIO(data[:cut].decode("utf-8", "replace")))), ident)
            if found is not None:
                return found
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no reply to {ident} in {timeout:g} s (is the engine running? it reads "
                               f"{folder(run)} at its step boundaries)")
        time.sleep(poll_s)


#: Set to "file" to send every command through the run directory (a test forcing the
#: cross-host channel on one host, or a cluster whose login node shares no socket path).
VIA_ENV = "COCKPIT_COMMANDS_VIA"


def via_file(status: dict[str, Any], via: str = "auto") -> bool:
    """Whether a command to the engine of this status goes through the run directory: asked for,
    or the engine runs on another host (its Unix socket is not reachable from here)."""
    import socket

    via = via if via != "auto" else os.environ.get(VIA_ENV, "auto")
    if via in ("file", "socket"):
        return via == "file"
    host = status.get("host")
    return host is not None and host != socket.gethostname()


def send(run: Path, cmd: str, timeout: float = 600.0, via: str = "auto", **args: Any) -> dict[str, Any]:
    """One command to the engine of `run`, by its socket or its commands folder; the reply
    (OSError, TimeoutError or ProtocolError when none comes)."""
    from contracts.control import send_command

    try:
        status = json.loads((Path(run) / "status.json").read_text())
    except (OSError, ValueError):
        status = {}
    if via_file(status, via):
        return wait_reply(run, post(run, cmd, **args), timeout)
    sock = status.get("socket")
    if not sock:
        raise FileNotFoundError(f"{run}: no status.json naming a control socket (is the engine running?)")
    return send_command(sock, cmd, timeout=timeout, **args)
