"""Batched, jit-compiled generation with a KV cache, and continuation scoring.

Prompts are left-padded to a common length (rounded up to a bucket so that few shapes compile); each row may carry
its own adapter. Generation is one compiled program: a prefill over the prompts, then a ``lax.while_loop`` of
one-token decode steps that stops when every row has emitted a stop token or ``max_new_tokens`` are reached.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.config import ModelConfig
from hyperlora_jax.lora import Adapter
from hyperlora_jax.losses import token_logprobs
from hyperlora_jax.model import KVCache, forward, segment_positions


def _bucket(n: int, multiple: int = 16) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def left_pad(prompts: Sequence[Sequence[int]], length: int | None = None, pad_id: int = 0):
    """(ids [B, P], mask [B, P]) with every prompt right-aligned. Raises ValueError on an empty prompt."""
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty (no tokens)")
    length = length or max(len(p) for p in prompts)
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = p
        mask[i, length - len(p):] = 1
    return ids, mask


def sample_token(logits, rng, temperature, top_p):
    """Greedy when temperature == 0, else temperature + nucleus (top-p) sampling. logits: [B, V] float32."""
    def sample(_):
        scaled = logits / jnp.maximum(temperature, 1e-6)
        sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        cum = jnp.cumsum(probs, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the best token)
        keep = (cum - probs) < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        masked = jnp.where(scaled >= cutoff, scaled, -jnp.inf)
        return jax.random.categorical(rng, masked, axis=-1).astype(jnp.int32)

    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.lax.cond(temperature > 0, sample, lambda _: greedy, None)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "dtype"))
def _generate(params, ids, mask, adapter, rng, temperature, top_p, stop_ids, pad_id, *, cfg: ModelConfig,
              max_new_tokens: int, dtype):
    b, p = ids.shape
    cache = KVCache.init(cfg, b, p + max_new_tokens, dtype)
    positions = segment_positions(mask)
    out = forward(params, cfg, ids, positions=positions, segment_ids=mask, adapter=adapter, cache=cache, dtype=dtype)
    last_pos = positions[:, -1]
    rng, sub = jax.random.split(rng)
    tok = sample_token(out["logits"][:, -1], sub, temperature, top_p)
    tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)
    done = jnp.isin(tok, stop_ids)

    def cond(state):
        step, _, _, done, _, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, tokens, cache, done, pos, rng = state
        prev = tokens[:, step - 1]
        pos = pos + 1
        o = forward(params, cfg, prev[:, None], positions=pos[:, None], segment_ids=jnp.ones((b, 1), jnp.int32),
                    adapter=adapter, cache=cache, dtype=dtype)
        rng, sub = jax.random.split(rng)
        nxt = sample_token(o["logits"][:, -1], sub, temperature, top_p)
        nxt = jnp.where(done, pad_id, nxt)
        tokens = tokens.at[:, step].set(nxt)
        return step + 1, tokens, o["cache"], done | jnp.isin(nxt, stop_ids), pos, rng

    state = (jnp.int32(1), tokens, out["cache"], done, last_pos, rng)
    _, tokens, _, _, _, _ = jax.lax.while_loop(cond, body, state)
    return tokens


def generate(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], *, adapter: Adapter | None = None,
             max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
             stop_tokens: Sequence[int] | None = None, seed: int = 0, dtype=jnp.float32,
             pad_id: int | None = None, pad_to: int = 0) -> list[list[int]]:
    """Generates up to ``max_new_tokens`` after each of the B ``prompts`` (token-id lists of any lengths >= 1).

    Prompts are left-padded (with ``pad_id``, default the config's pad id or 0) into one [B, P] batch,
    P = max(longest prompt, ``pad_to``) rounded up to a multiple of 16; one compiled program per
    (B, P, max_new_tokens). Pass the same ``pad_to`` (e.g. the longest prompt of all batches) to reuse one program
    across batches (padding is masked out: it changes the shape, not what a row attends to).
    ``adapter``: one row per prompt (batch size B), or None for the base model. ``temperature`` 0 is greedy.
    ``stop_tokens`` default: the config's eos ids.
    Returns B lists of new token ids, each at most ``max_new_tokens`` long and cut after its first stop token
    (included).
    """
    if not prompts:
        raise ValueError("no prompts given")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:  # also false for nan
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if adapter is not None and adapter.batch_size != len(prompts):
        raise ValueError(f"adapter has {adapter.batch_size} rows for {len(prompts)} prompts")
    stop = list(cfg.eos_token_ids if stop_tokens is None else stop_tokens)
    pad = pad_id if pad_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    ids, mask = left_pad(prompts, _bucket(max(pad_to, *(len(p) for p in prompts))), pad)
    stop_arr = jnp.asarray(stop if stop else [-1], jnp.int32)
    tokens = np.asarray(_generate(params, jnp.asarray(ids), jnp.asarray(mask), adapter, jax.random.PRNGKey(seed),
                                  jnp.float32(temperature), jnp.float32(top_p), stop_arr, jnp.int32(pad),
                                  cfg=cfg, max_new_tokens=max_new_tokens, dtype=dtype))
    results = []
    for row in tokens.tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
        results.append(row[:cut])
    return results


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def _token_logprobs(params, ids, mask, adapter, *, cfg: ModelConfig, dtype):
    positions = segment_positions(mask)
    logits = forward(params, cfg, ids, positions=positions, segment_ids=mask, adapter=adapter, dtype=dtype)["logits"]
    return token_logprobs(logits[:, :-1], ids[:, 1:])  # [B, T-1]: log p(ids[t+1] | ids[:t+1])


def score(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *,
          adapter: Adapter | None = None, dtype=jnp.float32) -> list[np.ndarray]:
    """Log-prob of each continuation token given everything before it: a list of [len(continuation)] arrays."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty (no tokens)")
        if len(c) == 0:
            raise ValueError(f"continuation {i} is empty (no tokens)")
    seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    ids, mask = left_pad(seqs, _bucket(max(map(len, seqs))))
    lp = np.asarray(_token_logprobs(params, jnp.asarray(ids), jnp.asarray(mask), adapter, cfg=cfg, dtype=dtype))
    return [lp[i, lp.shape[1] - len(c):] for i, c in enumerate(continuations)]
