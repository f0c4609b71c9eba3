"""A small, strict safetensors reader/writer on numpy (bfloat16 via ml_dtypes), memory-mapped.

Reading never trusts the file: the header length, JSON types, dtypes, shapes and byte ranges are checked (see
:func:`read_header`), and a truncated or corrupt file raises ``SafetensorsError`` naming the file, the tensor and the
problem. Writing goes to a temporary file that is
renamed into place, so a crash never leaves a half-written file.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

from hyperlora_jax.io.atomic import atomic_open

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the limit of the reference implementation
_MAX_NDIM = 64


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read as such."""


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise SafetensorsError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_entry(name: str, info, data_len: int) -> tuple[int, int]:
    """(start, end) of one tensor entry after checking its types and byte range; SafetensorsError otherwise."""
    if not isinstance(info, dict):
        raise SafetensorsError(f"tensor {name!r}: entry is a {type(info).__name__}, not an object")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise SafetensorsError(f"tensor {name!r}: entry lacks {', '.join(missing)}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise SafetensorsError(f"tensor {name!r}: unsupported dtype {str(dtype)[:40]!r} (known: "
                               f"{', '.join(DTYPES)})")
    if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape):
        raise SafetensorsError(f"tensor {name!r}: shape must be a list of at most {_MAX_NDIM} non-negative ints, "
                               f"got {str(shape)[:80]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise SafetensorsError(f"tensor {name!r}: data_offsets must be a list of two ints, got {str(offsets)[:80]}")
    start, end = offsets
    if not 0 <= start <= end:
        raise SafetensorsError(f"tensor {name!r}: data_offsets {start}..{end} are not in order")
    if end > data_len:
        raise SafetensorsError(f"truncated safetensors file (tensor {name!r} ends at byte {end}, data section has "
                               f"{data_len})")
    numel = 1
    for d in shape:
        numel *= d
    if end - start != numel * DTYPES[dtype].itemsize:
        raise SafetensorsError(f"tensor {name!r}: byte range {start}..{end} does not match {dtype}{shape}")
    return start, end


def read_header(path: str) -> tuple[dict, int]:
    """(tensor index {name: {dtype, shape, data_offsets}}, offset of the data section).

    Checks, before any tensor is read: header length within the file and at most MAX_HEADER_BYTES; the header is a
    JSON object without duplicate keys; ``__metadata__`` (optional) maps str to str; each tensor has a known dtype
    string, a shape of non-negative ints, two ordered int data_offsets inside the data section whose length equals
    shape x dtype size; no two tensors' byte ranges overlap. Raises SafetensorsError naming the file and tensor.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise SafetensorsError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes, "
                                   f"file of {size})")
        try:
            header = json.loads(f.read(n), object_pairs_hook=_no_duplicates)
        except SafetensorsError as e:
            raise SafetensorsError(f"{path}: corrupt safetensors header ({e})") from None
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit int
            raise SafetensorsError(f"{path}: corrupt safetensors header ({type(e).__name__}: "
                                   f"{str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict)
                                 and all(isinstance(v, str) for v in meta.values())):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")
    data_len = size - 8 - n
    ranges = []
    for name, info in header.items():
        try:
            start, end = _check_entry(name, info, data_len)
        except SafetensorsError as e:
            raise SafetensorsError(f"{path}: {e}") from None
        if end > start:
            ranges.append((start, end, name))
    ranges.sort()
    for (_, end0, a), (start1, _, b) in zip(ranges, ranges[1:]):
        if start1 < end0:
            raise SafetensorsError(f"{path}: tensors {a!r} and {b!r} overlap in the data section")
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
        return raw.view(DTYPES[info["dtype"]]).reshape(info["shape"])  # sizes checked by read_header


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
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays:
            f.write(a.tobytes())
