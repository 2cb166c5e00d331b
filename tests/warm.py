"""Warm engines for the test suite: a fork server that imports torch once per pytest worker.

A cold `python -m engine.cli run` spends about 5 s of CPU importing torch and torch._dynamo (the
optimizer's constructor pulls the latter in) before its first step; the suite starts a few hundred
engines, so on a 2-core machine start-up was most of its time. This server imports the engine
once, then forks one child per engine command. The child is the engine as `python -m engine.cli`
would run it: its own argv, working directory, environment, `sys.path` (from PYTHONPATH), standard
streams, a session of its own when asked, and its exit code or signal. The test gets a
`WarmProcess`, which has `subprocess.Popen`'s interface and the engine's real pid, so signals,
`status.json`'s pid and process-tree checks see the real engine.

What differs from a cold start, and where the suite stays cold: the test process is not the
engine's parent (`os.waitpid` on it fails; `wait()` asks the server, which is), `/proc/PID/cmdline`
and `/proc/PID/environ` show the server's (the environment itself is the child's), every child
shares the server's hash seed, and modules the server imported are already in `sys.modules`. Tests of
start-up itself (which modules a command imports, `--help`, exit codes before torch loads) call
`engine_cmd` and run cold; sweep trials and cockpit-launched engines are started by the product and
run cold too. `COCKPIT_TESTS_COLD=1` runs every engine cold.

torchrun's ranks: a warm `--nproc N` engine starts the real torchrun, which starts each rank as a
relay (`python tests/warm.py --relay SOCKET ARGS`, stdlib only): the relay has the server fork the
rank with the relay's streams, environment and working directory, passes on the signals torchrun
sends it, and exits with the rank's code or signal; if the relay is killed, the server kills the
rank. The ranks are children of the server, not of torchrun (`/proc` shows the relays there).

Run as a script, this file is the server: `python tests/warm.py SOCKET`.
"""

from __future__ import annotations

import io
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FDS = 3
#: What a plain `run` imports that costs time; a child imports anything else itself.
PRELOAD = ("torch", "torch._dynamo", "torch.utils.tensorboard", "torch.utils.flop_counter", "torch.utils.data",
           "engine.cli", "engine.run.session", "engine.run.assemble", "engine.train.trainer")


# -- the server ----------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """The server ends with the pytest worker that started it (Linux's PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, MAX_FDS)
    while b"\n" not in data:
        more = conn.recv(1 << 16)
        if not more:
            raise ConnectionError("the client went away mid-request")
        data += more
    return json.loads(data.split(b"\n", 1)[0]), list(fds)


def _run_child(request: dict, fds: list[int], close: list[int]) -> None:
    """In the forked child: become `python -m engine.cli ARGS` and never return."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if request.get("new_session"):
            os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        # Python's own start-up choices for the new streams: stdout line-buffered on a terminal
        # only, stderr always line-buffered.
        for name, fd in (("stdout", 1), ("stderr", 2)):
            old = getattr(sys, name)
            stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(fd, "w", closefd=False)), encoding=old.encoding,
                                      errors=old.errors, line_buffering=fd == 2 or os.isatty(fd))
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)
        for fd in {*close, *fds} - {0, 1, 2}:  # the listener, the clients, the wake pipe, the streams
            os.close(fd)
        cwd = request["cwd"]
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(request["env"])
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [cwd, *extra, *[p for p in sys.path[1:] if p not in extra]]
        import importlib

        importlib.invalidate_caches()
        if os.environ.get("PYTHONUNBUFFERED"):
            for stream in (sys.stdout, sys.stderr):
                stream.reconfigure(write_through=True)
        threads = os.environ.get("OMP_NUM_THREADS")
        import torch

        torch.set_num_threads(int(threads) if threads and threads.isdigit() else (os.cpu_count() or 1))
        _warm_ranks(request["server"])
        sys.argv = [str(ROOT / "engine" / "cli.py"), *request["args"]]
        sys.modules.pop("engine.cli", None)  # as in a cold start, where only __main__ holds the CLI
        import runpy

        try:
            runpy.run_module("engine.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            code = -signal.SIGINT
        except BaseException:  # noqa: BLE001 - as the interpreter would: print it, exit 1
            import traceback

            traceback.print_exc()
            code = 1
        import atexit
        import threading

        threading._shutdown()  # what the interpreter does at exit: join the non-daemon threads
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        if code < 0:  # died of a signal, as Python does on an uncaught KeyboardInterrupt
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code)


def _warm_ranks(server: str) -> None:
    """`--nproc N` starts torchrun as it would, but torchrun starts each rank as a relay
    (`warm.py --relay`): a small stdlib client that has this server fork the rank, hands it its
    streams and environment, passes signals on and exits as the rank did."""
    from engine.run import launch

    cold = launch.torchrun_command

    def torchrun_command(nproc: int, rank_argv: list[str]) -> list[str]:
        line = cold(nproc, rank_argv)
        head = line[:line.index("-m", 2)]  # torchrun and its own options
        return [*head, "--no-python", sys.executable, str(Path(__file__).resolve()), "--relay", server,
                *rank_argv]

    launch.torchrun_command = torchrun_command


def serve(path: str) -> None:
    _die_with_parent()
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(128)  # before the rename: a client that sees the path must find it listening
    os.rename(path + ".tmp", path)  # the client sees the socket only once we are ready
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    waiting: dict[int, socket.socket] = {}  # child pid -> the client that waits for its status
    tied: dict[int, int] = {}  # a relay's connection (fd) -> its child, killed when the relay goes
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select(timeout=1.0):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                try:
                    request, fds = _recv_request(conn)
                except (OSError, ValueError):
                    conn.close()
                    continue
                request["server"] = path
                pid = os.fork()
                if pid == 0:
                    _run_child(request, fds, [listener.fileno(), wake_r, wake_w, conn.fileno(),
                                              *(c.fileno() for c in waiting.values())])
                for fd in fds:
                    os.close(fd)
                waiting[pid] = conn
                _send(conn, {"pid": pid})
                if request.get("tied"):
                    tied[conn.fileno()] = pid
                    sel.register(conn, selectors.EVENT_READ)
            elif key.fd in tied:  # a relay closed its end (it died): its rank dies with it
                try:
                    gone = not conn_peek(key.fileobj)
                except OSError:
                    gone = True
                if gone:
                    sel.unregister(key.fileobj)
                    _kill(tied.pop(key.fd))
            else:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
        while waiting:  # reap every child that ended (a SIGCHLD or the periodic check)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is not None:
                if tied.pop(conn.fileno(), None) is not None:
                    sel.unregister(conn)
                _send(conn, {"status": status})
                conn.close()


def conn_peek(conn: socket.socket) -> bool:
    """False once the client closed its end (a relay sends nothing after its request)."""
    return bool(conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:  # the test let go of it: the child goes on, as a Popen'ed one would
        pass


# -- the client ----------------------------------------------------------------------------------

_server: dict = {}


def cold() -> bool:
    return os.environ.get("COCKPIT_TESTS_COLD") == "1"


def start_server(env: dict[str, str]) -> None:
    """Start this process's server in the background (its imports overlap with collection)."""
    if _server or cold():
        return
    import atexit
    import tempfile

    folder = tempfile.mkdtemp(prefix="warm-", dir="/tmp")
    path = os.path.join(folder, "sock")
    log = open(os.path.join(folder, "server.log"), "wb")  # noqa: SIM115 - kept open for the server's life
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), path], env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    _server.update(path=path, proc=proc, log=log.name)

    def stop() -> None:
        proc.kill()
        proc.wait()

    atexit.register(stop)


def server_path(env: dict[str, str], timeout: float = 180) -> str:
    start_server(env)
    deadline = time.monotonic() + timeout
    while not os.path.exists(_server["path"]):
        if _server["proc"].poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the warm engine server did not start: {Path(_server['log']).read_text()[-2000:]}")
        time.sleep(0.02)
    return _server["path"]


def _stream(spec, mode: str, inherit: int, keep: list, child: list) -> None:
    """Resolve one of Popen's stdin/stdout/stderr specs into the child's fd and our end."""
    if spec is None:  # inherited, as Popen does
        child.append(os.dup(inherit))
        keep.append(None)
    elif spec == subprocess.DEVNULL:
        child.append(os.open(os.devnull, os.O_RDWR))
        keep.append(None)
    elif spec == subprocess.PIPE:
        r, w = os.pipe()
        child.append(r if mode == "r" else w)
        keep.append(w if mode == "r" else r)
    else:
        child.append(os.dup(spec if isinstance(spec, int) else spec.fileno()))
        keep.append(None)


class WarmProcess:
    """`subprocess.Popen` for `python -m engine.cli ARGS`, forked from the warm server."""

    def __init__(self, args, *, cwd=None, env=None, stdin=None, stdout=None, stderr=None, text=False,
                 start_new_session=False, **ignored):
        env = dict(os.environ if env is None else env)
        self.args = list(args)
        self.returncode: int | None = None
        self._text = text or bool(ignored.get("universal_newlines"))
        ours: list = []
        theirs: list[int] = []
        _stream(stdin, "r", 0, ours, theirs)
        _stream(stdout, "w", 1, ours, theirs)
        if stderr == subprocess.STDOUT:
            theirs.append(os.dup(theirs[1]))
            ours.append(None)
        else:
            _stream(stderr, "w", 2, ours, theirs)
        request = {"args": self.args, "cwd": str(cwd or os.getcwd()), "env": env,
                   "new_session": bool(start_new_session)}
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._conn.connect(server_path(env))
            body = json.dumps(request).encode() + b"\n"
            sent = socket.send_fds(self._conn, [body], theirs)
            self._conn.sendall(body[sent:])
        finally:
            for fd in theirs:
                os.close(fd)
        self._buf = b""
        self.pid = int(self._message(None)["pid"])
        self.stdin = self._wrap(ours[0], "wb")
        self.stdout = self._wrap(ours[1], "rb")
        self.stderr = self._wrap(ours[2], "rb")
        self._chunks: dict[int, list[bytes]] = {}

    def _wrap(self, fd, mode):
        if fd is None:
            return None
        raw = open(fd, mode, buffering=0 if mode == "wb" else -1)  # noqa: SIM115
        return io.TextIOWrapper(raw, write_through=True) if self._text else raw

    def _message(self, timeout: float | None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._conn.settimeout(left)
            try:
                more = self._conn.recv(4096)
            except (TimeoutError, BlockingIOError):
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            if not more:
                raise RuntimeError("the warm engine server went away")
            self._buf += more
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.wait(timeout=0)
            except subprocess.TimeoutExpired:
                pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            status = self._message(timeout)["status"]
            self.returncode = os.waitstatus_to_exitcode(status)
            self._conn.close()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input=None, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None and not self.stdin.closed:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        streams = [s for s in (self.stdout, self.stderr) if s is not None]
        with selectors.DefaultSelector() as sel:
            for s in streams:
                if not s.closed:
                    self._chunks.setdefault(s.fileno(), [])
                    sel.register(s.fileno(), selectors.EVENT_READ)
            while sel.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                for key, _ in sel.select(left):
                    data = os.read(key.fd, 1 << 16)
                    if data:
                        self._chunks[key.fd].append(data)
                    else:
                        sel.unregister(key.fd)
        out = [self._collected(s) for s in (self.stdout, self.stderr)]
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return out[0], out[1]

    def _collected(self, stream):
        if stream is None:
            return None
        data = b"".join(self._chunks.get(stream.fileno(), [])) if not stream.closed else b""
        stream.close()
        if not self._text:
            return data
        return data.decode(stream.encoding if hasattr(stream, "encoding") else "utf-8").replace(
            "\r\n", "\n").replace("\r", "\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for s in (self.stdout, self.stderr, self.stdin):
            if s is not None and not s.closed:
                s.close()
        self.wait()


def run(args, *, cwd=None, env=None, timeout: float | None = None, input=None) -> subprocess.CompletedProcess:
    """`subprocess.run(..., capture_output=True, text=True)` for a warm engine."""
    proc = WarmProcess(args, cwd=cwd, env=env, stdin=subprocess.PIPE if input else subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- the relay: one of torchrun's ranks ------------------------------------------------------------

RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)


def relay(path: str, args: list[str]) -> None:
    """Run `cockpit-engine ARGS` forked from the server at `path`, as this process: our streams,
    environment and working directory; signals we get are passed on; we exit as it did. If we are
    killed, the server kills it (the connection is tied to it)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    body = json.dumps({"args": args, "cwd": os.getcwd(), "env": dict(os.environ), "new_session": True,
                       "tied": True}).encode() + b"\n"
    sent = socket.send_fds(conn, [body], [0, 1, 2])
    conn.sendall(body[sent:])
    pending: list[int] = []
    child = {"pid": 0}

    def forward(signum: int, _frame: object) -> None:
        if child["pid"]:
            try:
                os.kill(child["pid"], signum)
            except OSError:
                pass
        else:
            pending.append(signum)

    for sig in RELAYED:
        signal.signal(sig, forward)
    buf = b""
    while True:
        while b"\n" not in buf:
            more = conn.recv(4096)
            if not more:
                os._exit(1)  # the server went away
            buf += more
        line, buf = buf.split(b"\n", 1)
        message = json.loads(line)
        if "pid" in message:
            child["pid"] = int(message["pid"])
            for signum in pending:
                forward(signum, None)
            continue
        code = os.waitstatus_to_exitcode(message["status"])
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code)


if __name__ == "__main__":
    if sys.argv[1] == "--relay":
        relay(sys.argv[2], sys.argv[3:])
    sys.path[0] = str(ROOT)  # as `python -m engine.cli` from the root would have it, not tests/
    serve(sys.argv[1])
