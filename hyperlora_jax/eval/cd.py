"""Per-document context distillation (CD): the baseline D2L amortises (spec D2L.md section 13, ``cd.sh``).

For every document a fresh LoRA on the frozen base model is trained for ``steps`` optimizer steps so that the
base model WITHOUT the document imitates the base model WITH the document in context:

  teacher   = base model on chat(document + "\\n\\n" + query); its greedy response (≤ ``response_tokens``) and
              its top-k next-token probabilities at every response position (computed once)
  student   = base model + LoRA on chat(query) + the teacher's response
  loss      = − Σ_{j ∈ teacher top-k} p_teacher(j) · log_softmax(student)_j   (unrenormalised top-k, as D2L's KD),
              mean over each response's tokens, mean over a document's queries, summed over documents
  LoRA      = rank ``rank`` on ``target_modules`` with PEFT's init (A ~ U(±1/√d_in), B = 0), scale α/r;
              Adam, cosine decay from ``lr`` over ``steps`` (the reference: r 8, α 16, down_proj, lr 1e-4, 300 steps)

The documents of one call are distilled together in one jitted step (one LoRA per batch row; Adam is per element,
so each document's LoRA sees exactly its own gradient). ``queries`` are what the caller has: the suites pass the
test question itself (the reference's ``cd_oracle``) unless the data brings its own ``cd_queries``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.eval.answering import chat_ids, generate_ids, in_context, padded_batches, stop_tokens
from hyperlora_jax.lora import Adapter
from hyperlora_jax.losses import teacher_top_k, top_k_ce
from hyperlora_jax.model import forward, segment_positions


@dataclasses.dataclass(frozen=True)
class CDOptions:
    steps: int = 300
    lr: float = 1e-4
    rank: int = 8
    alpha: float = 16.0
    top_k: int = 16
    target_modules: tuple = ("down_proj",)
    response_tokens: int = 256
    seed: int = 0

    def check(self, cfg):
        shapes = cfg.projection_shapes()
        bad = [m for m in self.target_modules if m not in shapes]
        if bad:
            raise ValueError(f"context distillation: target modules {bad} are not projections of the base model")
        if self.steps < 1 or self.rank < 1 or self.top_k < 1 or not self.lr > 0:
            raise ValueError(f"context distillation needs steps, rank, top_k >= 1 and lr > 0, got {self}")


def _pad(rows: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(rows), length), np.int32)
    seg = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        seg[i, :len(r)] = 1
    return ids, seg


def _bucket(n: int, m: int = 16) -> int:
    return max(m, -(-n // m) * m)


@functools.partial(jax.jit, static_argnames=("cfg", "top_k", "dtype"))
def _teacher_topk(params, ids, seg, t_idx, *, cfg, top_k, dtype):
    """Teacher top-k probabilities [P, R, k] and token ids [P, R, k] at positions t_idx [P, R]."""
    logits = forward(params, cfg, ids, positions=segment_positions(seg), segment_ids=seg, dtype=dtype)["logits"]
    return teacher_top_k(jnp.take_along_axis(logits, t_idx[:, :, None], axis=1), top_k)


def _loss(lora, params, batch, *, cfg, scale, dtype):
    """Σ_docs mean_queries mean_tokens CE(student, teacher top-k). lora: {A: {m: [L, D, r, d_in]}, B: ...}."""
    n_docs = next(iter(lora["A"].values())).shape[1]
    ad = Adapter(lora["A"], lora["B"], jnp.full((n_docs,), scale, jnp.float32)).take(batch["doc"])
    seg = batch["seg"]
    logits = forward(params, cfg, batch["ids"], positions=segment_positions(seg), segment_ids=seg, adapter=ad,
                     dtype=dtype)["logits"]
    at = jnp.take_along_axis(logits, batch["s_idx"][:, :, None], axis=1)                     # [P, R, V]
    ce = top_k_ce(at, batch["top_p"], batch["top_i"])                                        # [P, R]
    valid = batch["valid"]
    per_query = (ce * valid).sum(1) / jnp.maximum(valid.sum(1), 1.0)                         # [P]
    return (per_query * batch["query_weight"]).sum()


@functools.lru_cache(maxsize=8)
def _train_step(cfg, scale: float, lr: float, steps: int, dtype):
    """(optax transform, jitted step(lora, opt_state, params, batch) -> (lora, opt_state, loss)), cached so that
    every batch of documents with the same shapes reuses one compiled program."""
    import optax

    tx = optax.adam(optax.cosine_decay_schedule(lr, steps))
    loss_fn = functools.partial(_loss, cfg=cfg, scale=scale, dtype=dtype)

    @jax.jit
    def step(lora, opt_state, params, batch):
        loss, g = jax.value_and_grad(loss_fn)(lora, params, batch)
        upd, opt_state = tx.update(g, opt_state, lora)
        return optax.apply_updates(lora, upd), opt_state, loss

    return tx, step


def distill(params, cfg, tok, documents: Sequence[str], queries: Sequence[Sequence[str]], opts: CDOptions, *,
            system_turn: bool = False, batch_size: int = 8, dtype=jnp.float32) -> tuple[Adapter, dict]:
    """One distilled LoRA per document (Adapter row d = documents[d]) and stats {final_loss, pairs, steps}.

    queries[d]: the query prompts of document d (at least one). The adapter's A [L, D, r, d_in], B [L, D, r, d_out],
    scale α/r.
    """
    opts.check(cfg)
    if len(queries) != len(documents) or any(not q for q in queries):
        raise ValueError("context distillation needs at least one query per document")
    pairs = [(d, q) for d, qs in enumerate(queries) for q in qs]
    t_prompts = [chat_ids(tok, in_context(documents[d], q), system_turn) for d, q in pairs]
    s_prompts = [chat_ids(tok, q, system_turn) for _, q in pairs]
    # teacher responses (greedy, with the document in context); keep the stop token, as the reference's data does
    responses = generate_ids(params, cfg, t_prompts, max_new_tokens=opts.response_tokens,
                             stop=stop_tokens(tok, cfg), batch_size=batch_size, dtype=dtype)
    R = max(len(r) for r in responses)
    t_rows = [p + r for p, r in zip(t_prompts, responses)]
    s_rows = [p + r for p, r in zip(s_prompts, responses)]
    t_ids, t_seg = _pad(t_rows, _bucket(max(map(len, t_rows))))
    s_ids, s_seg = _pad(s_rows, _bucket(max(map(len, s_rows))))
    t_idx = np.zeros((len(pairs), R), np.int32)
    s_idx = np.zeros((len(pairs), R), np.int32)
    valid = np.zeros((len(pairs), R), np.float32)
    for i, r in enumerate(responses):
        t_idx[i, :len(r)] = len(t_prompts[i]) - 1 + np.arange(len(r))
        s_idx[i, :len(r)] = len(s_prompts[i]) - 1 + np.arange(len(r))
        valid[i, :len(r)] = 1.0
    top_p, top_i = [], []
    for idx in padded_batches(len(pairs), batch_size):
        p, i = _teacher_topk(params, jnp.asarray(t_ids[idx]), jnp.asarray(t_seg[idx]), jnp.asarray(t_idx[idx]),
                             cfg=cfg, top_k=min(opts.top_k, cfg.vocab_size), dtype=dtype)
        top_p.append(np.asarray(p))
        top_i.append(np.asarray(i))
    n_q = np.bincount([d for d, _ in pairs], minlength=len(documents)).astype(np.float32)
    batch = {"ids": jnp.asarray(s_ids), "seg": jnp.asarray(s_seg), "s_idx": jnp.asarray(s_idx),
             "valid": jnp.asarray(valid), "top_p": jnp.asarray(np.concatenate(top_p)[:len(pairs)]),
             "top_i": jnp.asarray(np.concatenate(top_i)[:len(pairs)]),
             "doc": jnp.asarray([d for d, _ in pairs], jnp.int32),
             "query_weight": jnp.asarray([1.0 / n_q[d] for d, _ in pairs], jnp.float32)}

    # LoRAs with PEFT's init: A ~ kaiming_uniform(a=√5) = U(±1/√d_in), B = 0
    shapes = cfg.projection_shapes()
    rng = np.random.default_rng(opts.seed)  # host-side draws: no per-shape compilation
    lora = {"A": {}, "B": {}}
    for m in opts.target_modules:
        d_in, d_out = shapes[m]
        bound = 1.0 / math.sqrt(d_in)
        lora["A"][m] = jnp.asarray(rng.uniform(-bound, bound, (cfg.num_layers, len(documents), opts.rank, d_in)),
                                   jnp.float32)
        lora["B"][m] = jnp.asarray(np.zeros((cfg.num_layers, len(documents), opts.rank, d_out), np.float32))
    scale = float(opts.alpha) / opts.rank
    tx, step = _train_step(cfg, scale, float(opts.lr), int(opts.steps), jnp.dtype(dtype))
    opt_state = tx.init(lora)
    first = last = None
    for _ in range(opts.steps):
        lora, opt_state, loss = step(lora, opt_state, params, batch)
        if first is None:
            first = float(loss)
    last = float(loss)
    adapter = Adapter(lora["A"], lora["B"], jnp.asarray(np.full((len(documents),), scale, np.float32)))
    return adapter, {"cd_first_loss": first / len(documents), "cd_final_loss": last / len(documents),
                     "cd_pairs": len(pairs), "cd_steps": opts.steps}

