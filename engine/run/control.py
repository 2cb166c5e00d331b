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
from pathlib import Path
from typing import Any, Callable

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
