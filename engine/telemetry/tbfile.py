"""TensorBoard's event files, scalars only, written with the standard library.

torch.utils.tensorboard's SummaryWriter imports the tensorboard package, protobuf, fsspec and
boto3 (tensorboard's S3 file system): about 0.3 s of every run's start on a small machine, for
a few numbers a logging step. The file format is small and fixed (TensorFlow's TFRecord of
`Event` protocol buffers), so the engine writes it itself, byte for byte as SummaryWriter does
for add_scalar: a file_version event first, then one event per scalar (wall_time, step and a
Summary holding one Value with its tag and simple_value); with purge_step, SummaryWriter's two
purge events (step = purge_step: the file_version, then SessionLog START), which make
TensorBoard drop the earlier session's points at or after that step.

Each record: the payload's length (uint64, little-endian), the length's masked CRC-32C, the
payload, the payload's masked CRC-32C.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import threading
import time
from pathlib import Path


def _table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC = _table()
_UID = itertools.count()  # SummaryWriter numbers the files of one process the same way


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord files checksum their records."""
    crc, table = 0xFFFFFFFF, _CRC
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(payload: bytes) -> bytes:
    """One TFRecord around `payload`."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", _masked(length)) + payload + struct.pack("<I", _masked(payload))


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 as protobuf encodes it (a negative number takes ten bytes)
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def event(wall_time: float | None = None, step: int | None = None, file_version: str | None = None,
          scalar: tuple[str, float] | None = None, session_start: bool = False) -> bytes:
    """An `Event` message: wall_time (1, double), step (2, int64), file_version (3), summary (5:
    one Value with tag (1) and simple_value (2, float)), session_log (7: status (1) = START)."""
    out = b""
    if wall_time is not None:
        out += _key(1, 1) + struct.pack("<d", wall_time)
    if step:
        out += _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalar is not None:
        tag, value = scalar
        item = _length_delimited(1, tag.encode()) + _key(2, 5) + struct.pack("<f", float(value))
        out += _length_delimited(5, _length_delimited(1, item))
    if session_start:
        out += _length_delimited(7, _key(1, 0) + _varint(1))
    return out


class ScalarWriter:
    """SummaryWriter's add_scalar, flush and close, into a new event file in `folder`."""

    def __init__(self, folder: str | Path, purge_step: int | None = None, flush_secs: float = 10.0):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = "events.out.tfevents.%010d.%s.%s.%s" % (time.time(), socket.gethostname(), os.getpid(), next(_UID))
        self.path = folder / name
        self.file = open(self.path, "wb")
        self.lock = threading.Lock()
        self.flush_secs, self.flushed = flush_secs, time.monotonic()
        self._write(event(time.time(), file_version="brain.Event:2"))
        self.flush()
        if purge_step is not None:
            self._write(event(step=purge_step, file_version="brain.Event:2"))
            self._write(event(step=purge_step, session_start=True))

    def _write(self, payload: bytes) -> None:
        with self.lock:
            if not self.file.closed:
                self.file.write(record(payload))

    def add_scalar(self, tag: str, value: float, step: int | None = None) -> None:
        self._write(event(time.time(), step, scalar=(tag, value)))
        if time.monotonic() - self.flushed >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            if not self.file.closed:
                self.file.flush()
            self.flushed = time.monotonic()

    def close(self) -> None:
        with self.lock:
            if not self.file.closed:
                self.file.close()
