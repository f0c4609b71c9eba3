"""Sequence packing into fixed-length rows, and the checkpointable, per-host sharded packed iterator.

Row layout (all numpy, one dict per row; batches stack them):

  tokens, segment_ids, positions   [T] int32   QA tokens; segment s = 1.. is one QA, 0 = padding; positions restart
                                               per segment (as ``model.forward`` expects for packed rows)
  loss_mask                        [T] f32     1 at t when token t+1 is a target of the same segment (the
                                               next-token convention of ``methods.lm.lm_loss``)
  qa_doc                           [S] int32   document (1..) of QA segment s+1 in this row; 0 = unused slot
  qa_example                       [S] int32   source record index of segment s+1; -1 = none
  ctx_tokens, ctx_segment_ids, ctx_positions  [C]  context chunks (segment m = 1.. is one chunk), if ctx_len > 0
  ctx_chunk_doc                    [M] int32   document (1..) of chunk segment m+1; 0 = unused
  topk_vals [T, K] f32, topk_ids [T, K] int32  teacher log-probs of the distribution predicted *at* t (for token
                                               t+1), if top_k > 0; zero where loss_mask is 0

Placement is first-fit: within a window of consecutive host-local examples, each sample goes into the first open row
where its QA tokens, context tokens, QA segments and chunks all fit; rows are emitted in creation order.

Order, sharding and checkpoints: the global example stream is ``ExampleStream(size, seed, shuffle)`` (or any
``order`` callable); host p of P takes stream positions p, p+P, p+2P, … (disjoint, together covering the stream).
Host-local positions are cut into windows of ``window`` examples; a window is tokenised (per-example RNG
``default_rng([seed, 7, position])``), packed, and its rows are emitted in order. The iterator's position is (window,
row in window) plus the stats counters as they were at the window's start, so ``set_state(get_state())`` yields exactly
the remaining rows, recomputing at most one window.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from hyperlora_jax.data.iterators import ExampleStream
from hyperlora_jax.data.stats import DataStats
from hyperlora_jax.data.tokenize import Sample


@dataclasses.dataclass
class PackConfig:
    seq_len: int                 # T: QA tokens per row
    ctx_len: int = 0             # C: context tokens per row (0 = no context row)
    max_segments: int = 16       # S: QA segments per row
    max_ctx_segments: int = 16   # M: context chunks per row
    top_k: int = 0               # K: teacher log-probs per position (0 = none)
    packed: bool = True          # False: one sample per row (the unpacked reference layout)


def _fits(row, s: Sample, cfg: PackConfig) -> bool:
    return (row["t"] + s.qa_len <= cfg.seq_len and row["c"] + s.ctx_len <= cfg.ctx_len
            and row["s"] + len(s.qas) <= cfg.max_segments and row["m"] + len(s.ctx_chunks) <= cfg.max_ctx_segments)


def first_fit(samples: list, cfg: PackConfig, stats: DataStats | None = None) -> list[list]:
    """Groups samples into rows (lists of samples), first-fit in order; one per row when ``cfg.packed`` is False."""
    rows, empty = [], {"t": 0, "c": 0, "s": 0, "m": 0}
    for smp in samples:
        if not _fits(empty, smp, cfg):
            if stats is not None:  # cannot happen with a consistent config (see PackedIterator checks)
                stats.add("pack/oversize_skipped")
            continue
        target = None
        if cfg.packed:
            target = next((r for r in rows if _fits(r, smp, cfg)), None)
        if target is None:
            target = {"t": 0, "c": 0, "s": 0, "m": 0, "items": []}
            rows.append(target)
        target["items"].append(smp)
        target["t"] += smp.qa_len
        target["c"] += smp.ctx_len
        target["s"] += len(smp.qas)
        target["m"] += len(smp.ctx_chunks)
    return [r["items"] for r in rows]


def empty_row(cfg: PackConfig) -> dict:
    T, S = cfg.seq_len, cfg.max_segments
    row = {"tokens": np.zeros(T, np.int32), "segment_ids": np.zeros(T, np.int32), "positions": np.zeros(T, np.int32),
           "loss_mask": np.zeros(T, np.float32), "qa_doc": np.zeros(S, np.int32),
           "qa_example": np.full(S, -1, np.int32)}
    if cfg.ctx_len:
        C, M = cfg.ctx_len, cfg.max_ctx_segments
        row.update(ctx_tokens=np.zeros(C, np.int32), ctx_segment_ids=np.zeros(C, np.int32),
                   ctx_positions=np.zeros(C, np.int32), ctx_chunk_doc=np.zeros(M, np.int32))
    if cfg.top_k:
        row.update(topk_vals=np.zeros((T, cfg.top_k), np.float32), topk_ids=np.zeros((T, cfg.top_k), np.int32))
    return row


def assemble(samples: list, cfg: PackConfig) -> dict:
    """One row from the samples placed in it (documents numbered 1.. in order)."""
    row = empty_row(cfg)
    t = c = s = m = 0
    for d, smp in enumerate(samples, 1):
        for chunk in smp.ctx_chunks:
            n = len(chunk)
            row["ctx_tokens"][c:c + n] = chunk
            row["ctx_segment_ids"][c:c + n] = m + 1
            row["ctx_positions"][c:c + n] = np.arange(n)
            row["ctx_chunk_doc"][m] = d
            c, m = c + n, m + 1
        for qa in smp.qas:
            n = len(qa.ids)
            row["tokens"][t:t + n] = qa.ids
            row["segment_ids"][t:t + n] = s + 1
            row["positions"][t:t + n] = np.arange(n)
            row["loss_mask"][t:t + n - 1] = qa.target[1:]
            if cfg.top_k and qa.topk_vals is not None:
                row["topk_vals"][t:t + n - 1] = qa.topk_vals[1:, :cfg.top_k]
                row["topk_ids"][t:t + n - 1] = qa.topk_ids[1:, :cfg.top_k]
            row["qa_doc"][s], row["qa_example"][s] = d, smp.example
            t, s = t + n, s + 1
    return row


def stack_rows(rows: list) -> dict:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def segment_nll(logits, tokens, loss_mask, segment_ids, num_segments: int):
    """Per-segment mean next-token NLL: ([B, num_segments] mean over each segment's targets, [B, num_segments]
    target counts); segment s+1 → column s. Works on packed and unpacked rows alike (jax.numpy)."""
    import jax
    import jax.numpy as jnp
    from hyperlora_jax.losses import next_token_ce
    nll = next_token_ce(logits, tokens)
    m = loss_mask[:, :-1]
    onehot = jax.nn.one_hot(segment_ids[:, :-1] - 1, num_segments, dtype=jnp.float32)  # padding (0) → zeros
    sums = jnp.einsum("bt,bts->bs", nll * m, onehot)
    counts = jnp.einsum("bt,bts->bs", m, onehot)
    return sums / jnp.maximum(counts, 1.0), counts


class PackedIterator:
    """Host-local batches of packed rows from an indexed record source (see the module docstring).

    source:     ``source(i) -> record`` or an object with ``__getitem__``, for i in [0, size)
    tokenize:   ``tokenize(record, rng, stats, example=i) -> [Sample]`` (e.g. ``D2LTokenizer``)
    rows_per_batch: rows per host-local batch
    num_epochs: None = repeat forever; otherwise stop after that many passes (last batch padded with empty rows)
    order:      stream position -> example index (default ``ExampleStream(size, seed, shuffle)``)
    """

    def __init__(self, source, size: int | None, tokenize: Callable, cfg: PackConfig, rows_per_batch: int, *,
                 seed: int = 0, shuffle: bool = True, process_index: int = 0, process_count: int = 1,
                 window: int = 64, num_epochs: int | None = None, order: Callable[[int], int] | None = None,
                 stats: DataStats | None = None):
        if size is not None and size <= 0:
            raise ValueError("the example source is empty")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} out of range for {process_count} processes")
        tcfg = getattr(tokenize, "cfg", None)
        if tcfg is not None and hasattr(tcfg, "max_ctx_len") and cfg.ctx_len and tcfg.max_ctx_len > cfg.ctx_len:
            raise ValueError(f"max_ctx_len {tcfg.max_ctx_len} exceeds the context row length {cfg.ctx_len}")
        if tcfg is not None and getattr(tcfg, "max_qas_len", 0) > cfg.seq_len:
            raise ValueError(f"max_qas_len {tcfg.max_qas_len} exceeds the row length {cfg.seq_len}")
        if num_epochs is not None and size is None:
            raise ValueError("num_epochs needs a finite source")
        self.get = source.__getitem__ if hasattr(source, "__getitem__") else source
        self.size, self.tokenize, self.cfg, self.rows_per_batch = size, tokenize, cfg, rows_per_batch
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.window_size, self.num_epochs = window, num_epochs
        self.order = order or ExampleStream(size, seed, shuffle)
        self.stats = stats if stats is not None else DataStats()
        self.window, self.row = 0, 0
        self._rows, self._stats_base = None, None

    # -- stream
    def host_count(self) -> int | None:
        """Host-local examples in the whole run (None = infinite)."""
        if self.num_epochs is None:
            return None
        total = self.size * self.num_epochs
        return max(0, -(-(total - self.process_index) // self.process_count))

    def stream_position(self, k: int) -> int:
        return k * self.process_count + self.process_index

    def local_examples(self, k0: int, k1: int) -> list[int]:
        return [self.order(self.stream_position(k)) for k in range(k0, k1)]

    def _load_window(self):
        self._stats_base = copy.deepcopy(self.stats)
        k0, k1 = self.window * self.window_size, (self.window + 1) * self.window_size
        n = self.host_count()
        if n is not None:
            k1 = min(k1, n)
        samples = []
        for k in range(k0, k1):
            g = self.stream_position(k)
            i = self.order(g)
            try:
                record = self.get(i)
            except Exception as e:  # an unreadable record is a bad row, not a crash
                self.stats.add(f"read/{type(e).__name__}")
                continue
            try:
                samples += self.tokenize(record, np.random.default_rng([self.seed, 7, g]), self.stats, example=i)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:  # malformed record
                self.stats.add(f"tokenize/error_{type(e).__name__}")
        self.stats.add("pack/examples", max(0, k1 - k0))
        self._rows = [assemble(r, self.cfg) for r in first_fit(samples, self.cfg, self.stats)]
        self.stats.add("pack/rows", len(self._rows))

    def _exhausted(self) -> bool:
        n = self.host_count()
        return n is not None and self.window * self.window_size >= n

    def next_row(self) -> dict | None:
        while True:
            if self._rows is None:
                if self._exhausted():
                    return None
                self._load_window()
            if self.row < len(self._rows):
                self.row += 1
                return self._rows[self.row - 1]
            self.window, self.row, self._rows = self.window + 1, 0, None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rows = []
        while len(rows) < self.rows_per_batch:
            r = self.next_row()
            if r is None:
                break
            rows.append(r)
        if not rows:
            raise StopIteration
        rows += [empty_row(self.cfg)] * (self.rows_per_batch - len(rows))
        return stack_rows(rows)

    # -- checkpoints
    def get_state(self) -> dict:
        stats = self._stats_base if self._rows is not None else self.stats
        return {"window": self.window, "row": self.row, "stats": stats.summary(), "seed": self.seed,
                "window_size": self.window_size, "rows_per_batch": self.rows_per_batch,
                "process_index": self.process_index, "process_count": self.process_count}

    def set_state(self, state: Mapping[str, Any]):
        for k in ("seed", "window_size", "process_count", "process_index"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(f"data state was saved with {k}={state[k]}, this run has {getattr(self, k)}")
        self.window, self.row = int(state["window"]), int(state["row"])
        self._rows, self._stats_base = None, None
        self.stats.counts.clear()
        self.stats.merge(state.get("stats", {}))
