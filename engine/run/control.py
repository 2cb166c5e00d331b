"""The control socket: JSON commands in, JSON replies out, acted on at step boundaries.

A thread accepts connections on a Unix socket (mode 0600 from the moment it exists) and
validates each request. `status` is answered at once; every other command is queued for
the training loop, which acts on it at the next step boundary and fills in the reply.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from contracts import command_files
from contracts.control import MAX_REQUEST_BYTES, Pending, ProtocolError, decode_request, encode_reply

#: How long a client waits for the loop to act before it is told the engine is busy.
REPLY_TIMEOUT_S = 300.0
#: Connections the kernel queues before `accept`: as many as it allows (Linux clamps this to
#: net.core.somaxconn, 4096 by default). A queued connection costs only a small kernel buffer,
#: and a crowd (several cockpits polling status, a sweep worker, scripts) arrives at once while
#: the accept thread may be waiting for the GIL behind a training step; 16 refused about two
#: requests in three from 50 simultaneous clients that do not retry. Our clients also retry a
#: full backlog briefly (contracts.control.connect).
BACKLOG = socket.SOMAXCONN


class ControlServer:
    """Listens on the run's control socket."""

    def __init__(self, path: Path, status: Callable[[], dict[str, Any]]):
        self.path, self.status = path, status
        self.queue: queue.Queue[Pending] = queue.Queue()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.closed = False

    def start(self) -> None:
        """Bind (owner-only from the first instant) and start accepting."""
        self.path.unlink(missing_ok=True)  # a dead engine's socket; we hold the run lock
        old = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(BACKLOG)
        threading.Thread(target=self._accept, name="control", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10.0)
            try:
                raw = _read_line(conn)
                conn.sendall(self._respond(raw))
            except (OSError, TimeoutError):
                return

    def _respond(self, raw: bytes) -> bytes:
        try:
            request = decode_request(raw)
        except ProtocolError as exc:
            return encode_reply(False, error=str(exc))
        if request["cmd"] == "status":
            return encode_reply(True, **self.status())
        pending = Pending(request)
        self.queue.put(pending)
        if not pending.done.wait(REPLY_TIMEOUT_S) or pending.reply is None:
            return encode_reply(False, error="the engine did not act on the command in time")
        return encode_reply(**pending.reply)

    def poll(self) -> list[Pending]:
        """Commands that arrived since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self.queue.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: float) -> Pending | None:
        """The next command, waiting up to `timeout` seconds."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop listening, remove the socket, and refuse whatever is still queued."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.path.unlink(missing_ok=True)
        for pending in self.poll():
            pending.answer(False, error="the engine has exited")


def _read_line(conn: socket.socket) -> bytes:
    """One request line; stops reading past the size limit so the decoder can refuse it."""
    buf = b""
    while b"\n" not in buf and len(buf) <= MAX_REQUEST_BYTES:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0] if len(buf) <= MAX_REQUEST_BYTES else buf


class FilePending(Pending):
    """A command that came as a file (contracts.command_files): its reply is a `command_reply` event."""

    def __init__(self, request: dict[str, Any], ident: str, emit: Callable[..., Any]):
        super().__init__(request)
        self.ident, self.emit = ident, emit

    def answer(self, ok: bool = True, **fields: Any) -> None:
        super().answer(ok, **fields)
        self.emit(command_files.REPLY, id=self.ident, cmd=self.cmd, reply=self.reply)


class FileInbox:
    """RUN/commands/: the commands of a client on another host (a login node), read at step
    boundaries at most every POLL_S. `status` is answered at once from `status()`.

    Files already there when the engine starts are stale (their client has given up on an engine
    that was not running) and are answered as such, except a `requeue` tagged with this Slurm
    job's session (`slurm_run`): Slurm's USR1 may come while the engine is still starting."""

    def __init__(self, run: Path, status: Callable[[], dict[str, Any]], emit: Callable[..., Any],
                 session_tag: str | None = None):
        self.run, self.status, self.emit, self.session_tag = run, status, emit, session_tag
        self.last = 0.0
        self.ready: list[Pending] = []

    def start(self) -> None:
        for ident, request, error in command_files.take(self.run):
            if request is not None and request["cmd"] == "requeue" and self.session_tag and \
                    request.get("slurm_run") == self.session_tag:
                self.ready.append(FilePending(request, ident, self.emit))
            else:
                self.emit(command_files.REPLY, id=ident, cmd=(request or {}).get("cmd"),
                          reply={"ok": False, "error": error or "stale: written before this engine started"})
        self.last = time.monotonic()

    def poll(self) -> list[Pending]:
        now = time.monotonic()
        if now - self.last < command_files.POLL_S and not self.ready:
            return []
        self.last = now
        out, self.ready = self.ready, []
        for ident, request, error in command_files.take(self.run):
            if request is None:
                self.emit(command_files.REPLY, id=ident, cmd=None, reply={"ok": False, "error": error})
            elif request["cmd"] == "status":
                FilePending(request, ident, self.emit).answer(True, **self.status())
            else:
                out.append(FilePending(request, ident, self.emit))
        return out

    def wait(self, timeout: float) -> Pending | None:
        time.sleep(min(timeout, command_files.POLL_S))
        got = self.poll()
        self.ready = got[1:] + self.ready
        return got[0] if got else None

    def close(self) -> None:
        pass


class Inboxes:
    """The control socket and the commands folder as one server for the Commands source."""

    def __init__(self, *servers: Any):
        self.servers = servers

    def start(self) -> None:
        for s in self.servers:
            s.start()

    def poll(self) -> list[Pending]:
        return [p for s in self.servers for p in s.poll()]

    def wait(self, timeout: float) -> Pending | None:
        """The socket waits (the first server); the folder is looked at after it."""
        first, *rest = self.servers
        got = first.wait(timeout)
        if got is not None:
            return got
        for s in rest:
            more = s.poll()
            if more:
                s.ready = more[1:] + getattr(s, "ready", [])
                return more[0]
        return None

    def close(self) -> None:
        for s in self.servers:
            s.close()
