"""Shared pieces of the local TFDS builders: reading user files, counting bad rows, reading records back.

Builders never download: every input is a local file (JSON, JSONL or parquet) or generated from a seed. Records are
written as array_record and read back through ``builder.as_data_source`` (random access, no TensorFlow). Nested lists
are stored flat with a lengths array (ragged features need TensorFlow to serialise).
"""
from __future__ import annotations

import glob as _glob
import json
import logging
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)


def expand_paths(patterns: Sequence[str] | str, *, required: bool = True) -> list[str]:
    """Expands globs in order; a plain path that does not exist raises, an unmatched glob is skipped (logged)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        p = os.path.expanduser(str(p))
        if any(c in p for c in "*?["):
            hits = sorted(_glob.glob(p, recursive=True))
            if not hits:
                logger.warning("no files match %s", p)
            out += hits
        elif os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p)
                          if f.endswith((".json", ".jsonl", ".parquet")))
        elif os.path.exists(p) or not required:
            out += [p] if os.path.exists(p) else []
        else:
            raise FileNotFoundError(p)
    return out


def read_rows(path: str) -> Iterator[Any]:
    """Rows of a JSON (a list, or a dict with a "data" list), JSONL or parquet file, as Python objects."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        for batch in table.to_batches(max_chunksize=1024):
            yield from batch.to_pylist()
    elif path.endswith(".jsonl"):
        with open(path) as f:
            for line_no, line in enumerate(f):
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    yield _BadRow(f"{path}:{line_no + 1}")
    else:
        with open(path) as f:
            obj = json.load(f)
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):
            obj = obj["data"]
        if isinstance(obj, dict):
            obj = [obj]
        yield from obj


class _BadRow:
    """Placeholder for an unparsable row (counted as ``malformed``)."""

    def __init__(self, where: str):
        self.where = where


def is_text(x) -> bool:
    return isinstance(x, str) and bool(x.strip())


def as_str_list(x) -> list | None:
    """A list of strings from a string, list or numpy array; None if the value is not text."""
    if x is None:
        return None
    if isinstance(x, str):
        return [x]
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        return list(x) if all(isinstance(v, str) for v in x) else None
    return None


class BuildCounter:
    """Counts what a builder skipped; written into the dataset's metadata (``info.metadata["skipped"][split]``)."""

    def __init__(self, builder, split: str):
        self.builder, self.split = builder, split
        self.counts: dict[str, int] = {}

    def add(self, reason: str, n: int = 1):
        self.counts[reason] = self.counts.get(reason, 0) + n
        md = self.builder.info.metadata
        if md is not None:
            md.setdefault("skipped", {}).setdefault(self.split, {})[reason] = self.counts[reason]


def flat(list_of_arrays: Iterable, dtype, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates a list of sequences; returns (flat, lengths)."""
    arrs = [np.asarray(a, dtype).reshape((-1,) if width is None else (-1, width)) for a in list_of_arrays]
    lens = np.asarray([len(a) for a in arrs], np.int32)
    if not arrs:
        return np.zeros((0,) if width is None else (0, width), dtype), lens
    return np.concatenate(arrs), lens


def split_flat(values: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(np.asarray(values), np.cumsum(lengths)[:-1]) if len(lengths) else []


def _decode(x):
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, dict):
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        if x and isinstance(x[0], bytes):
            return [v.decode("utf-8") for v in x]
        if x and isinstance(x[0], (np.generic, int, float)):
            return np.asarray(x)
        return [_decode(v) for v in x]
    if isinstance(x, np.ndarray) and x.dtype.kind in "OSU":
        return [_decode(v) for v in x.tolist()]
    return x


class DecodedSource:
    """Random-access view of a built split: ``len()``, ``src[i]`` with text as ``str`` and numbers as numpy arrays.

    Wraps ``builder.as_data_source(split)`` (array_record, no TensorFlow). Safe to index from any process.
    """

    def __init__(self, data_source):
        self.data_source = data_source

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, i: int) -> dict:
        return _decode(self.data_source[int(i)])

    def __call__(self, i: int) -> dict:
        return self[i]


def data_source(builder, split: str) -> DecodedSource:
    """Builds ``builder`` if needed (offline) and returns a decoded random-access source of ``split``."""
    builder.download_and_prepare(file_format="array_record")
    return DecodedSource(builder.as_data_source(split=split))


def load_built(name: str, data_dir: str, split: str) -> DecodedSource:
    """Reads a dataset built earlier (``name`` like ``"niah/toy"``) without its builder code's inputs."""
    import tensorflow_datasets as tfds
    return DecodedSource(tfds.data_source(name, split=split, data_dir=data_dir, download=False))


def text_feature():
    import tensorflow_datasets as tfds
    return tfds.features.Text()


def tensor(shape, dtype):
    import tensorflow_datasets as tfds
    return tfds.features.Tensor(shape=shape, dtype=dtype)


def json_dumps(x: Mapping) -> str:
    return json.dumps(x, sort_keys=True, default=str)
