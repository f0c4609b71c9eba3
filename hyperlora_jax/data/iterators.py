"""A deterministic, checkpointable batch iterator over an indexed example source, sharded per host.

The global stream is a fixed function of (seed, index): epoch e visits the source in the permutation
``np.random.default_rng([seed, e]).permutation(n)`` (or in order for infinite sources). Global batch b holds stream
items [b·G, (b+1)·G); process p of P keeps rows [p·G/P, (p+1)·G/P) of it. The whole state is the next global batch
index, so an iterator restored from ``get_state()`` yields exactly the remaining batches, and hosts see disjoint rows.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np


class ExampleStream:
    """Global stream position i -> example index: epoch e = i // size visits the source in the permutation
    ``np.random.default_rng([seed, e]).permutation(size)`` (in order if not shuffling; identity if size is None)."""

    def __init__(self, size: int | None, seed: int = 0, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self._perm_epoch, self._perm = None, None

    def __call__(self, i: int) -> int:
        if self.size is None:
            return i
        epoch, j = divmod(i, self.size)
        if not self.shuffle:
            return j
        if self._perm_epoch != epoch:
            self._perm_epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return int(self._perm[j])


class IndexedBatchIterator:
    """Yields host-local batches (dict of numpy arrays with a leading row axis).

    source:     ``source(i) -> example`` (dict of arrays), for i in [0, size) (size None = infinite stream)
    collate:    list of examples -> dict of stacked arrays
    """

    def __init__(self, source: Callable[[int], Mapping[str, Any]], size: int | None, global_batch: int, *,
                 collate: Callable[[list], dict], seed: int = 0, shuffle: bool = True, process_index: int = 0,
                 process_count: int = 1):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        if size is not None and size <= 0:
            raise ValueError("the example source is empty")
        self.source, self.size, self.global_batch = source, size, global_batch
        self.collate, self.seed, self.shuffle = collate, seed, shuffle
        self.process_index, self.process_count = process_index, process_count
        self.next_batch = 0
        self._stream = ExampleStream(size, seed, shuffle)

    def stream_index(self, i: int) -> int:
        return self._stream(i)

    def local_indices(self, batch: int) -> list[int]:
        per = self.global_batch // self.process_count
        start = batch * self.global_batch + self.process_index * per
        return [self.stream_index(i) for i in range(start, start + per)]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = self.collate([self.source(i) for i in self.local_indices(self.next_batch)])
        self.next_batch += 1
        return batch

    def get_state(self) -> dict:
        return {"next_batch": self.next_batch, "seed": self.seed, "global_batch": self.global_batch}

    def set_state(self, state: Mapping[str, Any]):
        for k in ("seed", "global_batch"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(f"data state was saved with {k}={state[k]}, this run has {getattr(self, k)}")
        self.next_batch = int(state["next_batch"])


def stack(examples: list) -> dict:
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}
