"""Counters of what the input pipeline skipped, truncated or chunked, for the trainer to log.

Every stage that drops or alters data calls ``stats.add(reason)``; nothing is dropped silently. ``summary()`` is a
plain dict (JSON-able), and the counts travel with the iterator state so that a restored run keeps counting.
"""
from __future__ import annotations

import collections
from typing import Mapping


class DataStats:
    """A named counter. Keys are ``"<stage>/<reason>"`` strings, e.g. ``"tokenize/qa_too_long"``."""

    def __init__(self, counts: Mapping[str, int] | None = None):
        self.counts = collections.Counter(dict(counts or {}))

    def add(self, key: str, n: int = 1):
        self.counts[key] += int(n)

    def __getitem__(self, key: str) -> int:
        return self.counts.get(key, 0)

    def total(self, prefix: str = "") -> int:
        return sum(v for k, v in self.counts.items() if k.startswith(prefix))

    def merge(self, other: "DataStats | Mapping[str, int]"):
        self.counts.update(other.counts if isinstance(other, DataStats) else dict(other))
        return self

    def summary(self) -> dict:
        return {k: int(v) for k, v in sorted(self.counts.items())}

    def __repr__(self):
        return f"DataStats({self.summary()})"
