"""Example sources of the ``d2l`` method: ``source(i) -> dict`` of fixed-shape arrays (a pure function of (seed, i)).

Every example holds one document as ``data.max_chunks`` chunk slots [K, T] (unused slots all padding, with
``n_chunks`` the number used) and one chat-templated query turn + response [Tq] with the loss on the response.

``data.batch_chunk_count`` (sources that support it: toy_niah): every document of a global batch has the same
chunk count, and ``collate`` keeps only that many slots, so the step costs what its documents need (the context
encoder dominates: a 1-chunk batch is ~4x cheaper than 4 padded slots). One compiled step per chunk count; the
slot count is the same on every host because it is a function of the global batch index.
"""
from __future__ import annotations

import numpy as np

SOURCES = {}
BATCH_CHUNK_COUNT_SOURCES = {"toy_niah"}  # sources that can draw one chunk count per global batch


def source(name):
    def deco(fn):
        SOURCES[name] = fn
        return fn
    return deco


def collate(examples: list, trim_slots: bool = False) -> dict:
    """Stack examples; with ``trim_slots`` keep only the chunk slots some document of the batch uses
    (ctx_ids / ctx_mask [B, K', T] with K' = max n_chunks)."""
    from hyperlora_jax.data.iterators import stack
    batch = stack(examples)
    if trim_slots and "ctx_ids" in batch:
        k = max(int(batch["n_chunks"].max()), 1)
        batch["ctx_ids"], batch["ctx_mask"] = batch["ctx_ids"][:, :k], batch["ctx_mask"][:, :k]
    return batch


def chunk_slots(method, document: str, max_chunks: int):
    """(ids [K, T], mask [K, T], n_chunks) of a document chunked as in internalization, padded to K slots."""
    from hyperlora_jax.d2l.context import chunk_ids, tokenize_document
    chunks = chunk_ids(tokenize_document(method.tok, document), method.config.data.chunk_tokens, method.affixes)
    if len(chunks) > max_chunks:
        raise ValueError(f"document needs {len(chunks)} chunks > data.max_chunks {max_chunks}")
    ids = np.zeros((max_chunks, method.chunk_len), np.int32)
    mask = np.zeros((max_chunks, method.chunk_len), np.int32)
    for i, c in enumerate(chunks):
        ids[i, :len(c)] = c
        mask[i, :len(c)] = 1
    return ids, mask, len(chunks)


def query_row(method, question: str, answer: str, length: int):
    """(tokens, loss_mask, segment_ids) [length] of ``chat(question)`` + answer + end of turn; loss on the answer."""
    from hyperlora_jax.toy.eval_niah import chat_ids
    prompt = chat_ids(method.tok, question)
    ans = list(method.tok(answer + method.tok.eos_token, add_special_tokens=False)["input_ids"])
    ids = prompt + ans
    if len(ids) > length:
        raise ValueError(f"query of {len(ids)} tokens exceeds data.query_len {length}")
    tokens = np.zeros(length, np.int32)
    tokens[:len(ids)] = ids
    mask = np.zeros(length, np.float32)
    mask[len(prompt) - 1:len(ids) - 1] = 1.0
    return tokens, mask, (np.arange(length) < len(ids)).astype(np.int32)


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


SHORTEST_DOC = 26  # characters: the 25-character needle plus one
CURRICULUM_START = 40  # longest document (characters) at the start of the toy curriculum


@source("toy_niah")
def toy_niah(method, data_cfg, seed: int):
    """Toy NIAH documents of 1..max_chunks chunks (``data.chunk_probs``), CE on the 4-digit answer.

    Length curriculum (``data.curriculum_examples`` = N > 0): stream positions i < N hold one-chunk documents whose
    length is drawn from [26, hi(i)], hi growing linearly from 40 characters to a full chunk; the needle then starts
    as a large part of the document, which is what lets the hypernetwork's context path switch on at toy scale
    (without it the run sits at the answer-prior plateau). Positions >= N use ``data.chunk_probs``. Still a pure
    function of (seed, i), so resumed runs see the same examples.
    """
    from hyperlora_jax.toy.niah import make_example
    probs = np.asarray(data_cfg.chunk_probs, np.float64)
    probs = probs / probs.sum()
    c = data_cfg.chunk_tokens
    overhead = len(method.affixes)
    lo = max(data_cfg.get("min_doc_len", 32), SHORTEST_DOC)
    warm = int(data_cfg.get("curriculum_examples", 0))
    full = c - overhead
    if warm and full < CURRICULUM_START:
        raise ValueError(f"data.chunk_tokens {c} leaves {full} characters per chunk; the curriculum needs "
                         f">= {CURRICULUM_START}")

    per_batch = bool(data_cfg.get("batch_chunk_count", False))
    g = int(method.config.batch_size)
    r = response_budget(data_cfg)

    def example(i):
        rng = np.random.default_rng([seed, i, 11])
        if (i // g * g if per_batch else i) < warm:
            hi = min(int(round(CURRICULUM_START + (full - CURRICULUM_START) * i / warm)), full)
            n, length = 1, int(rng.integers(SHORTEST_DOC, hi + 1))
        else:
            if per_batch:
                n = int(np.random.default_rng([seed, i // g, 13]).choice(len(probs), p=probs)) + 1
            else:
                n = int(rng.choice(len(probs), p=probs)) + 1
            hi = n * c - overhead
            length = int(rng.integers(max(lo, (n - 1) * c - overhead + 1), max(hi, lo) + 1))
        ex = make_example(seed + 1000, i, length)
        ids, mask, k = chunk_slots(method, ex.document, data_cfg.max_chunks)
        tokens, loss_mask, seg = query_row(method, ex.question, ex.answer, data_cfg.query_len)
        resp = response_index(loss_mask, r)
        if resp is None:
            raise ValueError(f"toy answer of {int(loss_mask.sum())} tokens exceeds data.max_response_tokens {r}")
        return {"ctx_ids": ids, "ctx_mask": mask, "n_chunks": np.int32(k), "tokens": tokens, "loss_mask": loss_mask,
                "segment_ids": seg, "student_idx": resp[0], "resp_valid": resp[1]}
    return example, None
