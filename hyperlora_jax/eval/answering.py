"""Prompt building and batched answering with per-example adapters (shared by every suite).

Prompts are chat-templated user turns + the generation prompt (``chat_ids``); documents go in front of the question
as ``document + "\\n\\n" + question`` when they are in context. ``middle_truncate`` is LongBench's truncation: keep
the first and last halves of the token budget and drop the middle.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from hyperlora_jax.lora import Adapter


def chat_ids(tok, content: str, system_turn: bool = False) -> list[int]:
    """Token ids of ``[system "" (optional), user content]`` through the tokenizer's chat template, with the
    generation prompt (no extra special tokens)."""
    msgs = ([{"role": "system", "content": ""}] if system_turn else []) + [{"role": "user", "content": content}]
    out = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, add_special_tokens=False)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    out = list(out)
    if out and isinstance(out[0], (list, tuple, np.ndarray)):
        out = list(out[0])
    return [int(i) for i in out]


def in_context(document: str, question: str) -> str:
    return f"{document}\n\n{question}"


def middle_truncate(tok, text: str, max_tokens: int) -> str:
    """``text`` cut to at most ``max_tokens`` tokens by dropping its middle (LongBench's truncation)."""
    if max_tokens < 2:
        raise ValueError(f"no room for the context: {max_tokens} tokens left in the model's window")
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    if len(ids) <= max_tokens:
        return text
    half = max_tokens // 2
    return (tok.decode(ids[:half], skip_special_tokens=True)
            + tok.decode(ids[len(ids) - (max_tokens - half):], skip_special_tokens=True))


def truncated_in_context(tok, document: str, question: str, window: int, max_new_tokens: int,
                         system_turn: bool = False) -> str:
    """The in-context user turn, middle-truncated so that prompt + ``max_new_tokens`` fit ``window`` tokens."""
    content = in_context(document, question)
    n_content = len(tok(content, add_special_tokens=False)["input_ids"])
    overhead = len(chat_ids(tok, content, system_turn)) - n_content
    return middle_truncate(tok, content, window - max_new_tokens - overhead)


def stop_tokens(tok, cfg) -> list[int]:
    stop = list(cfg.eos_token_ids)
    if getattr(tok, "eos_token_id", None) is not None and tok.eos_token_id not in stop:
        stop.append(int(tok.eos_token_id))
    return stop


def generate_texts(params, cfg, tok, prompts: Sequence[Sequence[int]], *, adapter: Optional[Adapter] = None,
                   max_new_tokens: int, batch_size: int, dtype=None) -> list[str]:
    """Greedy answers (decoded, special tokens skipped, stripped) for token-id prompts, ``batch_size`` at a time.
    ``adapter``: one row per prompt, or None."""
    out = []
    for ids in generate_ids(params, cfg, prompts, adapter=adapter, max_new_tokens=max_new_tokens,
                            stop=stop_tokens(tok, cfg), batch_size=batch_size, dtype=dtype):
        out.append(tok.decode(ids, skip_special_tokens=True).strip())
    return out


def generate_ids(params, cfg, prompts: Sequence[Sequence[int]], *, adapter: Optional[Adapter] = None,
                 max_new_tokens: int, stop: Sequence[int], batch_size: int, dtype=None) -> list[list[int]]:
    """New token ids per prompt (greedy, cut after the first stop token), in fixed-shape batches."""
    import jax.numpy as jnp

    from hyperlora_jax.generation import generate

    out = []
    for idx in padded_batches(len(prompts), batch_size):
        out += generate(params, cfg, [prompts[i] for i in idx], adapter=None if adapter is None else adapter.take(idx),
                        max_new_tokens=max_new_tokens, stop_tokens=list(stop), dtype=dtype or jnp.float32)
    return [out[i] for i in range(len(prompts))]


def padded_batches(n: int, batch_size: int) -> list[list[int]]:
    """Index batches of exactly ``batch_size`` rows covering 0..n-1 in order; the last one is filled up by
    repeating its final index (callers drop those results), so every batch has one shape (one compilation)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"need at least one example and batch_size >= 1, got n={n}, batch_size={batch_size}")
    b = batch_size
    out = []
    for s in range(0, n, b):
        idx = list(range(s, min(s + b, n)))
        out.append(idx + [idx[-1]] * (b - len(idx)))
    return out
