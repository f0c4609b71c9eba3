"""What the ``d2l`` method's data sources share: the formatter they build examples with, the response positions and
the batch collation. A source (``hyperlora_jax.data.sources``, kind 'd2l') is ``fn(D2LFormatter, data_cfg, seed) ->
(example(i) -> dict of fixed-shape arrays, size or None)``, a pure function of (seed, i).

Every example holds one document as ``data.max_chunks`` chunk slots [K, T] (unused slots all padding, with
``n_chunks`` the number used) and one chat-templated query turn + response [Tq] with the loss on the response.

``data.batch_chunk_count`` (sources that support it: toy_niah): every document of a global batch has the same
chunk count, and ``collate`` keeps only that many slots, so the step costs what its documents need (the context
encoder dominates: a 1-chunk batch is ~4x cheaper than 4 padded slots). One compiled step per chunk count; the
slot count is the same on every host because it is a function of the global batch index.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

BATCH_CHUNK_COUNT_SOURCES = {"toy_niah"}  # sources that can draw one chunk count per global batch


@dataclasses.dataclass(frozen=True)
class D2LFormatter:
    """What a d2l source needs from the method (built by ``D2LMethod``): the base model's tokenizer and chunking.

    tok          Hugging Face tokenizer of the base model (with its chat template)
    affixes      ``d2l.context.Affixes``: template ids re-added around every chunk
    chunk_len    T of the chunk slots [K, T]: ``data.chunk_tokens`` + |affixes| (the longest chunk)
    vocab_size   the base model's vocabulary (token ids of pre-tokenised data must be below it)
    batch_size   global batch size in documents (sources drawing one chunk count per global batch)
    loss_kind    ``loss.kind``: 'ce', or 'kd' (examples then carry the teacher row)
    """

    tok: Any
    affixes: Any
    chunk_len: int
    vocab_size: int
    batch_size: int
    loss_kind: str


def collate(examples: list, trim_slots: bool = False) -> dict:
    """Stack examples; with ``trim_slots`` keep only the chunk slots some document of the batch uses
    (ctx_ids / ctx_mask [B, K', T] with K' = max n_chunks)."""
    from hyperlora_jax.data.iterators import stack
    batch = stack(examples)
    if trim_slots and "ctx_ids" in batch:
        k = max(int(batch["n_chunks"].max()), 1)
        batch["ctx_ids"], batch["ctx_mask"] = batch["ctx_ids"][:, :k], batch["ctx_mask"][:, :k]
    return batch


def response_index(loss_mask, r: int):
    """(student_idx [r] int32, resp_valid [r] int32) of a row's loss positions (loss_mask [Tq], next-token
    convention: position t predicts token t+1), padded with position 0 / valid 0; None if there are more than r.
    ``D2LMethod.loss`` takes the student's logits only at these positions."""
    pos = np.nonzero(np.asarray(loss_mask) > 0)[0]
    if len(pos) > r:
        return None
    idx = np.zeros(r, np.int32)
    idx[:len(pos)] = pos
    return idx, (np.arange(r) < len(pos)).astype(np.int32)


def response_budget(data_cfg) -> int:
    """R = ``data.max_response_tokens`` (default 256) capped at ``data.query_len - 1``."""
    r = int(data_cfg.get("max_response_tokens", 256))
    if r < 1:
        raise ValueError(f"data.max_response_tokens must be >= 1, got {r}")
    return min(r, int(data_cfg.query_len) - 1)
