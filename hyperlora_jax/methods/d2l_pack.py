"""Packed batches of the ``d2l`` method (``data.pack_docs`` D > 0): several documents per row instead of one
document per padded row.

The padded layout gives every document ``max_chunks`` chunk rows of ``chunk_tokens`` tokens, a ``query_len`` student
row and a ``teacher_len`` teacher row; with short documents (SQuAD-like: a few hundred tokens against the stage-1
presets' 4096 / 2048 / 6160) nearly all of the context encoder's, the Perceiver's and the teacher's work is padding.
Packed, a host-local batch of B documents (the same examples, in the same global stream) becomes P = B / D rows of
exactly D documents each::

  ctx_tokens / ctx_segment_ids / ctx_positions   [P, C]     the rows' chunks back to back; chunk s = segment s
                                                           (1..S), positions restart per chunk, 0 = padding
  doc_chunks                                     [P, D]     chunks of each document slot (its chunks are the next
                                                           doc_chunks[p, j] segments of row p)
  ctx_slot_doc                                   [P, S]     document slot (1..D) of chunk segment s+1, 0 = unused
                                                           (its width S is the chunk slots per row)
  tokens / segment_ids / loss_mask               [P, D, Tq] each document's own student row (its own adapter)
  student_idx / resp_valid                       [P, D, R]  as in the padded layout
  teacher_tokens / teacher_segment_ids / teacher_positions   [P, Tt]   kd only: the rows' teacher sequences back to
                                                           back (segment j+1 = document slot j)
  teacher_idx                                    [P, D, R]  kd only: the response positions in the packed teacher row

The student rows stay one per document (each needs its own adapter; the base model applies one adapter per row)
but are cut to Tq = the bucketed longest QA of the global batch instead of ``query_len``.

Documents go to rows longest first, each to the row with the fewest tokens (context + QA) among rows with a free
slot (LPT), which balances the rows. The row lengths C, Tt, Tq and the chunk slots S are functions of the GLOBAL
batch — the longest row over every host's rows, rounded up by ``bucket`` — so all hosts build the same shapes
(every host computes the other hosts' examples for their lengths: the sources are pure functions of the stream
index; a source's skip counters then also count the other hosts' examples). A new bucket compiles a new step:
``bucket`` rounds up to 8 steps per octave (at most 12.5 % padding per row), so a run sees a handful of shapes.

Exact: the encoder attends within each chunk and restarts its positions, the Perceiver's latents of a chunk attend
only to its tokens, the teacher attends within each document, so loss and gradients equal the padded layout's
(tests/e2e/test_d2l_pack.py). One difference: NEFTune's noise scale α/√(T·d) uses the student row length T, which is Tq
here and query_len padded (the reference uses its packed row length).
"""
from __future__ import annotations

import numpy as np

from hyperlora_jax.data.iterators import IndexedBatchIterator, stack

MIN_GRANULE = 16


def bucket(n: int, min_granule: int = MIN_GRANULE) -> int:
    """n rounded up to a multiple of max(min_granule, 2^(floor(log2 n) - 3)): 8 steps per octave."""
    n = max(int(n), 1)
    g = max(int(min_granule), 1 << max(n.bit_length() - 4, 0))
    return -(-n // g) * g


def example_lengths(ex: dict) -> dict:
    """Real lengths of one padded example (what packing keeps of it)."""
    m = np.asarray(ex["ctx_mask"])
    k = int(ex["n_chunks"])
    out = {"chunks": [int(x) for x in m[:k].sum(axis=1)], "qa": int(np.asarray(ex["segment_ids"]).sum())}
    if "teacher_segment_ids" in ex:
        out["teacher"] = int(np.asarray(ex["teacher_segment_ids"]).sum())
    return out


def assign_rows(lengths: list, docs_per_row: int) -> list:
    """Document indices per row: P = len(lengths) / D rows of exactly D documents, longest first into the row with
    the fewest tokens (context + QA) that has a free slot; within a row documents keep stream order."""
    n, d = len(lengths), int(docs_per_row)
    if d < 1 or n % d:
        raise ValueError(f"{n} documents do not fill rows of data.pack_docs = {d}")
    p = n // d
    size = [sum(x["chunks"]) + x["qa"] for x in lengths]
    rows, load = [[] for _ in range(p)], [0] * p
    for i in sorted(range(n), key=lambda i: (-size[i], i)):
        r = min((r for r in range(p) if len(rows[r]) < d), key=lambda r: (load[r], r))
        rows[r].append(i)
        load[r] += size[i]
    return [sorted(r) for r in rows]


def row_shapes(host_lengths: list, docs_per_row: int) -> dict:
    """Shapes of the packed batch from every host's example lengths (list per host): C, S, Tq (and Tt)."""
    c = s = q = t = 0
    for lengths in host_lengths:
        for row in assign_rows(lengths, docs_per_row):
            c = max(c, sum(sum(lengths[i]["chunks"]) for i in row))
            s = max(s, sum(len(lengths[i]["chunks"]) for i in row))
            q = max(q, max(lengths[i]["qa"] for i in row))
            if "teacher" in lengths[row[0]]:
                t = max(t, sum(lengths[i]["teacher"] for i in row))
    d = int(docs_per_row)
    out = {"ctx_len": bucket(c), "n_slots": -(-s // d) * d, "query_len": bucket(q)}
    if t:
        out["teacher_len"] = bucket(t)
    return out


def pack(examples: list, docs_per_row: int, shapes: dict) -> dict:
    """Packed host-local batch (see the module docstring) of padded examples (the sources' dicts)."""
    lengths = [example_lengths(e) for e in examples]
    rows = assign_rows(lengths, docs_per_row)
    P, D = len(rows), int(docs_per_row)
    C, S, Tq = shapes["ctx_len"], shapes["n_slots"], shapes["query_len"]
    kd = "teacher_tokens" in examples[0]
    R = np.asarray(examples[0]["student_idx"]).shape[0]
    b = {"ctx_tokens": np.zeros((P, C), np.int32), "ctx_segment_ids": np.zeros((P, C), np.int32),
         "ctx_positions": np.zeros((P, C), np.int32), "doc_chunks": np.zeros((P, D), np.int32),
         "ctx_slot_doc": np.zeros((P, S), np.int32)}
    per_doc = [[examples[i] for i in row] for row in rows]
    for key, width in (("tokens", Tq), ("segment_ids", Tq), ("loss_mask", Tq)):
        b[key] = np.stack([np.stack([np.asarray(e[key])[:width] for e in r]) for r in per_doc])
    for key in ("student_idx", "resp_valid"):
        b[key] = np.stack([np.stack([np.asarray(e[key]) for e in r]) for r in per_doc])
    if kd:
        Tt = shapes["teacher_len"]
        b.update(teacher_tokens=np.zeros((P, Tt), np.int32), teacher_segment_ids=np.zeros((P, Tt), np.int32),
                 teacher_positions=np.zeros((P, Tt), np.int32), teacher_idx=np.zeros((P, D, R), np.int32))
    for p, row in enumerate(rows):
        need = (sum(sum(lengths[i]["chunks"]) for i in row), sum(len(lengths[i]["chunks"]) for i in row),
                sum(lengths[i].get("teacher", 0) for i in row))
        if need[0] > C or need[1] > S or (kd and need[2] > shapes["teacher_len"]):
            raise ValueError(f"packed row {p} needs {need[0]} context tokens / {need[1]} chunks / {need[2]} teacher "
                             f"tokens, more than its shapes {shapes}")
        c = s = t = 0
        for j, i in enumerate(row):
            ex, ln = examples[i], lengths[i]
            if ln["qa"] > Tq:
                raise ValueError(f"a QA of {ln['qa']} tokens does not fit the packed query length {Tq}")
            b["doc_chunks"][p, j] = len(ln["chunks"])
            for k, n in enumerate(ln["chunks"]):
                s += 1
                b["ctx_slot_doc"][p, s - 1] = j + 1
                b["ctx_tokens"][p, c:c + n] = np.asarray(ex["ctx_ids"])[k, :n]
                b["ctx_segment_ids"][p, c:c + n] = s
                b["ctx_positions"][p, c:c + n] = np.arange(n)
                c += n
            if kd:
                n = ln["teacher"]
                b["teacher_tokens"][p, t:t + n] = np.asarray(ex["teacher_tokens"])[:n]
                b["teacher_segment_ids"][p, t:t + n] = j + 1
                b["teacher_positions"][p, t:t + n] = np.arange(n)
                b["teacher_idx"][p, j] = np.asarray(ex["teacher_idx"]) + t
                t += n
    return b


class PackedBatchIterator(IndexedBatchIterator):
    """``IndexedBatchIterator`` (same global stream, same per-host examples, same state) yielding packed batches
    whose shapes are a function of the global batch (see the module docstring)."""

    def __init__(self, source, size, global_batch: int, *, docs_per_row: int, seed: int = 0, process_index: int = 0,
                 process_count: int = 1):
        super().__init__(source, size, global_batch, collate=stack, seed=seed, process_index=process_index,
                         process_count=process_count)
        per_host = global_batch // process_count
        if docs_per_row < 1 or per_host % docs_per_row:
            raise ValueError(f"data.pack_docs {docs_per_row} must divide the per-host batch {per_host}")
        self.docs_per_row = int(docs_per_row)

    def __next__(self) -> dict:
        me = self.process_index
        host_examples = []
        for h in range(self.process_count):
            self.process_index = h
            try:
                idx = self.local_indices(self.next_batch)
            finally:
                self.process_index = me
            host_examples.append([self.source(i) for i in idx])
        shapes = row_shapes([[example_lengths(e) for e in exs] for exs in host_examples], self.docs_per_row)
        batch = pack(host_examples[me], self.docs_per_row, shapes)
        self.next_batch += 1
        return batch


def random_example(rng, vocab: int, chunk_lens, qa_len: int, resp_len: int, *, max_chunks: int, chunk_len: int,
                   query_len: int, max_response: int, teacher_len: int = 0) -> dict:
    """A padded example of the sources' layout with random token ids (tests and bench/packing.py): chunks of
    ``chunk_lens`` tokens, a QA row of ``qa_len`` tokens whose last ``resp_len`` are the response, and (teacher_len
    > 0) a teacher row = the document's tokens followed by the same QA."""
    k = len(chunk_lens)
    ctx_ids = np.zeros((max_chunks, chunk_len), np.int32)
    ctx_mask = np.zeros((max_chunks, chunk_len), np.int32)
    for i, n in enumerate(chunk_lens):
        ctx_ids[i, :n] = rng.integers(3, vocab, n)
        ctx_mask[i, :n] = 1
    qa = rng.integers(3, vocab, qa_len).astype(np.int32)
    tokens = np.zeros(query_len, np.int32)
    tokens[:qa_len] = qa
    loss_mask = np.zeros(query_len, np.float32)
    loss_mask[qa_len - resp_len - 1:qa_len - 1] = 1.0
    idx = np.zeros(max_response, np.int32)
    idx[:resp_len] = np.arange(qa_len - resp_len - 1, qa_len - 1)
    ex = {"ctx_ids": ctx_ids, "ctx_mask": ctx_mask, "n_chunks": np.int32(k), "tokens": tokens, "loss_mask": loss_mask,
          "segment_ids": (np.arange(query_len) < qa_len).astype(np.int32), "student_idx": idx,
          "resp_valid": (np.arange(max_response) < resp_len).astype(np.int32)}
    if teacher_len:
        doc = np.concatenate([ctx_ids[i, :n] for i, n in enumerate(chunk_lens)])
        t = np.concatenate([doc, qa])
        teacher = np.zeros(teacher_len, np.int32)
        teacher[:len(t)] = t
        t_idx = np.zeros(max_response, np.int32)
        t_idx[:resp_len] = idx[:resp_len] + len(doc)
        ex.update(teacher_tokens=teacher, teacher_segment_ids=(np.arange(teacher_len) < len(t)).astype(np.int32),
                  teacher_idx=t_idx)
    return ex
