"""A minimal TensorBoard event-file writer (scalars only), without TensorFlow or the tensorboard package.

Event files are TFRecord streams of ``Event`` protocol buffers: each record is
``len (u64) | masked_crc32c(len) (u32) | data | masked_crc32c(data) (u32)``. We encode the few proto fields we need
by hand: Event{wall_time=1 (double), step=2 (int64), file_version=3 (string), summary=5 (Summary)},
Summary{value=1 (Value)}, Value{tag=1 (string), simple_value=2 (float)}.
"""
from __future__ import annotations

import os
import socket
import struct
import time

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    return _varint((num << 3) | wire) + payload


def _bytes_field(num: int, data: bytes) -> bytes:
    return _field(num, 2, _varint(len(data)) + data)


def encode_event(step: int, wall_time: float, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    ev = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        ev += _bytes_field(3, file_version.encode())
    if scalars:
        summary = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", v)))
                           for tag, v in scalars.items())
        ev += _bytes_field(5, summary)
    return ev


def frame(record: bytes) -> bytes:
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", masked_crc(header)) + record + struct.pack("<I", masked_crc(record))


def read_records(path: str):
    """Yields the raw records of an event file, checking both CRCs (used by tests)."""
    with open(path, "rb") as f:
        data = f.read()
    i = 0
    while i < len(data):
        header = data[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[i + 8:i + 12])[0] != masked_crc(header):
            raise ValueError("corrupt length crc")
        rec = data[i + 12:i + 12 + n]
        if struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] != masked_crc(rec):
            raise ValueError("corrupt record crc")
        yield rec
        i += 16 + n


class EventWriter:
    """Appends scalar summaries to ``logdir/events.out.tfevents.<time>.<host>``."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
        self._f = open(self.path, "ab")
        self._f.write(frame(encode_event(0, time.time(), file_version="brain.Event:2")))
        self._f.flush()

    def scalars(self, step: int, values: dict[str, float]):
        self._f.write(frame(encode_event(step, time.time(), {k: float(v) for k, v in values.items()})))
        self._f.flush()

    def close(self):
        self._f.close()
