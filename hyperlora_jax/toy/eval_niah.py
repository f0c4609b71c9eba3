"""Toy NIAH evaluation of a base model: exact-match accuracy by length, with the document in context or without it.

``length`` is the number of tokens of the whole in-context sequence (chat template + document + question + the
4-digit answer and its end token), so a length of W fills the base model's native window exactly; the document of
that example has ``length - overhead - ANSWER_TOKENS`` tokens.
"""
from __future__ import annotations

import numpy as np

from hyperlora_jax.eval.answering import chat_ids  # noqa: F401  (re-exported: the toy's prompt builder)
from hyperlora_jax.generation import generate
from hyperlora_jax.toy.niah import QUESTION, make_example


def prompt_overhead(tok) -> int:
    """Tokens an in-context prompt adds around the document."""
    return len(chat_ids(tok, "\n\n" + QUESTION))


ANSWER_TOKENS = 5  # four digits and the end-of-turn token


def examples_for_length(tok, length: int, n: int, seed: int):
    doc_len = length - prompt_overhead(tok) - ANSWER_TOKENS
    return [make_example(seed, i, doc_len) for i in range(n)]


def answers_match(tok, outputs, examples) -> list[bool]:
    return [tok.decode(o, skip_special_tokens=True).strip() == e.answer for o, e in zip(outputs, examples)]


def accuracy(params, cfg, tok, examples, mode: str, *, adapter=None, batch_size: int = 16, max_new_tokens: int = 6):
    """mode: 'in_context' (document + question in the prompt) or 'no_context' (question only, optional adapter)."""
    hits = []
    for s in range(0, len(examples), batch_size):
        chunk = examples[s:s + batch_size]
        if mode == "in_context":
            prompts = [chat_ids(tok, e.document + "\n\n" + e.question) for e in chunk]
        else:
            prompts = [chat_ids(tok, e.question) for e in chunk]
        ad = None
        if adapter is not None:
            ad = adapter.take(range(s, s + len(chunk)))
        out = generate(params, cfg, prompts, adapter=ad, max_new_tokens=max_new_tokens,
                       stop_tokens=list(cfg.eos_token_ids) + [tok.eos_token_id])
        hits += answers_match(tok, out, chunk)
    return float(np.mean(hits))
