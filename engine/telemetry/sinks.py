"""Telemetry sinks: the events file, TensorBoard, engine.log and the console.

The loop calls `Telemetry.emit(type, **fields)` and never prints. Step events are
coalesced to a bounded rate by the events file and the console, so a fast loop cannot
flood the file or the terminal; TensorBoard still gets every logged step.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
import time
from pathlib import Path
from typing import Any, Protocol, TextIO

from contracts.events import encode_event, make_event
from engine.telemetry.narration import Narrator, describe


class Sink(Protocol):
    """Anything that takes events."""

    def emit(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Coalescer:
    """Holds back step events so at most `rate` per second pass; the newest always wins."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self.last = 0.0
        self.pending: dict[str, Any] | None = None

    def offer(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Events to write now, in order."""
        if event["type"] == "step":
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last, self.pending = now, None
                return [event]
            self.pending = event
            return []
        return self.flush() + [event]

    def flush(self) -> list[dict[str, Any]]:
        """The held-back step event, if any."""
        out, self.pending = ([self.pending] if self.pending else []), None
        if out:
            self.last = time.monotonic()
        return out


class EventsFile:
    """Appends protocol lines to events.jsonl, one write per line so readers never see half a line."""

    def __init__(self, path: Path, rate: float):
        from engine.telemetry.series_file import SeriesFile, events_size

        torn = _ends_mid_line(path)
        self.series = SeriesFile(path.parent)  # steps.f64: the step lines' numbers, for fast replays
        self.offset = events_size(path) + (1 if torn else 0)  # events.jsonl's size as we write
        self.file = open(path, "a", encoding="utf-8", buffering=1)
        if torn:  # a killed engine left half a line: end it, so our first event stays whole
            self.file.write("\n")
        self.gate = Coalescer(rate)

    def _write(self, e: dict[str, Any]) -> None:
        line = encode_event(e)  # ASCII (json's ensure_ascii): characters are bytes
        self.file.write(line)
        start, self.offset = self.offset, self.offset + len(line)
        if e.get("type") == "step":
            self.series.record(e, start, self.offset)

    def emit(self, event: dict[str, Any]) -> None:
        for e in self.gate.offer(event):
            self._write(e)

    def close(self) -> None:
        for e in self.gate.flush():
            self._write(e)
        self.file.close()
        self.series.close()


def _ends_mid_line(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except OSError:  # missing or empty
        return False


SCALARS = {
    "step": {"loss": "train/loss", "lr": "train/lr", "accuracy": "train/accuracy", "samples_per_s": "perf/samples_per_s"},
}


class TensorBoard:
    """Scalars in tb/, read by TensorBoard; a resume purges the points it recomputes."""

    #: What a `ranks` event gives each rank in TensorBoard with logging.tensorboard_ranks.
    RANK_FIELDS = ("busy_s", "data_s", "compute_s", "comm_s", "optim_s", "mem_peak_bytes", "gpu_util", "gpu_temp_c",
                   "gpu_power_w", "gpu_sm_mhz")

    def __init__(self, folder: Path, resume_step: int | None, ranks: bool = False):
        # the file format, written by the standard library: torch's SummaryWriter would import
        # tensorboard, protobuf and boto3 first (~0.3 s of a start); see engine/telemetry/tbfile.py
        from engine.telemetry.tbfile import ScalarWriter

        self.ranks = ranks  # per-rank scalars (ranks/<field>/rank<N>) from ranks events

        # purge_step makes TensorBoard drop points at or after it from the earlier session,
        # so a resumed run shows no duplicates for steps it trains again.
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = ScalarWriter(folder, purge_step=purge, flush_secs=10)

    def emit(self, event: dict[str, Any]) -> None:
        kind, step = event["type"], event.get("step")
        if kind == "step":
            for key, tag in SCALARS["step"].items():
                if isinstance(event.get(key), (int, float)):
                    self.writer.add_scalar(tag, event[key], step)
            for part, value in (event.get("losses") or {}).items():  # the task's named parts
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"loss/{part}", value, step)
        elif kind == "eval":
            for key, value in event["metrics"].items():
                self.writer.add_scalar(f"val/{key}", value, step)
        elif kind == "ledger" and event.get("total_s"):  # each class's share of the run's time
            total = event["total_s"]
            self.writer.add_scalar("goodput/goodput", event["goodput"], step)
            for name, entry in (event.get("classes") or {}).items():
                self.writer.add_scalar(f"goodput/{name}", entry["seconds"] / total, step)
        elif kind == "ranks" and self.ranks:
            for rec in event["ranks"]:
                for key in self.RANK_FIELDS:
                    if isinstance(rec.get(key), (int, float)):
                        self.writer.add_scalar(f"ranks/{key}/rank{rec['rank']}", rec[key], step)
        elif kind in ("checkpoint", "state"):  # on disk as soon as the checkpoint (a spot notice's too)
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class LogFile:
    """engine.log: a timestamped line for every event but the (frequent) steps' bulk."""

    def __init__(self, path: Path, every_s: float = 10.0):
        self.file = open(path, "a", encoding="utf-8", buffering=1)
        self.gate = Coalescer(1.0 / every_s)
        self.narrate = Narrator()

    def emit(self, event: dict[str, Any]) -> None:
        for e in self.gate.offer(event):
            text = self.narrate(e)
            if text:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["t"]))
                self.file.write(f"{stamp} {text}\n")

    def close(self) -> None:
        self.gate.flush()
        self.file.close()


class Console:
    """stdout: a live progress line on a terminal, plain lines otherwise, or JSON lines."""

    def __init__(self, mode: str, rate: float, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.mode = mode  # "tty", "plain" or "json"
        self.gate = Coalescer(rate if mode != "plain" else 0.2)
        self.line_open = False
        self.narrate = Narrator()

    def emit(self, event: dict[str, Any]) -> None:
        for e in self.gate.offer(event):
            self._write(e)

    def _write(self, e: dict[str, Any]) -> None:
        if self.mode == "json":
            self.stream.write(encode_event(e))
        elif self.mode == "tty" and e["type"] == "step":
            self.stream.write("\r\x1b[K" + (describe(e) or ""))
            self.line_open = True
        else:
            text = self.narrate(e)
            if text:
                self.stream.write(("\r\x1b[K" if self.line_open else "") + text + "\n")
                self.line_open = False
        self.stream.flush()

    def close(self) -> None:
        if self.line_open:
            self.stream.write("\n")
        self.stream.flush()


class Telemetry:
    """Fans each event out to every sink, in one order for all of them.

    A sink may emit in turn (the cost meter answers a step with a cost event; an S3 mirror
    will answer a checkpoint): the new event is queued and fanned out once the current one
    has reached every sink, so nothing deadlocks and every sink sees the same order. The
    lock is re-entrant for that; other threads (the checkpoint writer) wait their turn.
    """

    def __init__(self, sinks: list[Sink]):
        self.sinks = sinks
        self.lock = threading.RLock()
        self.queue: deque[dict[str, Any]] = deque()
        self.dispatching = False

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = make_event(type_, **fields)
        with self.lock:
            self.queue.append(event)
            if self.dispatching:  # a sink emitted: its event goes out after this one
                return event
            self.dispatching = True
            try:
                while self.queue:
                    queued = self.queue.popleft()
                    for sink in self.sinks:
                        sink.emit(queued)
            finally:  # a sink that raised: what is still queued goes out with the next event
                self.dispatching = False
        return event

    def add(self, sink: Sink) -> None:
        """One more sink, from now on."""
        with self.lock:
            self.sinks.append(sink)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
