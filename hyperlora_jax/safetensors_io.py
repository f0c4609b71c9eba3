"""A small, strict safetensors reader/writer on numpy (bfloat16 via ml_dtypes), memory-mapped.

Reading never trusts the file: the header length, JSON, dtypes and byte ranges are checked, and a truncated or
corrupt file raises ``SafetensorsError`` naming the file and the problem. Writing goes to a temporary file that is
renamed into place, so a crash never leaves a half-written file.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Mapping

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read as such."""


def read_header(path: str) -> tuple[dict, int]:
    """(tensor index {name: {dtype, shape, data_offsets}}, offset of the data section). Checks byte ranges."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100_000_000:
            raise SafetensorsError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes, "
                                   f"file of {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            start, end = info["data_offsets"]
            want = int(np.prod(info["shape"], dtype=np.int64)) * dtype.itemsize
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: tensor {name!r} has an unsupported or corrupt entry {info}") from None
        if end - start != want or start < 0:
            raise SafetensorsError(f"{path}: tensor {name!r} byte range {start}..{end} does not match "
                                   f"{info['dtype']}{info['shape']}")
        if end > data_len:
            raise SafetensorsError(f"{path}: truncated safetensors file (tensor {name!r} ends at byte {end}, "
                                   f"data section has {data_len})")
    return header, 8 + n


class SafetensorsFile:
    """Lazily reads tensors of one file; ``get(name)`` returns a read-only memory-mapped numpy view."""

    def __init__(self, path: str):
        self.path = path
        self.header, self._data_start = read_header(path)
        self._mm = None

    def keys(self):
        return self.header.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        start, end = info["data_offsets"]
        raw = self._mm[self._data_start + start:self._data_start + end]
        return raw.view(DTYPES[info["dtype"]]).reshape(info["shape"])


def load_file(path: str) -> dict[str, np.ndarray]:
    f = SafetensorsFile(path)
    return {k: np.array(f.get(k)) for k in f.keys()}


def save_file(tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] | None = None):
    """Writes ``tensors`` atomically (temp file in the same directory, then rename)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset, arrays = 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(np.asarray(tensors[name]))
        if a.dtype not in _NAMES:
            raise SafetensorsError(f"cannot store tensor {name!r} of dtype {a.dtype}")
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for a in arrays:
                f.write(a.tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
