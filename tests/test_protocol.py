"""The wire contract: events and commands survive encoding, and readers are forgiving."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from contracts.control import COMMANDS, MAX_REQUEST_BYTES, ProtocolError, decode_reply, decode_request, encode_reply, encode_request
from contracts.events import EVENT_TYPES, VERSION, decode_event, encode_event, make_event, read_events, replay

# A plausible value for every field any event type carries.
SAMPLE = {
    "state": "running", "pid": 4242, "host": "gpu-box", "step": 120, "exit_code": 3,
    "reason": "SIGTERM", "epoch": 2, "checkpoint": "step-00000120.pt", "batch": 17,
    "batches_per_epoch": 45, "loss": 0.4125, "lr": 0.003, "samples_per_s": 1834.5,
    "steps_per_s": 57.3, "eta_s": 61.2, "train_s": 812.5, "losses": {"ce": 0.41, "kd": 0.12}, "accuracy": 0.875, "time_data_s": 0.001, "time_h2d_s": 0.0004, "time_compute_s": 0.012,
    "time_optim_s": 0.002, "time_comm_s": 0.0, "mem_peak_bytes": 2**33, "world_size": 2, "metrics": {"loss": 0.31, "accuracy": 0.912},
    "devices": [{"index": 0, "util": 97.0, "mem_used": 10.5, "mem_total": 80.0}],
    "price_per_hour": 2.5, "source": "config", "accumulated": 0.12, "projected": 0.9,
    "lifecycle": "spot", "instance_type": "p4d.24xlarge", "notice": None,
    "kind": "notice", "zone": "us-east-1a", "region": "us-east-1", "action": "terminate",
    "notice_time": "2026-12-01T23:10:00Z", "seconds_left": 112.5, "rebalance_time": "2026-12-01T23:05:00Z",
    "path": "/runs/x/checkpoints/step-00000120.pt", "seconds": 0.21, "bytes": 123456,
    "best": True, "number": 7, "params": {"lr": 0.01, "batch_size": 64}, "value": 0.93,
    "level": "warning", "message": "checkpoint step-00000130.pt is unusable",
    "traceback": "Traceback (most recent call last):\n  ...\nValueError: boom",
    "skipped_steps": 1, "tflops": 12.5, "mfu": 0.41, "bound": "input", "share": 0.62,
    "field": "data.num_workers", "remedy": "raise data.num_workers", "stall_s": 0.004,
    "teacher": "runs/20261201-teacher", "sha256": "9f2c" * 16, "temperature": 3.0, "alpha": 0.5,
    "price_age_s": 42.0, "currency": "USD", "per_epoch": 0.03, "per_1k_samples": 0.0004, "remaining_steps": 300,
    "lost": 0.01, "lost_steps": 7, "on_demand_per_hour": 32.77, "savings": 0.4, "since": 1732406000.5,
    "step_accumulated": 0.11, "from_step": 100, "from_accumulated": 0.05, "checkpoint_step": 110,
    "checkpoint_accumulated": 0.1,
    "what": "checkpoint", "ok": True, "uri": "s3://bucket/runs/x/checkpoints/step-00000120.pt",
    "file": "step-00000120.pt", "multipart": True, "pending": ["step-00000130.pt"], "error": "timed out",
    "current": 0, "changes": {"data.num_workers": [0, 3]}, "overrides": ["data.num_workers=3"], "exact": True,
    "slowest": 1, "ranks": [{"rank": 0, "host": "node-a", "busy_s": 0.01}, {"rank": 1, "host": "node-b", "busy_s": 0.03}],
    "severity": "warning", "id": "01732406400123456789-42-a1b2c3",
    "cmd": "pause", "reply": {"ok": True, "state": "paused", "step": 120}, "job_id": "4242", "restart_count": 1,
    "nodes": 4, "node_list": "gpu[01-04]", "partition": "gpu", "waited_s": 73.5,
    "steps": 320, "sessions": 2, "total_s": 18.75, "goodput": 0.58, "dollars": None, "final": True,
    "classes": {"productive": {"seconds": 10.8, "dollars": 0.0}, "lost": {"seconds": 4.0, "dollars": 0.0}},
    "worst": {"class": "lost", "seconds": 4.0, "remedy": "checkpoint more often"}, "queued_s": 12.5,
    "checkpoint_interval": {"every_steps": 4, "interval_s": 0.2}, "every_steps": 4, "interval_s": 0.2,
    "stall_s": 0.01, "stall_measured": True, "mtbi_s": 1.0, "step_s": 0.05, "expected_lost_s": 0.1,
    "metric": "val_accuracy", "target": 0.98, "reached": False, "projected_step": 4100, "projected_s": 720.0,
    "projected_dollars": 0.41, "interval": {"low": 3800, "high": None}, "asymptote": 0.991,
    "residuals": [0.001, -0.002, 0.0005], "law": "a - b * step^-c", "points": 3, "s_per_step": 0.2,
    "parameters": 12874, "latency_ms": 0.083, "latency_batch": 1, "latency_compiled": True,
    "latency_note": "torch.compile failed, eager latency: ...",
    "stop": True, "by": "cockpit",
}


def strict_json(line: str):
    """json.loads that refuses NaN/Infinity tokens, as JavaScript and most other readers do."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("type_", sorted(EVENT_TYPES))
def test_every_event_type_round_trips_through_one_json_line(type_):
    fields = {name: SAMPLE[name] for name in EVENT_TYPES[type_]}
    event = make_event(type_, t=1732406400.123456, **fields)
    line = encode_event(event)
    assert line.endswith("\n") and line.count("\n") == 1, "one event must be exactly one line"
    assert strict_json(line) == event
    decoded = decode_event(line)
    assert decoded == event
    assert decoded["v"] == VERSION and decoded["type"] == type_
    assert decoded["t"] == 1732406400.123  # stamped to the millisecond


def test_nan_and_infinity_are_sent_as_strings_in_valid_json():
    event = make_event("step", t=1.0, step=3, loss=float("nan"), lr=float("inf"), eta_s=None)
    eval_event = make_event("eval", t=1.0, step=3, epoch=0,
                            metrics={"loss": float("-inf"), "accuracy": 0.5, "hist": [1.0, float("nan")]})
    for ev in (event, eval_event):
        line = encode_event(ev)
        strict_json(line)  # would raise on a bare NaN / Infinity token
        assert "NaN" not in line and "Infinity" not in line
    assert decode_event(encode_event(event))["loss"] == "nan"
    assert decode_event(encode_event(event))["lr"] == "inf"
    back = decode_event(encode_event(eval_event))
    assert back["metrics"] == {"loss": "-inf", "accuracy": 0.5, "hist": [1.0, "nan"]}
    # The original event is left untouched for the other sinks.
    assert math.isnan(event["loss"])


@pytest.mark.parametrize("line", [
    "",
    "\n",
    "not json at all",
    '{"v":1,"t":1.5,"type":"st',              # a line cut short by a killed writer
    '{"v":1,"t":1.5,"type":"step","step":3',  # also cut short
    "[1, 2, 3]",
    '"step"',
    "42",
    "null",
    '{"v":1,"t":1.5}',                        # no type
    '{"v":1,"t":1.5,"type":7}',               # type is not a string
    '{"t":1.5,"type":"step"}',                # no version
    '{"v":"1","t":1.5,"type":"step"}',        # version is not an integer
    '{"v":1,"type":"step"}',                  # no time
    '{"v":1,"t":"noon","type":"step"}',       # time is not a number
    b"\xff\xfe\x00garbage",                   # not UTF-8
])
def test_decode_event_returns_none_for_anything_that_is_not_an_event(line):
    assert decode_event(line) is None


def test_read_events_skips_junk_and_keeps_unknown_types_for_later_versions(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    lines = [
        encode_event(make_event("state", t=1.0, state="running", step=0)),
        "garbage that a crash left behind\n",
        encode_event(make_event("step", t=2.0, step=1, loss=2.30, lr=0.1)),
        # a newer engine: a type this reader has never heard of, and extra fields
        '{"v":2,"t":3.0,"type":"gradient_norms","step":1,"norms":[0.1,0.2]}\n',
        '{"v":2,"t":4.0,"type":"step","step":2,"loss":1.9,"lr":0.1,"loss_ema":1.95,"shiny":{"a":1}}\n',
        "[]\n",
        encode_event(make_event("step", t=5.0, step=3, loss=1.5, lr=0.1)),
        '{"v":1,"t":6.0,"type":"step","step":4,"lo',  # torn last line
    ]
    path.write_text("".join(lines))
    with open(path, encoding="utf-8") as f:
        events = list(read_events(f))
    assert [e["type"] for e in events] == ["state", "step", "gradient_norms", "step", "step"]

    # A consumer that only knows "step" events and the loss field still works.
    def loss_curve(stream) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in read_events(stream) if e["type"] == "step"}

    with open(path, encoding="utf-8") as f:
        assert loss_curve(f) == {1: 2.30, 2: 1.9, 3: 1.5}
    # Bytes lines (as read from a binary file or socket) work the same way.
    with open(path, "rb") as f:
        assert loss_curve(f) == {1: 2.30, 2: 1.9, 3: 1.5}


def _steps(first: int, last: int, loss: float, t: float) -> list[dict]:
    return [make_event("step", t=t + s, step=s, loss=loss + s) for s in range(first, last + 1)]


def test_replay_drops_steps_and_evals_that_a_resume_recomputes():
    first = (
        [make_event("state", t=0.0, state="running", step=0)]
        + _steps(1, 5, 100.0, 0.0)
        + [make_event("checkpoint", t=5.5, path="c/step-00000005.pt", step=5, seconds=0.1,
                      bytes=10, reason="periodic", best=False)]
        + _steps(6, 8, 100.0, 0.0)
        + [make_event("eval", t=8.5, step=8, epoch=0, metrics={"loss": 9.9, "accuracy": 0.1})]
    )
    second = (
        [make_event("resume", t=20.0, step=5, epoch=0, checkpoint="step-00000005.pt")]
        + _steps(6, 10, 200.0, 20.0)
        + [make_event("eval", t=31.0, step=10, epoch=0, metrics={"loss": 0.5, "accuracy": 0.9})]
    )
    shown = replay(first + second)
    steps = [e for e in shown if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 11)), "each step exactly once, in order"
    assert [e["loss"] for e in steps] == [101, 102, 103, 104, 105, 206, 207, 208, 209, 210]
    evals = [e for e in shown if e["type"] == "eval"]
    assert [(e["step"], e["metrics"]["loss"]) for e in evals] == [(10, 0.5)], "the stale eval at step 8 is gone"
    # Everything else is history worth keeping.
    assert [e["type"] for e in shown if e["type"] not in ("step", "eval")] == ["state", "checkpoint", "resume"]


def test_replay_handles_repeated_resumes_and_a_resume_from_scratch():
    events = (
        _steps(1, 4, 0.0, 0.0)
        + [make_event("resume", t=10.0, step=2, epoch=0, checkpoint="step-00000002.pt")]
        + _steps(3, 6, 10.0, 10.0)
        + [make_event("resume", t=20.0, step=0, epoch=0, checkpoint="step-00000000.pt")]
        + _steps(1, 3, 20.0, 20.0)
    )
    shown = [e for e in replay(events) if e["type"] == "step"]
    assert [(e["step"], e["loss"]) for e in shown] == [(1, 21.0), (2, 22.0), (3, 23.0)]
    # A resume event without an integer step (a malformed or future one) cuts nothing.
    odd = _steps(1, 3, 0.0, 0.0) + [{"v": 1, "t": 9.0, "type": "resume", "step": "3"}]
    assert [e["step"] for e in replay(odd) if e["type"] == "step"] == [1, 2, 3]


# ---- commands -------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c not in ("set", "target")])
def test_each_plain_command_is_accepted(cmd):
    assert decode_request(encode_request(cmd)) == {"cmd": cmd}


@pytest.mark.parametrize("lr", [0.01, 1, 3e-4, 1e-12])
def test_set_with_a_positive_learning_rate_is_accepted(lr):
    assert decode_request(encode_request("set", lr=lr)) == {"cmd": "set", "lr": lr}


@pytest.mark.parametrize("request_", [
    {"cmd": "target", "metric": "val_accuracy", "value": 0.98, "stop": True, "by": "cockpit"},
    {"cmd": "target", "value": 2},
    {"cmd": "target", "clear": True},
])
def test_target_requests_of_the_right_shape_are_accepted(request_):
    assert decode_request(encode_request(**request_)) == request_


@pytest.mark.parametrize("raw, message", [
    (b'{"cmd": "target"}', r"target: value=None: expected a finite number \(or clear=true\)"),
    (b'{"cmd": "target", "value": "0.9"}', r"target: value='0.9': expected a finite number"),
    (b'{"cmd": "target", "value": NaN}', r"target: value=nan: expected a finite number"),
    (b'{"cmd": "target", "value": 0.9, "stop": "yes"}', r"target: stop='yes': expected true or false"),
    (b'{"cmd": "target", "value": 0.9, "metric": 3}', r"target: metric=3: expected a name"),
    (b'{"cmd": "target", "value": 0.9, "when": 3}', r"target: unknown field\(s\) \['when'\]"),
    (b'{"cmd": "target", "clear": true, "value": 0.9}', r"target: clear=true with a metric or value"),
    (b"{cmd: status}", r"malformed request: not JSON"),
    (b'{"cmd": "status"', r"malformed request: not JSON"),
    (b"\xff\xfe", r"malformed request: not JSON"),
    (b'["status"]', r"expected a JSON object"),
    (b'"status"', r"expected a JSON object"),
    (b'{"cmd": "explode"}', r"unknown command 'explode': expected one of checkpoint, pause"),
    (b'{"command": "status"}', r"unknown command None"),
    (b'{"cmd": "STATUS"}', r"unknown command 'STATUS'"),
    (b'{"cmd": "set", "lr": 0}', r"set: lr=0: expected a positive number"),
    (b'{"cmd": "set", "lr": -0.1}', r"set: lr=-0.1: expected a positive number"),
    (b'{"cmd": "set", "lr": "0.1"}', r"set: lr='0.1': expected a positive number"),
    (b'{"cmd": "set", "lr": true}', r"set: lr=True: expected a positive number"),
    (b'{"cmd": "set", "lr": NaN}', r"set: lr=nan: expected a positive number"),
    (b'{"cmd": "set", "lr": Infinity}', r"set: lr=inf: expected a positive number"),
    (b'{"cmd": "set", "lr": null}', r"set: lr=None: expected a positive number"),
    (b'{"cmd": "set"}', r"set: lr=None: expected a positive number"),
    (b'{"cmd": "set", "lr": 0.1, "momentum": 0.9}', r"set: unknown field\(s\) \['momentum'\]: only 'lr' can be set"),
])
def test_bad_requests_are_refused_with_a_message_saying_what_is_wrong(raw, message):
    with pytest.raises(ProtocolError, match=message):
        decode_request(raw)


def test_oversized_requests_are_refused_before_parsing():
    base = b'{"cmd": "status"}'
    at_limit = base + b" " * (MAX_REQUEST_BYTES - len(base))
    assert decode_request(at_limit) == {"cmd": "status"}
    with pytest.raises(ProtocolError, match=rf"request too large: {MAX_REQUEST_BYTES + 1} bytes \(limit {MAX_REQUEST_BYTES}\)"):
        decode_request(at_limit + b" ")
    huge = b'{"cmd": "set", "lr": 0.1, "pad": "' + b"x" * 100_000 + b'"}'
    with pytest.raises(ProtocolError, match="request too large"):
        decode_request(huge)


def test_replies_round_trip_and_stay_valid_json():
    raw = encode_reply(True, step=12, loss=float("nan"), lr=0.1)
    assert raw.endswith(b"\n")
    strict_json(raw.decode())
    assert decode_reply(raw) == {"ok": True, "step": 12, "loss": "nan", "lr": 0.1}
    error = decode_reply(encode_reply(False, error="unknown command 'x'"))
    assert error == {"ok": False, "error": "unknown command 'x'"}
    for bad in (b'{"step": 1}\n', b"[true]\n", b"not json\n", b""):
        with pytest.raises(ProtocolError, match="malformed reply"):
            decode_reply(bad)


# ---- connecting: a full backlog is retried, a missing socket is not ---------------------------


def _full_listener(folder: Path):
    """A Unix socket whose listen backlog is full: bound with listen(0), nothing accepted, and
    filled with connections until one more is refused (EAGAIN)."""
    import socket

    path = str(folder / "busy.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(0)
    fillers = []
    for _ in range(16):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            return server, path, fillers
        fillers.append(s)
    raise AssertionError("listen(0) never filled up")


def test_connect_retries_a_listener_whose_backlog_is_full():
    import tempfile
    import threading
    import time

    from contracts.control import connect

    with tempfile.TemporaryDirectory(prefix="ck-") as folder:  # short: Unix socket paths are <108 bytes
        server, path, fillers = _full_listener(Path(folder))
        with pytest.raises(BlockingIOError):  # without retrying, the full backlog refuses at once
            connect(path, timeout=5, retry_s=0)
        accepted, done = [], threading.Event()

        def accept_later():
            time.sleep(0.3)
            server.settimeout(0.1)
            while not done.is_set():
                try:
                    accepted.append(server.accept()[0])
                except OSError:
                    continue

        thread = threading.Thread(target=accept_later, daemon=True)
        thread.start()
        start = time.monotonic()
        try:
            with connect(path, timeout=5) as sock:
                waited = time.monotonic() - start
                sock.sendall(b"hello\n")
            assert 0.2 <= waited < 3.0, waited
        finally:
            done.set()
            thread.join(timeout=5)
            for s in fillers + accepted:
                s.close()
            server.close()


def test_connect_to_a_missing_socket_fails_at_once(tmp_path):
    import time

    from contracts.control import connect, send_command

    start = time.monotonic()
    with pytest.raises(FileNotFoundError):
        connect(str(tmp_path / "no-engine.sock"), timeout=5)
    with pytest.raises(FileNotFoundError):
        send_command(str(tmp_path / "no-engine.sock"), "status")
    assert time.monotonic() - start < 0.5  # no retrying: there is no engine to wait for


def test_an_engine_that_closes_without_replying_is_a_connection_error():
    """An engine that exits between accepting a command and answering it (a sweep's prune racing
    the run's end) is an OSError for the client, like a missing socket, not a JSON error."""
    import socket
    import tempfile
    import threading

    from contracts.control import send_command

    with tempfile.TemporaryDirectory(prefix="ck-") as folder:
        path = str(Path(folder) / "c.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)

        def accept_and_close():
            conn, _ = server.accept()
            conn.recv(4096)
            conn.close()

        threading.Thread(target=accept_and_close, daemon=True).start()
        try:
            with pytest.raises(ConnectionResetError, match="closed the connection without a reply to 'prune'"):
                send_command(path, "prune", timeout=10)
        finally:
            server.close()
