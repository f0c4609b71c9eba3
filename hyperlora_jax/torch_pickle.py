"""Reads ``torch.save`` checkpoints (zip format) without torch and without executing pickled code.

A torch zip checkpoint is a zip archive ``<prefix>/data.pkl`` (the pickled object), ``<prefix>/data/<key>`` (one raw
storage per key), ``<prefix>/byteorder`` ("little" or "big"; absent in old files, meaning little) and a few version
files. The pickle refers to storages through persistent ids ``('storage', <StorageType global>, key, location, numel)``
and rebuilds tensors with ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``.

``load(path)`` unpickles ``data.pkl`` with a restricted ``pickle.Unpickler`` whose ``find_class`` never imports
anything: it only answers from a fixed table of harmless stand-ins

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
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any, Iterable

import ml_dtypes
import numpy as np

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


class _StorageType:
    """Stand-in for a ``torch.<X>Storage`` class: only carries the numpy dtype."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype

    def __call__(self, *args, **kwargs):  # a pickle must never construct a storage directly
        raise UnsafeCheckpointError(f"torch.{self.name} called directly by the pickle (not a torch.save layout)")

    def __repr__(self):
        return f"<storage type torch.{self.name}>"


class _Storage:
    """One loaded storage: a 1-D numpy array of ``dtype`` (possibly memory-mapped, read-only)."""

    def __init__(self, data: np.ndarray, key: str):
        self.data, self.key = data, key


class _TensorType:
    """Stand-in for the classes ``torch.Tensor`` / ``torch.nn.parameter.Parameter`` (only usable as a marker)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise UnsafeCheckpointError(f"{self.name} called directly by the pickle")


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
        return f"Record({self.qualname}, args={self.args!r}, state={self.state!r})"


def _record_class(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (Record,), {"qualname": qualname, "__module__": __name__})


def _enum_value(qualname: str):
    def make(value, *rest):
        if rest:
            raise UnsafeCheckpointError(f"enum {qualname} called with {1 + len(rest)} arguments")
        return value
    return make


# --------------------------------------------------------------------------------------------------- tensors
def _as_int_tuple(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in x):
        raise TorchCheckpointError(f"tensor {what} is not a tuple of ints: {x!r}")
    return tuple(x)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise TorchCheckpointError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    size, stride = _as_int_tuple(size, "size"), _as_int_tuple(stride, "stride")
    if not isinstance(storage_offset, int) or storage_offset < 0 or len(size) != len(stride):
        raise TorchCheckpointError(f"bad tensor geometry: offset {storage_offset!r}, size {size}, stride {stride}")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise TorchCheckpointError(f"bad tensor geometry: size {size}, stride {stride}")
    data = storage.data
    if 0 in size:
        return np.zeros(size, dtype=data.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.shape[0]:
        raise TorchCheckpointError(f"tensor of size {size}, stride {stride}, offset {storage_offset} reads past the "
                                   f"end of storage {storage.key} ({data.shape[0]} elements)")
    item = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(data[storage_offset:], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view, copy=True, order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    if not isinstance(data, np.ndarray):
        raise TorchCheckpointError(f"Parameter rebuilt from {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if not isinstance(new_type, _TensorType):
        raise UnsafeCheckpointError(f"_rebuild_from_type_v2 with type {new_type!r}")
    if func not in (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter):
        raise UnsafeCheckpointError(f"_rebuild_from_type_v2 with function {func!r}")
    return func(*args)


_FIXED_GLOBALS: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch._tensor.Tensor": _TensorType("torch.Tensor"),
    "torch.Tensor": _TensorType("torch.Tensor"),
    "torch.nn.parameter.Parameter": _TensorType("torch.nn.parameter.Parameter"),
    "collections.OrderedDict": OrderedDict,
}
for _name, _dt in _STORAGE_DTYPES.items():
    _FIXED_GLOBALS[f"torch.{_name}"] = _StorageType(_name, _dt)
    _FIXED_GLOBALS[f"torch.storage.{_name}"] = _FIXED_GLOBALS[f"torch.{_name}"]


# --------------------------------------------------------------------------------------------------- archive
class _Archive:
    """The zip container: locates ``data.pkl`` and reads storages (memory-mapped when stored uncompressed)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            with open(path, "rb") as f:
                head = f.read(16)
            if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
                raise TorchCheckpointError(f"{path}: legacy (pre-1.6, non-zip) torch checkpoint; not supported. "
                                           f"Re-save it with a current torch.save") from None
            raise TorchCheckpointError(f"{path}: not a torch zip checkpoint") from None
        pkls = [n for n in self.zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise TorchCheckpointError(f"{path}: expected one '<archive>/data.pkl' in the zip, found {len(pkls)}")
        self.prefix = pkls[0][: -len("data.pkl")]
        self.names = set(self.zf.namelist())
        order = b"little"
        if self.prefix + "byteorder" in self.names:
            order = self.zf.read(self.prefix + "byteorder").strip()
        if order not in (b"little", b"big"):
            raise TorchCheckpointError(f"{path}: unknown byteorder {order!r}")
        self.big_endian = order == b"big"
        self._cache: dict[str, _Storage] = {}

    def read_pickle(self) -> bytes:
        return self.zf.read(self.prefix + "data.pkl")

    def _raw(self, name: str) -> np.ndarray:
        info = self.zf.getinfo(name)
        if info.compress_type == zipfile.ZIP_STORED and info.file_size > 0:
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                hdr = f.read(30)
            if len(hdr) == 30 and hdr[:4] == b"PK\x03\x04":
                n_name, n_extra = struct.unpack("<HH", hdr[26:30])
                start = info.header_offset + 30 + n_name + n_extra
                if start + info.file_size <= os.path.getsize(self.path):
                    return np.memmap(self.path, dtype=np.uint8, mode="r", offset=start, shape=(info.file_size,))
        return np.frombuffer(self.zf.read(name), dtype=np.uint8)

    def storage(self, key: str, dtype: np.dtype, numel: int) -> _Storage:
        cache_key = f"{key}:{dtype.str}"
        if cache_key in self._cache:
            return self._cache[cache_key]
        name = f"{self.prefix}data/{key}"
        if "/" in key or ".." in key or name not in self.names:
            raise TorchCheckpointError(f"{self.path}: storage {key!r} missing from the archive")
        raw = self._raw(name)
        if raw.shape[0] < numel * dtype.itemsize:
            raise TorchCheckpointError(f"{self.path}: storage {key} has {raw.shape[0]} bytes, expected "
                                       f"{numel} x {dtype.itemsize}")
        raw = raw[: numel * dtype.itemsize]
        if self.big_endian and dtype.itemsize > 1:
            comp = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
            raw = np.frombuffer(raw, dtype=np.dtype(f"u{comp}")).byteswap().view(np.uint8)
        st = _Storage(raw.view(dtype), key)
        self._cache[cache_key] = st
        return st


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: _Archive, allowed: dict[str, Any]):
        super().__init__(file)
        self._archive, self._allowed = archive, allowed

    def find_class(self, module, name):
        qual = f"{module}.{name}"
        try:
            return self._allowed[qual]
        except KeyError:
            raise UnsafeCheckpointError(f"{self._archive.path}: checkpoint pickle references the global {qual!r}, "
                                        f"which is not on the allow-list; refusing to load it") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchCheckpointError(f"{self._archive.path}: unsupported persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise TorchCheckpointError(f"{self._archive.path}: malformed storage reference {pid!r}")
        return self._archive.storage(key, stype.dtype, numel)


def load(path: str | os.PathLike, *, records: Iterable[str] = (), enums: Iterable[str] = ()) -> Any:
    """Loads a ``torch.save`` zip checkpoint as plain Python + numpy, executing no pickled code.

    path:     the checkpoint file (``hypermod.pt``, ``pytorch_model.bin``, ...).
    records:  dotted class names that become inert :class:`Record` objects (``builtins.set`` and friends: real sets).
    enums:    dotted enum class names; ``Enum(value)`` in the pickle yields ``value``.

    Returns the unpickled object; every tensor is an owned, C-contiguous numpy array of the tensor's dtype and shape
    (storage offset and strides honoured; bfloat16/float8 as ``ml_dtypes`` dtypes). Raises
    :class:`UnsafeCheckpointError` for any global outside the allow-list and :class:`TorchCheckpointError` for a file
    that is not a readable torch zip checkpoint.
    """
    path = os.fspath(path)
    allowed = dict(_FIXED_GLOBALS)
    for qual in records:
        allowed[qual] = _SET_NAMES.get(qual) or _record_class(qual)
    for qual in enums:
        allowed[qual] = _enum_value(qual)
    archive = _Archive(path)
    try:
        return _RestrictedUnpickler(io.BytesIO(archive.read_pickle()), archive, allowed).load()
    except (UnsafeCheckpointError, TorchCheckpointError):
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise TorchCheckpointError(f"{path}: corrupt checkpoint pickle ({type(e).__name__}: {e})") from None
