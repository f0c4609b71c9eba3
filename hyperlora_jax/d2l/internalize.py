"""Internalisation: chunks of a batch of documents → one combined D2L ``Adapter`` (one row per document).

    ctx_ids [K, T] (all chunks of all documents, document order), ctx_attn_mask [K, T], n_ctx_chunks [n_docs]
      │ lax.map over groups of ``chunk_group`` chunks (one compiled body):
      │   context encoder (frozen base model, ctx_encoder.encode) → features of the group
      │   hypernetwork (perceiver + head)                         → per-chunk A [G, L, r, d_in], B [G, L, r, d_out]
      │ stacked per-chunk LoRAs [K, L, r, d]   (the adapter's own size: grows with the document, nothing else does)
      │ combine_chunks (+ learned bias block, chunk scalers on A, bias scaler on A and B, zero padding)
      ▼
    Adapter A[m] [L, n_docs, (max_chunks+1)·r, d_in], B[m] [L, n_docs, (max_chunks+1)·r, d_out], scale = α

Encoder and perceiver activations exist for one group of chunks at a time, so peak memory is set by the chunk
length T and ``chunk_group``, not by the document length; only the per-chunk LoRAs (the output) scale with K.
Under ``grad`` (training) the map keeps every group's residuals for the backward pass — the Perceiver's 4H-wide
modality projection over L·T rows dominates them — unless ``remat_chunks``: then each group's hypernetwork is
rematerialised in the backward pass from the saved context-encoder features [G, L, T, H] (one more hypernetwork
forward; the frozen encoder is not re-run), so training memory per chunk is its features, not its activations.
Training on packed rows (``adapter_from_packed``): several chunks per encoder row (segment ids, positions restarting
per chunk), the same program with ``D2LHypernet.packed`` as the hypernetwork (each chunk's latents attend only to its
own segment), and the documents' first chunk rows passed to ``combine_chunks``; same adapters as padded chunk rows.
The whole computation is one jitted program per (shapes, configs): its XLA ``memory_analysis()`` is the peak
(see ``lowered``, bench/memory.py and ``bench/device_step.py --compile-only``).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from hyperlora_jax.config import ModelConfig
from hyperlora_jax.d2l.context import ContextBatch
from hyperlora_jax.d2l.ctx_encoder import encode, kept_layers
from hyperlora_jax.d2l.head import combine_chunks
from hyperlora_jax.d2l.hypernet import D2LHypernet, D2LHypernetConfig, bias_lora
from hyperlora_jax.lora import Adapter


def check_compatible(hyper_cfg: D2LHypernetConfig, base_cfg: ModelConfig, layer_idx: Optional[int] = None):
    """Raises ValueError when the hypernetwork does not fit the base model (layers, widths, targets)."""
    problems = []
    if hyper_cfg.n_layers != base_cfg.num_layers:
        problems.append(f"hypernetwork generates LoRAs for {hyper_cfg.n_layers} layers, the base model has "
                        f"{base_cfg.num_layers}")
    if hyper_cfg.perceiver.input_size != base_cfg.hidden_size:
        problems.append(f"hypernetwork reads {hyper_cfg.perceiver.input_size}-wide features, the base model's "
                        f"hidden size is {base_cfg.hidden_size}")
    shapes = base_cfg.projection_shapes()
    for m, di, do in zip(hyper_cfg.target_modules, hyper_cfg.d_in, hyper_cfg.d_out):
        if m not in shapes:
            problems.append(f"target module {m!r} is not a projection of the base model")
        elif shapes[m] != (di, do):
            problems.append(f"{m}: hypernetwork (d_in, d_out) = {(di, do)}, base model {shapes[m]}")
    if problems:
        raise ValueError("D2L hypernetwork and base model do not match: " + "; ".join(problems))
    kept_layers(base_cfg, hyper_cfg.ctx_encoder_type, layer_idx)  # validates layer_idx


FEATURES = "d2l_ctx_features"  # the checkpoint name under which remat_chunks saves the encoder's output


def _chunk_loras(hyper_params, hyper_cfg, base_params, base_cfg, ids, mask, layer_idx, dtype):
    feats = encode(base_params, base_cfg, ids, mask, encoder_type=hyper_cfg.ctx_encoder_type, layer_idx=layer_idx,
                   dtype=dtype)
    # the aggregator computes in the compute dtype (the reference's bf16 autocast); the head's LayerNorms return to
    # float32. Lossless: the encoder produced these features in that dtype.
    feats = checkpoint_name(feats.astype(dtype), FEATURES)
    return D2LHypernet(hyper_cfg).apply({"params": hyper_params}, feats, mask)


def _packed_chunk_loras(hyper_params, hyper_cfg, base_params, base_cfg, ids, seg, pos, n_slots, layer_idx, dtype):
    feats = encode(base_params, base_cfg, ids, seg, encoder_type=hyper_cfg.ctx_encoder_type, layer_idx=layer_idx,
                   dtype=dtype, positions=pos)
    feats = checkpoint_name(feats.astype(dtype), FEATURES)
    return D2LHypernet(hyper_cfg).apply({"params": hyper_params}, feats, seg, n_slots, method=D2LHypernet.packed)


def _program(hyper_params, base_params, ctx_ids, ctx_attn_mask, n_ctx_chunks, chunk_scalers, bias_scaler, *,
             hyper_cfg, base_cfg, layer_idx, max_chunks, chunk_group, dtype, remat_chunks=False, chunk_offsets=None,
             ctx_positions=None, n_slots=0):
    k, t = ctx_ids.shape
    g = chunk_group
    groups = (ctx_ids.reshape(k // g, g, t), ctx_attn_mask.reshape(k // g, g, t))
    if n_slots:  # packed rows: each row of a group yields n_slots chunk rows
        groups += (ctx_positions.reshape(k // g, g, t),)
        body = lambda x: _packed_chunk_loras(hyper_params, hyper_cfg, base_params, base_cfg, x[0], x[1], x[2],
                                             n_slots, layer_idx, dtype)
    else:
        body = lambda x: _chunk_loras(hyper_params, hyper_cfg, base_params, base_cfg, x[0], x[1], layer_idx, dtype)
    if remat_chunks:
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.save_only_these_names(FEATURES))
    A, B = jax.lax.map(body, groups)
    rows = k * max(n_slots, 1)
    flat = lambda d: {m: v.reshape((rows,) + v.shape[2:]) for m, v in d.items()}
    bA, bB = bias_lora(hyper_params, hyper_cfg)
    return combine_chunks(flat(A), flat(B), n_ctx_chunks, bA, bB, lora_alpha=hyper_cfg.alpha,
                          max_chunks=max_chunks, chunk_scalers=chunk_scalers, bias_scaler=bias_scaler,
                          chunk_offsets=chunk_offsets)


def adapter_from_packed(hyper_params, base_params, ctx_tokens, ctx_segment_ids, ctx_positions, n_chunks, *,
                        hyper_cfg: D2LHypernetConfig, base_cfg: ModelConfig, n_slots: int, max_chunks: int,
                        layer_idx: Optional[int] = None, row_group: int = 1, dtype=jnp.float32,
                        remat_chunks: bool = False) -> Adapter:
    """Traceable: the combined ``Adapter`` of documents whose chunks are packed several per row.

    ctx_tokens, ctx_segment_ids, ctx_positions: [P, C] rows of up to ``n_slots`` S chunks each (chunk s = segment
    s, positions restarting at 0 per chunk, 0 = padding); the documents of row p are its document slots
    n_chunks[p] [D] in order, document j owning the next n_chunks[p, j] segments (0 = an empty slot).
    Returns the adapter of the P·D document slots (row-major; empty slots get the bias block only), equal to
    ``adapter_from_chunks`` on the same documents padded one chunk per row: the encoder attends within segments and
    the perceiver's latents of chunk s attend only to its tokens (``D2LHypernet.packed``).
    row_group: packed rows per context-encoder + hypernetwork call (``lax.map`` over groups; P must divide by it).
    """
    p, c = ctx_tokens.shape
    n = jnp.asarray(n_chunks, jnp.int32)
    offsets = jnp.arange(p, dtype=jnp.int32)[:, None] * n_slots + jnp.cumsum(n, axis=1) - n  # [P, D]
    return _program(hyper_params, base_params, ctx_tokens, ctx_segment_ids, n.reshape(-1), None, None,
                    hyper_cfg=hyper_cfg, base_cfg=base_cfg, layer_idx=layer_idx, max_chunks=int(max_chunks),
                    chunk_group=int(row_group), dtype=dtype, remat_chunks=bool(remat_chunks),
                    chunk_offsets=offsets.reshape(-1), ctx_positions=ctx_positions, n_slots=int(n_slots))


def adapter_from_chunks(hyper_params, base_params, ctx_ids, ctx_attn_mask, n_ctx_chunks, chunk_scalers=None,
                        bias_scaler=None, *, hyper_cfg: D2LHypernetConfig, base_cfg: ModelConfig,
                        layer_idx: Optional[int] = None, max_chunks: int, chunk_group: int = 1, dtype=jnp.float32,
                        remat_chunks: bool = False, chunk_offsets=None) -> Adapter:
    """Traceable core of ``internalize`` (use inside ``jit`` / ``grad``; no host-side checks).

    ctx_ids, ctx_attn_mask: [K, T]; n_ctx_chunks: [n_docs] (may be traced); max_chunks: static rank budget.
    remat_chunks: under ``grad``, recompute each chunk group's hypernetwork in the backward pass from its saved
    encoder features (same values and gradients; less memory, one more hypernetwork forward).
    chunk_scalers: [K] or None; bias_scaler: scalar or None. K is padded internally to a multiple of chunk_group
    (filler rows hold one token and are never selected). chunk_offsets: [n_docs] first chunk row of each document
    (default consecutive; see ``combine_chunks``).
    """
    k = ctx_ids.shape[0]
    g = int(chunk_group)
    pad = -k % g
    if pad:
        t = ctx_ids.shape[1]
        ctx_ids = jnp.concatenate([ctx_ids, jnp.zeros((pad, t), ctx_ids.dtype)])
        ctx_attn_mask = jnp.concatenate([ctx_attn_mask, jnp.zeros((pad, t), ctx_attn_mask.dtype).at[:, 0].set(1)])
        if chunk_scalers is not None:
            chunk_scalers = jnp.concatenate([jnp.asarray(chunk_scalers), jnp.ones((pad,), jnp.float32)])
    return _program(hyper_params, base_params, ctx_ids, ctx_attn_mask, n_ctx_chunks, chunk_scalers, bias_scaler,
                    hyper_cfg=hyper_cfg, base_cfg=base_cfg, layer_idx=layer_idx, max_chunks=int(max_chunks),
                    chunk_group=g, dtype=dtype, remat_chunks=bool(remat_chunks), chunk_offsets=chunk_offsets)


_STATIC = ("hyper_cfg", "base_cfg", "layer_idx", "max_chunks", "chunk_group", "dtype", "remat_chunks")
_program_jit = jax.jit(_program, static_argnames=_STATIC)


def _prepare(hyper_cfg, base_cfg, ctx_ids, ctx_attn_mask, n_ctx_chunks, layer_idx, max_chunks, chunk_scalers,
             bias_scaler, chunk_group):
    check_compatible(hyper_cfg, base_cfg, layer_idx)
    ids = np.asarray(ctx_ids)
    mask = np.ones_like(ids) if ctx_attn_mask is None else np.asarray(ctx_attn_mask)
    n = np.asarray(n_ctx_chunks, np.int64).reshape(-1)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"ctx_ids and ctx_attn_mask must both be [K, T], got {ids.shape} and {mask.shape}")
    if n.size == 0 or (n < 1).any() or int(n.sum()) != ids.shape[0]:
        raise ValueError(f"n_ctx_chunks {n.tolist()} must be >= 1 per document and sum to the {ids.shape[0]} "
                         f"chunk rows")
    if (mask.sum(axis=1) == 0).any():
        raise ValueError("a chunk row has no tokens (ctx_attn_mask all zero)")
    if max_chunks is None:
        max_chunks = int(n.max())
    elif int(n.max()) > max_chunks:
        raise ValueError(f"a document has {int(n.max())} chunks > max_chunks={max_chunks}")
    g = int(chunk_group)
    if g < 1:
        raise ValueError(f"chunk_group must be >= 1, got {g}")
    k = ids.shape[0]
    pad = -k % g
    scal = np.ones((k,), np.float32) if chunk_scalers is None else np.asarray(chunk_scalers, np.float32)
    if scal.shape != (k,):
        raise ValueError(f"chunk_scalers must be [{k}] (one per chunk row), got {scal.shape}")
    if pad:  # filler rows (one token each, never selected by combine_chunks)
        ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), ids.dtype)])
        filler = np.zeros((pad, mask.shape[1]), mask.dtype)
        filler[:, 0] = 1
        mask = np.concatenate([mask, filler])
        scal = np.concatenate([scal, np.ones((pad,), np.float32)])
    bs = np.float32(1.0) if bias_scaler is None else np.float32(bias_scaler)
    args = (jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jnp.asarray(n, jnp.int32),
            jnp.asarray(scal), jnp.asarray(bs))
    return args, int(max_chunks), g


def internalize(hyper_params, hyper_cfg: D2LHypernetConfig, base_params, base_cfg: ModelConfig, ctx_ids,
                ctx_attn_mask, n_ctx_chunks, *, layer_idx: Optional[int] = None, max_chunks: Optional[int] = None,
                chunk_scalers=None, bias_scaler=None, chunk_group: int = 1, dtype=jnp.float32) -> Adapter:
    """Documents' chunks → one combined ``Adapter`` (row c = document c), jitted, chunks streamed.

    hyper_params / hyper_cfg: the D2L hypernetwork (its ``ctx_encoder_type`` selects the encoder).
    base_params / base_cfg: the full frozen base model (the context encoder is its truncated copy).
    ctx_ids, ctx_attn_mask: [K, T] right-padded chunk rows of all documents in order (``ContextBatch``);
      n_ctx_chunks: [n_docs], each >= 1, summing to K.
    layer_idx: early_exit layer (default L // 4; ignored for per_layer_activations).
    max_chunks: rank budget (default max(n_ctx_chunks)); the rank is (max_chunks + 1)·r.
    chunk_scalers: [K] multipliers of the chunks' A; bias_scaler: multiplier of bias A and bias B.
    chunk_group: chunks encoded together per step (memory ∝ chunk_group · T; K is padded to a multiple).
    """
    args, mc, g = _prepare(hyper_cfg, base_cfg, ctx_ids, ctx_attn_mask, n_ctx_chunks, layer_idx, max_chunks,
                           chunk_scalers, bias_scaler, chunk_group)
    return _program_jit(hyper_params, base_params, *args, hyper_cfg=hyper_cfg, base_cfg=base_cfg,
                        layer_idx=layer_idx, max_chunks=mc, chunk_group=g, dtype=dtype)


def internalize_batch(hyper_params, hyper_cfg: D2LHypernetConfig, base_params, base_cfg: ModelConfig,
                      batch: ContextBatch, **kw) -> Adapter:
    """``internalize`` on a ``ContextBatch`` (from ``context.prepare_documents``)."""
    return internalize(hyper_params, hyper_cfg, base_params, base_cfg, batch.ctx_ids, batch.ctx_attn_mask,
                       batch.n_ctx_chunks, **kw)


def lowered(hyper_params, hyper_cfg: D2LHypernetConfig, base_params, base_cfg: ModelConfig, ctx_ids, ctx_attn_mask,
            n_ctx_chunks, *, layer_idx: Optional[int] = None, max_chunks: Optional[int] = None, chunk_scalers=None,
            bias_scaler=None, chunk_group: int = 1, dtype=jnp.float32):
    """The ``jax.stages.Lowered`` program ``internalize`` runs for these inputs (``.compile().memory_analysis()``
    gives its argument / output / temporary bytes)."""
    args, mc, g = _prepare(hyper_cfg, base_cfg, ctx_ids, ctx_attn_mask, n_ctx_chunks, layer_idx, max_chunks,
                           chunk_scalers, bias_scaler, chunk_group)
    return _program_jit.lower(hyper_params, base_params, *args, hyper_cfg=hyper_cfg, base_cfg=base_cfg,
                              layer_idx=layer_idx, max_chunks=mc, chunk_group=g, dtype=dtype)

