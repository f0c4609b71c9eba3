"""Data sources of the toy NIAH world (``hyperlora_jax.toy.niah``), registered in ``hyperlora_jax.data.sources``:

  lm  source 'toy_niah'   pretraining of the toy base model (configs/toy_base.py): the document and the question in
                          the user turn, the 4-digit answer as the assistant turn
  d2l source 'toy_niah'   the d2l toy preset (configs/d2l.py:toy): the document as chunk slots, the question and
                          answer as the query row, with a length curriculum; ``data.batch_chunk_count`` supported
  d2l evaluator 'toy_niah'  the NIAH table by length after a d2l run with ``eval.lengths`` (``toy/eval_d2l.py``)
"""
from __future__ import annotations

import numpy as np

from hyperlora_jax.config import ModelConfig
from hyperlora_jax.data.sources import register_evaluator, register_source
from hyperlora_jax.eval.answering import chat_ids
from hyperlora_jax.methods.d2l_data import D2LFormatter, response_budget, response_index
from hyperlora_jax.toy.niah import make_example

SHORTEST_DOC = 26  # characters: the 25-character needle plus one
CURRICULUM_START = 40  # longest document (characters) at the start of the toy curriculum


@register_source("lm", "toy_niah")
def lm_toy_niah(cfg: ModelConfig, data_cfg, seed: int):
    """Chat-formatted toy NIAH: user = document + question, assistant = the number. Loss on the document (weight
    ``data.doc_loss_weight``) and on the answer (weight 1). Document lengths are uniform in
    [data.min_doc_len, data.max_doc_len]; rows are right-padded to data.seq_len."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data_cfg.tokenizer)
    doc_w = float(data_cfg.get("doc_loss_weight", 0.1))

    def example(i):
        rng = np.random.default_rng([seed, i, 7])
        length = int(rng.integers(data_cfg.min_doc_len, data_cfg.max_doc_len + 1))
        ex = make_example(seed, i, length)
        prompt = tok.apply_chat_template([{"role": "user", "content": ex.document + "\n\n" + ex.question}],
                                         add_generation_prompt=True, tokenize=True, return_dict=False)
        answer = tok(ex.answer + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids = list(prompt) + list(answer)
        if len(ids) > data_cfg.seq_len:
            raise ValueError(f"toy_niah example of {len(ids)} tokens exceeds seq_len {data_cfg.seq_len}")
        n = len(ids)
        tokens = np.zeros(data_cfg.seq_len, np.int32)
        tokens[:n] = ids
        mask = np.zeros(data_cfg.seq_len, np.float32)
        mask[:len(prompt) - 1] = doc_w                 # predicting the document/question tokens
        mask[len(prompt) - 1:n - 1] = 1.0              # predicting the answer and eos
        return {"tokens": tokens, "loss_mask": mask, "segment_ids": (np.arange(data_cfg.seq_len) < n).astype(np.int32)}
    return example, None


def chunk_slots(fmt: D2LFormatter, document: str, chunk_tokens: int, max_chunks: int):
    """(ids [K, T], mask [K, T], n_chunks) of a document chunked as in internalization, padded to K slots."""
    from hyperlora_jax.d2l.context import chunk_ids, tokenize_document
    chunks = chunk_ids(tokenize_document(fmt.tok, document), chunk_tokens, fmt.affixes)
    if len(chunks) > max_chunks:
        raise ValueError(f"document needs {len(chunks)} chunks > data.max_chunks {max_chunks}")
    ids = np.zeros((max_chunks, fmt.chunk_len), np.int32)
    mask = np.zeros((max_chunks, fmt.chunk_len), np.int32)
    for i, c in enumerate(chunks):
        ids[i, :len(c)] = c
        mask[i, :len(c)] = 1
    return ids, mask, len(chunks)


def query_row(tok, question: str, answer: str, length: int):
    """(tokens, loss_mask, segment_ids) [length] of ``chat(question)`` + answer + end of turn; loss on the answer."""
    prompt = chat_ids(tok, question)
    ans = list(tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"])
    ids = prompt + ans
    if len(ids) > length:
        raise ValueError(f"query of {len(ids)} tokens exceeds data.query_len {length}")
    tokens = np.zeros(length, np.int32)
    tokens[:len(ids)] = ids
    mask = np.zeros(length, np.float32)
    mask[len(prompt) - 1:len(ids) - 1] = 1.0
    return tokens, mask, (np.arange(length) < len(ids)).astype(np.int32)


@register_source("d2l", "toy_niah")
def d2l_toy_niah(fmt: D2LFormatter, data_cfg, seed: int):
    """Toy NIAH documents of 1..max_chunks chunks (``data.chunk_probs``), CE on the 4-digit answer.

    Length curriculum (``data.curriculum_examples`` = N > 0): stream positions i < N hold one-chunk documents whose
    length is drawn from [26, hi(i)], hi growing linearly from 40 characters to a full chunk; the needle then starts
    as a large part of the document, which is what lets the hypernetwork's context path switch on at toy scale
    (without it the run sits at the answer-prior plateau). Positions >= N use ``data.chunk_probs``. Still a pure
    function of (seed, i), so resumed runs see the same examples.
    """
    probs = np.asarray(data_cfg.chunk_probs, np.float64)
    probs = probs / probs.sum()
    c = data_cfg.chunk_tokens
    overhead = len(fmt.affixes)
    lo = max(data_cfg.get("min_doc_len", 32), SHORTEST_DOC)
    warm = int(data_cfg.get("curriculum_examples", 0))
    full = c - overhead
    if warm and full < CURRICULUM_START:
        raise ValueError(f"data.chunk_tokens {c} leaves {full} characters per chunk; the curriculum needs "
                         f">= {CURRICULUM_START}")

    per_batch = bool(data_cfg.get("batch_chunk_count", False))
    g = int(fmt.batch_size)
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
        ids, mask, k = chunk_slots(fmt, ex.document, c, data_cfg.max_chunks)
        tokens, loss_mask, seg = query_row(fmt.tok, ex.question, ex.answer, data_cfg.query_len)
        resp = response_index(loss_mask, r)
        if resp is None:
            raise ValueError(f"toy answer of {int(loss_mask.sum())} tokens exceeds data.max_response_tokens {r}")
        return {"ctx_ids": ids, "ctx_mask": mask, "n_chunks": np.int32(k), "tokens": tokens, "loss_mask": loss_mask,
                "segment_ids": seg, "student_idx": resp[0], "resp_valid": resp[1]}
    return example, None


@register_evaluator("d2l", "toy_niah")
def d2l_toy_niah_eval(method, hyper_params, frozen, workdir: str) -> dict:
    """NIAH exact match by length (``eval.lengths``): no context, document in context, D2L (``toy/eval_d2l.py``)."""
    from hyperlora_jax.toy.eval_d2l import evaluate_niah
    return evaluate_niah(method, hyper_params, workdir)
