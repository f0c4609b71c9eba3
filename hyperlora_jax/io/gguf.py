"""A strict GGUF reader on numpy: header, metadata, tensor infos, and dequantised tensors.

GGUF (llama.cpp's single-file format, versions 2 and 3, little-endian) is::

    "GGUF" | u32 version | u64 tensor_count | u64 metadata_count
    metadata_count x (string key | u32 value_type | value)          string = u64 length + UTF-8 bytes
    tensor_count  x (string name | u32 n_dims | n_dims x u64 ne | u32 ggml_type | u64 offset)
    padding to ``general.alignment`` (default 32) | tensor data (each tensor at data_start + offset)

``ne`` lists dimensions innermost first, so a tensor's numpy shape is ``reversed(ne)``: a linear layer's weight
comes out [out_features, in_features] like a PyTorch ``Linear.weight``. Quantised types store ``ne[0]`` in blocks
of ``block_size`` values of ``type_size`` bytes each.

The file is untrusted: every count, length, dimension and offset is checked against the file's size before
anything is allocated, and each problem raises one ``GGUFError`` naming it. Dequantisation is vectorised numpy
for F32, F16, BF16, Q8_0, Q4_0 and Q4_1; other ggml types are refused by name.
"""
from __future__ import annotations

import mmap
import os
import struct
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4                # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 4         # nested metadata arrays (the spec allows them; no real file goes deeper than 1)


class GGUFError(ValueError):
    """A GGUF file that is malformed or uses something this reader does not support."""


class GGMLType(NamedTuple):
    name: str
    block_size: int   # values per block
    type_size: int    # bytes per block


# ggml type id -> (name, values per block, bytes per block), as in ggml.h / ggml.c's type traits.
GGML_TYPES: dict[int, GGMLType] = {i: GGMLType(*t) for i, t in {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}.items()}

# metadata value types: id -> struct format of the fixed-size ones; 8 = string, 9 = array
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                   12: "<d"}
_NUMPY_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8",
                 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class TensorInfo(NamedTuple):
    name: str
    shape: tuple[int, ...]   # numpy order (outermost first): reversed ggml ne
    ggml_type: int
    offset: int              # absolute byte offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type].name


class _Cursor:
    """Bounds-checked little-endian reads over a byte buffer."""

    def __init__(self, buf, path: str):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def need(self, n: int, what: str):
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"{self.path}: truncated file: {what} needs {n} bytes at offset {self.pos}, "
                            f"the file has {self.size}")

    def scalar(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.scalar("<Q", f"length of {what}")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{self.path}: {what} at offset {self.pos - n} is not valid UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALAR_FORMATS:
            v = self.scalar(_SCALAR_FORMATS[vtype], what)
            return bool(v) if vtype == 7 else v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise GGUFError(f"{self.path}: {what} nests arrays deeper than {MAX_ARRAY_DEPTH}")
            etype = self.scalar("<I", f"element type of {what}")
            count = self.scalar("<Q", f"length of {what}")
            if etype in _NUMPY_DTYPES:
                width = np.dtype(_NUMPY_DTYPES[etype]).itemsize
                self.need(count * width, f"{count} elements of {what}")
                arr = np.frombuffer(self.buf, _NUMPY_DTYPES[etype], count, self.pos)
                self.pos += count * width
                return (arr != 0).tolist() if etype == 7 else arr.tolist()
            if etype not in (_STRING, _ARRAY):
                raise GGUFError(f"{self.path}: {what} has unknown element type {etype}")
            self.need(count * (8 if etype == _STRING else 12), f"{count} elements of {what}")  # minimum sizes
            return [self.value(etype, f"{what}[{i}]", depth + 1) for i in range(count)]
        raise GGUFError(f"{self.path}: {what} has unknown value type {vtype}")


class GGUFFile:
    """An open GGUF file: ``metadata`` (key -> value), ``tensors`` (name -> TensorInfo), ``tensor(name)``.

    The file is memory-mapped; ``tensor`` dequantises one tensor to float32 on demand.
    """

    def __init__(self, path: str):
        self.path = path
        if not os.path.isfile(path):
            raise GGUFError(f"{path}: no such file")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise GGUFError(f"{path}: truncated file: {size} bytes is shorter than a GGUF header")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.size = size
        try:
            self._parse(path, size)
        except BaseException:
            try:
                self._map.close()
            except BufferError:    # a view still referenced from the traceback: the mapping goes with it
                pass
            raise

    def _parse(self, path: str, size: int):
        cur = _Cursor(self._map, path)
        magic = bytes(self._map[:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        cur.pos = 4
        self.version = cur.scalar("<I", "version")
        if self.version not in SUPPORTED_VERSIONS:
            if struct.unpack("<I", struct.pack(">I", self.version))[0] in SUPPORTED_VERSIONS:
                raise GGUFError(f"{path}: big-endian GGUF files are not supported")
            raise GGUFError(f"{path}: unsupported GGUF version {self.version} (supported: "
                            f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
        n_tensors = cur.scalar("<Q", "tensor count")
        n_kv = cur.scalar("<Q", "metadata count")
        # each metadata entry takes >= 8 (key length) + 4 (type) + 1 bytes, each tensor info >= 8 + 4 + 4 + 8
        if n_kv * 13 > size - cur.pos:
            raise GGUFError(f"{path}: metadata count {n_kv} cannot fit in a {size}-byte file (truncated or corrupt)")
        if n_tensors * 24 > size - cur.pos:
            raise GGUFError(f"{path}: tensor count {n_tensors} cannot fit in a {size}-byte file (truncated or corrupt)")

        self.metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if key in self.metadata:
                raise GGUFError(f"{path}: metadata key {key!r} appears twice")
            vtype = cur.scalar("<I", f"value type of {key!r}")
            self.metadata[key] = cur.value(vtype, f"metadata {key!r}")

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
                or alignment & (alignment - 1):
            raise GGUFError(f"{path}: general.alignment {alignment!r} is not a positive power of two")

        infos = []
        for i in range(n_tensors):
            name = cur.string(f"name of tensor #{i}")
            n_dims = cur.scalar("<I", f"dimension count of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError(f"{path}: tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            ne = [cur.scalar("<Q", f"dimensions of tensor {name!r}") for _ in range(n_dims)]
            gtype = cur.scalar("<I", f"type of tensor {name!r}")
            offset = cur.scalar("<Q", f"offset of tensor {name!r}")
            infos.append((name, ne, gtype, offset))
        data_start = cur.pos + (-cur.pos % alignment)

        self.tensors: dict[str, TensorInfo] = {}
        for name, ne, gtype, offset in infos:
            if name in self.tensors:
                raise GGUFError(f"{path}: tensor {name!r} appears twice")
            if gtype not in GGML_TYPES:
                raise GGUFError(f"{path}: tensor {name!r} has unknown ggml type {gtype}")
            t = GGML_TYPES[gtype]
            if any(d < 1 for d in ne):
                raise GGUFError(f"{path}: tensor {name!r} has a zero dimension {ne}")
            count = 1
            for d in ne:
                count *= d
                if count > size * max(t.block_size, 1):  # more values than the file could hold: stop before overflow
                    raise GGUFError(f"{path}: tensor {name!r} dimensions {ne} exceed the file size")
            if ne[0] % t.block_size:
                raise GGUFError(f"{path}: tensor {name!r} ({t.name}) has a row of {ne[0]} values, not a multiple "
                                f"of its block size {t.block_size}")
            nbytes = count // t.block_size * t.type_size
            if offset % alignment:
                raise GGUFError(f"{path}: tensor {name!r} offset {offset} is not aligned to {alignment}")
            start = data_start + offset
            if start + nbytes > size:
                raise GGUFError(f"{path}: truncated file: tensor {name!r} needs bytes {start}..{start + nbytes}, "
                                f"the file has {size}")
            self.tensors[name] = TensorInfo(name, tuple(reversed(ne)), gtype, start, nbytes)
        self.data_start = data_start

    def close(self):
        self._map.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise GGUFError(f"{self.path}: metadata key {key!r} is missing")
        return self.metadata[key]

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of tensor ``name`` (uint8, a read-only view of the mapping)."""
        info = self.tensors[name]
        return np.frombuffer(self._map, np.uint8, info.nbytes, info.offset)

    def tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantised to float32, in numpy shape (outermost dimension first)."""
        if name not in self.tensors:
            raise GGUFError(f"{self.path}: no tensor {name!r}")
        info = self.tensors[name]
        return dequantize(self.raw(name), info.ggml_type, name).reshape(info.shape)


# --------------------------------------------------------------------------------------------- dequantisers
def _f16(cols: np.ndarray) -> np.ndarray:
    """[n, 2] uint8 (little-endian half floats) -> [n, 1] float32."""
    return np.ascontiguousarray(cols).view("<f2").astype(np.float32)


def _deq_f32(raw):
    return raw.view("<f4").astype(np.float32)


def _deq_f16(raw):
    return raw.view("<f2").astype(np.float32)


def _deq_bf16(raw):
    return raw.view("<u2").view(ml_dtypes.bfloat16).astype(np.float32)


def _deq_q8_0(raw):
    """Blocks of 32: f16 scale d, 32 x int8 q; x = d * q."""
    b = raw.reshape(-1, 34)
    return (_f16(b[:, :2]) * b[:, 2:].view(np.int8).astype(np.float32)).reshape(-1)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 16] packed bytes -> [n, 32] values: byte j holds value j (low nibble) and value j + 16 (high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)


def _deq_q4_0(raw):
    """Blocks of 32: f16 scale d, 16 bytes of 4-bit q; x = d * (q - 8)."""
    b = raw.reshape(-1, 18)
    return (_f16(b[:, :2]) * (_nibbles(b[:, 2:]) - 8.0)).reshape(-1)


def _deq_q4_1(raw):
    """Blocks of 32: f16 scale d, f16 minimum m, 16 bytes of 4-bit q; x = d * q + m."""
    b = raw.reshape(-1, 20)
    return (_f16(b[:, :2]) * _nibbles(b[:, 4:]) + _f16(b[:, 2:4])).reshape(-1)


DEQUANTIZERS = {0: _deq_f32, 1: _deq_f16, 30: _deq_bf16, 8: _deq_q8_0, 2: _deq_q4_0, 3: _deq_q4_1}


def supported_type_names() -> list[str]:
    return [GGML_TYPES[t].name for t in DEQUANTIZERS]


def dequantize(raw: np.ndarray, ggml_type: int, name: str = "tensor") -> np.ndarray:
    """Flat float32 values of ``raw`` (the tensor's bytes, uint8) stored as ``ggml_type``."""
    if ggml_type not in DEQUANTIZERS:
        type_name = GGML_TYPES[ggml_type].name if ggml_type in GGML_TYPES else f"unknown type {ggml_type}"
        raise GGUFError(f"{name} is stored as {type_name}, which this reader does not dequantise (supported: "
                        f"{', '.join(supported_type_names())})")
    return DEQUANTIZERS[ggml_type](raw)
