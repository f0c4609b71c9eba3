"""Reads ``torch.save`` checkpoints (zip format) without torch and without executing pickled code.

A torch zip checkpoint is a zip archive ``<prefix>/data.pkl`` (the pickled object), ``<prefix>/data/<key>`` (one raw
storage per key), ``<prefix>/byteorder`` ("little" or "big"; absent in old files, meaning little) and a few version
files. The pickle refers to storages through persistent ids ``('storage', <StorageType global>, key, location, numel)``
and rebuilds tensors with ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``.

``load(path)`` unpickles ``data.pkl`` with a restricted ``pickle.Unpickler`` whose ``find_class`` never imports
anything: it only answers from a table of harmless stand-ins, built afresh for each call

* tensor rebuilding (``torch._utils._rebuild_tensor_v2``, ``_rebuild_tensor``, ``_rebuild_parameter``,
  ``_rebuild_parameter_with_state``, ``torch._tensor._rebuild_from_type_v2`` with ``torch.Tensor`` /
  ``torch.nn.parameter.Parameter`` as the type) -> numpy arrays (a copy, honouring storage offset and strides;
  bfloat16 / float8 through ``ml_dtypes``);
* storage types (``torch.FloatStorage``, ``torch.BFloat16Storage``, ``torch.LongStorage``, ...) -> dtype markers;
* ``collections.OrderedDict``;

plus the caller's allow-list:

* ``records``: class names (``"module.Class"``) that become inert :class:`Record` objects holding their constructor
  arguments and pickled state (fields readable as attributes or through ``Record.to_dict()``);
* ``enums``: enum class names; ``Enum(value)`` returns ``value`` itself;
* the names ``builtins.set`` / ``__builtin__.set`` / ``builtins.frozenset`` / ``__builtin__.frozenset`` in
  ``records`` build real sets (of already-safe values).

Any other global raises :class:`UnsafeCheckpointError` naming it, before anything is called. The legacy (non-zip)
torch format is refused.

The file is untrusted, so every size is checked before memory is committed to it:

* zip entries: only stored or deflated; a deflated entry's declared (uncompressed) size is checked against the
  per-load inflation limit before decompressing, it is inflated in bounded chunks and must not produce more than it
  declares; every entry read is CRC-32 checked (stored storages too, in chunks over the memory map);
* ``data.pkl`` at most 16 MiB, and its opcodes pre-scanned before unpickling: every length must lie inside the
  pickle, memo indices must come in sequence (the unpickler sizes its memo by the largest index), and objects may
  nest at most 200 levels (CPython hashes nested tuples recursively without a guard: a 1 MB pickle of a million
  nested tuples used as a dict key crashes the interpreter);
* tensors: size/stride/offset are ints of at most 64 dims, non-negative, and the last element addressed lies inside
  the storage; the bytes materialised (a tensor with zero or overlapping strides can be larger than its storage) are
  charged to a per-load budget of twice the archive's storage bytes plus 64 MiB, before allocating;
* the unpickled object: no reference cycles, nesting at most 100 levels, at most 1,000,000 objects when shared
  references are counted at every use (a pickle can reuse memoised objects to build an exponential "DAG bomb").

Every stand-in a pickle can name is built afresh for each call and refuses attribute assignment (pickle's BUILD), so a
crafted file cannot alter how the next file is read.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import reprlib
import struct
import zipfile
import zlib
from collections import OrderedDict
from typing import Any, Iterable

import ml_dtypes
import numpy as np

from hyperlora_jax.io.expansion import ExpansionLimit, expanded_size

__all__ = ["load", "Record", "UnsafeCheckpointError", "TorchCheckpointError", "D2L_RECORDS", "D2L_ENUMS"]


class TorchCheckpointError(ValueError):
    """A file that is not a readable torch zip checkpoint (corrupt, truncated, legacy format, bad tensor)."""


class UnsafeCheckpointError(ValueError):
    """The pickle names a global that is not on the allow-list; nothing it names was imported or called."""


# Classes pickled in D2L's ``pytorch_model.bin`` (see the golden README, section 5.4).
D2L_RECORDS = (
    "ctx_to_lora.configs.CtxEncoderArguments",
    "ctx_to_lora.modeling.aggregator.AggregatorConfig",
    "ctx_to_lora.modeling.hypernet.HypernetConfig",
    "peft.tuners.lora.config.LoraConfig",
    "peft.tuners.lora.config.LoraRuntimeConfig",
    "__builtin__.set",
    "builtins.set",
)
D2L_ENUMS = ("peft.utils.peft_types.PeftType",)

_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "Float8_e4m3fnStorage": np.dtype(ml_dtypes.float8_e4m3fn),
    "Float8_e5m2Storage": np.dtype(ml_dtypes.float8_e5m2),
    "Float8_e4m3fnuzStorage": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "Float8_e5m2fnuzStorage": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "UInt16Storage": np.dtype(np.uint16),
    "UInt32Storage": np.dtype(np.uint32),
    "UInt64Storage": np.dtype(np.uint64),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),
}
_SET_NAMES = {"builtins.set": set, "__builtin__.set": set, "builtins.frozenset": frozenset,
              "__builtin__.frozenset": frozenset}

_MAX_PICKLE_BYTES = 16 << 20      # data.pkl (a 2,000-tensor state dict pickles to 200 KB)
_MAX_INFLATE_BYTES = 2 << 30      # declared uncompressed bytes of deflated entries, per load
_EXPAND_SLACK = 64 << 20          # tensor bytes a load may materialise beyond twice its storage bytes
_MAX_DEPTH = 100                  # nesting of the unpickled object
_MAX_OP_DEPTH = 200               # nesting bound found by the opcode pre-scan (counts each REDUCE's argument tuple)
_MAX_NODES = 1_000_000            # objects, shared references counted at every use
_MAX_NDIM = 64
_CHUNK = 1 << 20

_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 3, 200, 80


class _Frozen:
    """Base of the stand-ins a pickle can reach: no ``__dict__``, and attribute assignment (pickle's BUILD) refused."""

    __slots__ = ()

    def __init__(self, **fields):
        for k, v in fields.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name, value):
        raise UnsafeCheckpointError(f"the checkpoint pickle tries to set {name!r} on {self!r}")

    def __delattr__(self, name):
        raise UnsafeCheckpointError(f"the checkpoint pickle tries to delete {name!r} of {self!r}")


class _Fn(_Frozen):
    """An allow-listed callable under its pickled name."""

    __slots__ = ("name", "fn")

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return f"<{self.name}>"


class _StorageType(_Frozen):
    """Stand-in for a ``torch.<X>Storage`` class: only carries the numpy dtype."""

    __slots__ = ("name", "dtype")

    def __call__(self, *args, **kwargs):  # a pickle must never construct a storage directly
        raise UnsafeCheckpointError(f"torch.{self.name} called directly by the pickle (not a torch.save layout)")

    def __repr__(self):
        return f"<storage type torch.{self.name}>"


class _Storage(_Frozen):
    """One loaded storage: a 1-D numpy array of ``dtype`` (possibly memory-mapped, read-only)."""

    __slots__ = ("data", "key")

    def __repr__(self):
        return f"<storage {self.key}>"


class _TensorType(_Frozen):
    """Stand-in for the classes ``torch.Tensor`` / ``torch.nn.parameter.Parameter`` (only usable as a marker)."""

    __slots__ = ("name",)

    def __call__(self, *args, **kwargs):
        raise UnsafeCheckpointError(f"{self.name} called directly by the pickle")

    def __repr__(self):
        return f"<{self.name}>"


class Record:
    """An inert stand-in for an allow-listed class: holds the constructor arguments and the pickled state.

    ``record.qualname`` is the pickled class name, ``record.args`` / ``record.kwargs`` the constructor arguments,
    ``record.state`` the state dict set by pickle's BUILD. Fields of ``state`` read as attributes.
    """

    qualname = "Record"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        object.__setattr__(obj, "_rec", {"args": tuple(args), "kwargs": dict(kwargs), "state": {}})
        return obj

    def __init__(self, *args, **kwargs):
        self._rec["args"], self._rec["kwargs"] = tuple(args), dict(kwargs)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            merged = {}
            for part in state:
                if part is not None:
                    if not isinstance(part, dict):
                        raise UnsafeCheckpointError(f"{self.qualname}: unsupported pickled state {type(part)}")
                    merged.update(part)
            state = merged
        if not isinstance(state, dict):
            raise UnsafeCheckpointError(f"{self.qualname}: unsupported pickled state {type(state).__name__}")
        self._rec["state"].update(state)

    def __setattr__(self, name, value):
        raise UnsafeCheckpointError(f"{self.qualname} record: attribute assignment ({name!r}) is not supported")

    @property
    def args(self) -> tuple:
        return self._rec["args"]

    @property
    def kwargs(self) -> dict:
        return self._rec["kwargs"]

    @property
    def state(self) -> dict:
        return self._rec["state"]

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._rec["state"][name]
        except KeyError:
            raise AttributeError(f"{self.qualname} record has no field {name!r}") from None

    def to_dict(self) -> dict:
        """The state as a plain dict, records nested inside converted recursively."""
        def conv(v):
            if isinstance(v, Record):
                return v.to_dict()
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return type(v)(conv(x) for x in v)
            return v
        return conv(self.state)

    def __repr__(self):
        return f"Record({self.qualname}, args={_short.repr(self.args)}, state={_short.repr(self.state)})"


def _record_class(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (Record,), {"qualname": qualname, "__module__": __name__})


def _enum_value(qualname: str):
    def make(value, *rest):
        if rest:
            raise UnsafeCheckpointError(f"enum {qualname} called with {1 + len(rest)} arguments")
        return value
    return make


# --------------------------------------------------------------------------------------------------- archive
class _Archive:
    """The zip container: locates ``data.pkl``, reads entries with size and CRC checks (storages memory-mapped when
    stored uncompressed, deflated ones inflated in bounded chunks)."""

    def __init__(self, path: str, inflate_limit: int):
        self.path = path
        self.size = os.path.getsize(path)
        try:
            with zipfile.ZipFile(path) as zf:
                self.infos = {i.filename: i for i in zf.infolist()}
        except (zipfile.BadZipFile, ValueError, EOFError, struct.error):
            with open(path, "rb") as f:
                head = f.read(16)
            if head[:1] == b"\x80":
                raise TorchCheckpointError(f"{path}: legacy (pre-1.6, non-zip) torch checkpoint; not supported. "
                                           f"Re-save it with a current torch.save") from None
            raise TorchCheckpointError(f"{path}: not a torch zip checkpoint") from None
        pkls = [n for n in self.infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise TorchCheckpointError(f"{path}: expected one '<archive>/data.pkl' in the zip, found {len(pkls)}")
        self.prefix = pkls[0][: -len("data.pkl")]
        self.inflate_left = inflate_limit
        self.storage_bytes = sum(i.file_size for n, i in self.infos.items() if n.startswith(self.prefix + "data/"))
        order = b"little"
        if self.prefix + "byteorder" in self.infos:
            order = bytes(self.read_small(self.prefix + "byteorder", 16)).strip()
        if order not in (b"little", b"big"):
            raise TorchCheckpointError(f"{path}: unknown byteorder {order!r}")
        self.big_endian = order == b"big"
        self._cache: dict[str, _Storage] = {}

    def _data_start(self, info: zipfile.ZipInfo) -> int:
        """Offset of the entry's (compressed) bytes, after checking its local header and method."""
        name = info.filename
        if info.flag_bits & 0x1:
            raise TorchCheckpointError(f"{self.path}: zip entry {name} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise TorchCheckpointError(f"{self.path}: zip entry {name} uses compression method "
                                       f"{info.compress_type}; only stored and deflated entries are read")
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            hdr = f.read(30)
        if len(hdr) != 30 or hdr[:4] != b"PK\x03\x04":
            raise TorchCheckpointError(f"{self.path}: zip entry {name} has no local header (corrupt file)")
        n_name, n_extra = struct.unpack("<HH", hdr[26:30])
        start = info.header_offset + 30 + n_name + n_extra
        if start + info.compress_size > self.size:
            raise TorchCheckpointError(f"{self.path}: zip entry {name} runs past the end of the file (truncated)")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise TorchCheckpointError(f"{self.path}: stored zip entry {name} declares {info.file_size} bytes but "
                                       f"holds {info.compress_size}")
        return start

    def _crc_error(self, name: str):
        return TorchCheckpointError(f"{self.path}: zip entry {name} fails its CRC-32 check (corrupt file)")

    def _inflate(self, info: zipfile.ZipInfo, start: int) -> bytearray:
        """Inflates a deflated entry in chunks; never holds more than its declared size (+ one chunk)."""
        name, want = info.filename, info.file_size
        out, d, left = bytearray(), zlib.decompressobj(-zlib.MAX_WBITS), info.compress_size
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                while not d.eof:
                    if d.unconsumed_tail:
                        chunk = d.unconsumed_tail
                    elif left > 0:
                        chunk = f.read(min(left, _CHUNK))
                        left -= len(chunk)
                    else:
                        break
                    out += d.decompress(chunk, _CHUNK)
                    if len(out) > want:
                        raise TorchCheckpointError(f"{self.path}: zip entry {name} inflates to more than its "
                                                   f"declared {want} bytes (zip bomb or corrupt file)")
                out += d.flush()
        except zlib.error as e:
            raise TorchCheckpointError(f"{self.path}: zip entry {name} is not valid deflate data ({e})") from None
        if len(out) != want:
            raise TorchCheckpointError(f"{self.path}: zip entry {name} inflates to {len(out)} bytes, its header "
                                       f"declares {want} (corrupt file)")
        if zlib.crc32(out) != info.CRC:
            raise self._crc_error(name)
        return out

    def _charge_inflate(self, info: zipfile.ZipInfo):
        if info.file_size > self.inflate_left:
            raise TorchCheckpointError(f"{self.path}: zip entry {info.filename} declares {info.file_size} bytes "
                                       f"uncompressed ({info.compress_size} compressed), over the {self.inflate_left} "
                                       f"bytes this load may still inflate (zip bomb?)")
        self.inflate_left -= info.file_size

    def read_small(self, name: str, limit: int) -> bytes | bytearray:
        """The whole entry ``name`` (at most ``limit`` bytes declared), size and CRC checked."""
        info = self.infos[name]
        if info.file_size > limit:
            raise TorchCheckpointError(f"{self.path}: zip entry {name} declares {info.file_size} bytes, more than "
                                       f"the {limit} allowed for it")
        start = self._data_start(info)
        if info.compress_type == zipfile.ZIP_DEFLATED:
            self._charge_inflate(info)
            return self._inflate(info, start)
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(info.file_size)
        if zlib.crc32(data) != info.CRC:
            raise self._crc_error(name)
        return data

    def read_pickle(self) -> bytes | bytearray:
        return self.read_small(self.prefix + "data.pkl", _MAX_PICKLE_BYTES)

    def _raw(self, name: str) -> np.ndarray:
        info = self.infos[name]
        start = self._data_start(info)
        if info.compress_type == zipfile.ZIP_DEFLATED:
            self._charge_inflate(info)
            return np.frombuffer(self._inflate(info, start), dtype=np.uint8)
        if info.file_size == 0:
            if info.CRC != 0:
                raise self._crc_error(name)
            return np.zeros(0, np.uint8)
        mm = np.memmap(self.path, dtype=np.uint8, mode="r", offset=start, shape=(info.file_size,))
        crc = 0
        for i in range(0, info.file_size, _CHUNK):
            crc = zlib.crc32(mm[i:i + _CHUNK], crc)
        if crc != info.CRC:
            raise self._crc_error(name)
        return mm

    def storage(self, key: str, dtype: np.dtype, numel: int) -> _Storage:
        cache_key = f"{key}:{dtype.str}"
        if cache_key in self._cache:
            return self._cache[cache_key]
        name = f"{self.prefix}data/{key}"
        if "/" in key or ".." in key or name not in self.infos:
            raise TorchCheckpointError(f"{self.path}: storage {key!r} missing from the archive")
        have = self.infos[name].file_size
        if numel < 0 or have < numel * dtype.itemsize:  # checked on the declared size, before reading
            raise TorchCheckpointError(f"{self.path}: storage {key} has {have} bytes, expected "
                                       f"{numel} x {dtype.itemsize}")
        raw = self._raw(name)[: numel * dtype.itemsize]
        if self.big_endian and dtype.itemsize > 1:
            comp = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
            raw = np.frombuffer(raw, dtype=np.dtype(f"u{comp}")).byteswap().view(np.uint8)
        st = _Storage(data=raw.view(dtype), key=key)
        self._cache[cache_key] = st
        return st


# --------------------------------------------------------------------------------------------------- one load
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _as_dims(x, what: str, path: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or len(x) > _MAX_NDIM or not all(_is_int(v) for v in x):
        raise TorchCheckpointError(f"{path}: tensor {what} is not a tuple of at most {_MAX_NDIM} ints: "
                                   f"{_short.repr(x)}")
    if any(v < 0 or v >= 1 << 62 for v in x):
        raise TorchCheckpointError(f"{path}: tensor {what} {_short.repr(x)} has a negative or absurd entry")
    return tuple(x)


class _Load:
    """The state of one :func:`load` call: its archive, its table of allowed globals (fresh stand-ins) and its
    tensor-materialisation budget."""

    def __init__(self, archive: _Archive, records: Iterable[str], enums: Iterable[str]):
        self.archive = archive
        self.budget = 2 * archive.storage_bytes + _EXPAND_SLACK
        fns = {"torch._utils._rebuild_tensor_v2": self.rebuild_tensor,
               "torch._utils._rebuild_tensor": self.rebuild_tensor,
               "torch._utils._rebuild_parameter": self.rebuild_parameter,
               "torch._utils._rebuild_parameter_with_state": self.rebuild_parameter,
               "torch._tensor._rebuild_from_type_v2": self.rebuild_from_type_v2}
        table: dict[str, Any] = {k: _Fn(name=k, fn=f) for k, f in fns.items()}
        self.tensor_fns = tuple(table[k] for k in list(fns)[:4])
        for qual in ("torch._tensor.Tensor", "torch.Tensor"):
            table[qual] = _TensorType(name="torch.Tensor")
        table["torch.nn.parameter.Parameter"] = _TensorType(name="torch.nn.parameter.Parameter")
        table["collections.OrderedDict"] = OrderedDict
        for name, dt in _STORAGE_DTYPES.items():
            table[f"torch.{name}"] = table[f"torch.storage.{name}"] = _StorageType(name=name, dtype=dt)
        for qual in records:
            table[qual] = _SET_NAMES.get(qual) or _record_class(qual)
        for qual in enums:
            table[qual] = _Fn(name=qual, fn=_enum_value(qual))
        self.table = table

    def rebuild_tensor(self, storage, storage_offset, size, stride, *_ignored) -> np.ndarray:
        path = self.archive.path
        if not isinstance(storage, _Storage):
            raise TorchCheckpointError(f"{path}: tensor rebuilt from {type(storage).__name__}, not a storage")
        size, stride = _as_dims(size, "size", path), _as_dims(stride, "stride", path)
        if not _is_int(storage_offset) or storage_offset < 0 or len(size) != len(stride):
            raise TorchCheckpointError(f"{path}: bad tensor geometry: offset {_short.repr(storage_offset)}, "
                                       f"size {size}, stride {stride}")
        data = storage.data
        numel = 1
        for n in size:
            numel *= n
        nbytes = numel * data.dtype.itemsize
        if nbytes > self.budget:  # zero / overlapping strides make a tensor larger than its storage
            raise TorchCheckpointError(
                f"{path}: tensor of size {size} ({nbytes} bytes) exceeds what this checkpoint may materialise "
                f"({self.budget} bytes left of twice its {self.archive.storage_bytes} storage bytes + "
                f"{_EXPAND_SLACK >> 20} MiB)")
        if numel == 0:
            return np.zeros(size, dtype=data.dtype)
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= data.shape[0]:
            raise TorchCheckpointError(f"{path}: tensor of size {size}, stride {stride}, offset {storage_offset} "
                                       f"reads past the end of storage {storage.key} ({data.shape[0]} elements)")
        self.budget -= nbytes
        item = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(data[storage_offset:], shape=size,
                                               strides=tuple(s * item for s in stride), writeable=False)
        return np.array(view, copy=True, order="C")

    def rebuild_parameter(self, data, requires_grad=False, backward_hooks=None, *state):
        if not isinstance(data, np.ndarray):
            raise TorchCheckpointError(f"{self.archive.path}: Parameter rebuilt from {type(data).__name__}, "
                                       f"not a tensor")
        return data

    def rebuild_from_type_v2(self, func, new_type, args, state):
        if not isinstance(new_type, _TensorType):
            raise UnsafeCheckpointError(f"_rebuild_from_type_v2 with type {_short.repr(new_type)}")
        if not any(func is f for f in self.tensor_fns):
            raise UnsafeCheckpointError(f"_rebuild_from_type_v2 with function {_short.repr(func)}")
        if not isinstance(args, tuple):
            raise TorchCheckpointError(f"{self.archive.path}: _rebuild_from_type_v2 with arguments "
                                       f"{_short.repr(args)}")
        return func(*args)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, load_state: _Load):
        super().__init__(file)
        self._load = load_state
        self._archive = load_state.archive

    def find_class(self, module, name):
        qual = f"{module}.{name}"
        try:
            return self._load.table[qual]
        except KeyError:
            raise UnsafeCheckpointError(f"{self._archive.path}: checkpoint pickle references the global "
                                        f"{_short.repr(qual)}, which is not on the allow-list; refusing to load "
                                        f"it") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchCheckpointError(f"{self._archive.path}: unsupported persistent id {_short.repr(pid)}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not _is_int(numel):
            raise TorchCheckpointError(f"{self._archive.path}: malformed storage reference {_short.repr(pid)}")
        return self._archive.storage(key, stype.dtype, numel)


_MUTATORS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_FRESH = frozenset({"EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _prescan(data: bytes, path: str):
    """Walks the pickle's opcodes (nothing is built) with a shadow stack of nesting depths. Refuses a pickle that
    could nest objects more than ``_MAX_OP_DEPTH`` deep, a length that runs past the end of the pickle (the unpickler
    allocates a declared length before reading it) and a memo index out of sequence (the unpickler sizes its memo
    table by the largest index: one 6-byte opcode could make it allocate gigabytes).

    The depth bound is conservative: an opcode that consumes stack items yields an object one level deeper than the
    deepest of them, and a mutation (APPEND, SETITEM, BUILD, ...) deepens its container in place (a container's depth
    cell is shared through DUP and the memo). Leaves share one cell; memory is one pointer per stack/memo entry."""
    leaf = [0]
    stack: list[list[int]] = []
    marks: list[int] = []
    memo: list[list[int]] = []

    def corrupt(why):
        return TorchCheckpointError(f"{path}: corrupt checkpoint pickle ({why})")

    try:
        for op, arg, pos in pickletools.genops(data):
            name = op.name
            if name in ("PROTO", "FRAME", "STOP"):
                continue
            if name == "MARK":
                marks.append(len(stack))
            elif name in _PUTS or name == "MEMOIZE":
                idx = len(memo) if name == "MEMOIZE" else arg
                if not stack or not isinstance(idx, int) or not 0 <= idx <= len(memo):
                    raise corrupt(f"memo index {_short.repr(idx)} out of sequence at byte {pos}")
                if idx == len(memo):
                    memo.append(stack[-1])
                else:
                    memo[idx] = stack[-1]
            elif name in _GETS:
                if not isinstance(arg, int) or not 0 <= arg < len(memo):
                    raise corrupt(f"memo index {_short.repr(arg)} never set, at byte {pos}")
                stack.append(memo[arg])
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "POP":
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    stack.pop()
            elif name == "POP_MARK":
                del stack[marks.pop():]
            else:
                before = op.stack_before
                if pickletools.markobject in before:
                    k = before.index(pickletools.markobject)
                    start = marks.pop() - k
                else:
                    start = len(stack) - len(before)
                if start < 0 or (marks and start < marks[-1]):
                    raise corrupt(f"stack underflow at byte {pos} ({name})")
                popped = stack[start:]
                del stack[start:]
                if name in _MUTATORS:
                    cell = popped[0] if popped[0] is not leaf else [0]
                    cell[0] = max(cell[0], 1 + max((c[0] for c in popped[1:]), default=-1))
                    pushed = [cell]
                elif popped:
                    pushed = [[1 + max(c[0] for c in popped)] for _ in op.stack_after]
                else:
                    pushed = [[0] if name in _FRESH else leaf for _ in op.stack_after]
                if pushed and pushed[0][0] > _MAX_OP_DEPTH:
                    raise TorchCheckpointError(f"{path}: checkpoint pickle nests objects more than {_MAX_OP_DEPTH} "
                                               f"levels deep")
                stack.extend(pushed)
    except TorchCheckpointError:
        raise
    except (ValueError, IndexError) as e:
        raise corrupt(f"{type(e).__name__}: {_short.repr(str(e))}") from None


def _children(x):
    """The objects ``x`` refers to (None for a leaf)."""
    if isinstance(x, Record):
        return (x.args, x.kwargs, x.state)
    if isinstance(x, dict):
        return [*x.keys(), *x.values()]
    if isinstance(x, (list, tuple, set, frozenset)):
        return x
    return None


def _check_structure(obj, path: str):
    """Refuses reference cycles, nesting deeper than ``_MAX_DEPTH`` and more than ``_MAX_NODES`` objects counted
    with shared references expanded (what a recursive walk such as ``Record.to_dict`` or ``json.dump`` would visit)."""
    try:
        expanded_size(obj, _children, _MAX_NODES, _MAX_DEPTH)
    except ExpansionLimit as e:
        raise TorchCheckpointError(path + {
            "cycle": ": checkpoint pickle contains a reference cycle",
            "depth": f": checkpoint pickle nests deeper than {_MAX_DEPTH} levels",
            "nodes": f": checkpoint pickle expands to more than {_MAX_NODES} objects (shared references counted at "
                     f"each use)"}[e.kind]) from None


def load(path: str | os.PathLike, *, records: Iterable[str] = (), enums: Iterable[str] = (),
         max_inflate_bytes: int = _MAX_INFLATE_BYTES) -> Any:
    """Loads a ``torch.save`` zip checkpoint as plain Python + numpy, executing no pickled code.

    path:     the checkpoint file (``hypermod.pt``, ``pytorch_model.bin``, ...).
    records:  dotted class names that become inert :class:`Record` objects (``builtins.set`` and friends: real sets).
    enums:    dotted enum class names; ``Enum(value)`` in the pickle yields ``value``.
    max_inflate_bytes: total declared uncompressed bytes of deflated zip entries this load may inflate
              (``torch.save`` stores entries uncompressed; those are memory-mapped and not counted).

    Returns the unpickled object; every tensor is an owned, C-contiguous numpy array of the tensor's dtype and shape
    (storage offset and strides honoured; bfloat16/float8 as ``ml_dtypes`` dtypes). Raises
    :class:`UnsafeCheckpointError` for any global outside the allow-list and :class:`TorchCheckpointError` for a file
    that is not a readable torch zip checkpoint or exceeds the bounds listed in the module docstring.
    """
    path = os.fspath(path)
    archive = _Archive(path, max_inflate_bytes)
    state = _Load(archive, records, enums)
    try:
        data = bytes(archive.read_pickle())
        _prescan(data, path)
        obj = _RestrictedUnpickler(io.BytesIO(data), state).load()
        _check_structure(obj, path)
        return obj
    except (UnsafeCheckpointError, TorchCheckpointError) as e:
        if str(e).startswith(path):
            raise
        raise type(e)(f"{path}: {e}") from None  # raised by a stand-in that does not know the file
    except MemoryError:
        raise TorchCheckpointError(f"{path}: out of memory while unpickling (a declared length is larger than "
                                   f"the file)") from None
    except RecursionError:
        raise TorchCheckpointError(f"{path}: checkpoint pickle nests too deeply") from None
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError, ValueError,
            OverflowError) as e:
        raise TorchCheckpointError(f"{path}: corrupt checkpoint pickle ({type(e).__name__}: "
                                   f"{_short.repr(str(e))})") from None
