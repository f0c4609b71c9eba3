"""D2L context encoder: features of the frozen base model for the hypernetwork (spec D2L.md section 3).

* ``per_layer_activations`` ("l2l"): a copy of the base model keeping its first L-1 layers. Features
  ``[K, L, T, H]``: entry l < L-1 is the *input* of layer l (entry 0 = the embedding output, Gemma's √H scale
  included); entry L-1 is ``final_norm(output of layer L-2)``. Layer l's LoRA is generated from entry l.
* ``early_exit``: a copy keeping the first ``layer_idx`` layers; features ``[K, T, H]`` =
  ``final_norm(output of layer layer_idx-1)``. ``layer_idx`` defaults to L // 4 in the reference.

The truncated model is the base model's own parameters sliced along the stacked layer axis with
``cfg.replace(num_layers=k)`` (no copy of the weights is kept: slicing happens inside the jitted program).
Chunks are right-padded; positions are 0..T-1 and padding gets segment id 0, so valid positions are exact and padded
positions are implementation-specific (the hypernetwork masks them).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from hyperlora_jax.config import FULL, ModelConfig
from hyperlora_jax.model import forward

CTX_ENCODER_TYPES = ("per_layer_activations", "early_exit")


def default_layer_idx(cfg: ModelConfig) -> int:
    """The reference's default early-exit layer: num_hidden_layers // 4."""
    return cfg.num_layers // 4


def kept_layers(cfg: ModelConfig, encoder_type: str, layer_idx: Optional[int] = None) -> int:
    """Number of decoder layers the encoder runs (L-1 for per_layer_activations, layer_idx for early_exit)."""
    if encoder_type == "per_layer_activations":
        if cfg.num_layers < 2:
            raise ValueError("per_layer_activations needs a base model with at least 2 layers")
        return cfg.num_layers - 1
    if encoder_type == "early_exit":
        k = default_layer_idx(cfg) if layer_idx is None else int(layer_idx)
        if not 1 <= k <= cfg.num_layers:
            raise ValueError(f"early_exit layer_idx must be in [1, {cfg.num_layers}] for this "
                             f"{cfg.num_layers}-layer model, got {k}")
        return k
    raise ValueError(f"ctx_encoder_type must be one of {CTX_ENCODER_TYPES}, got {encoder_type!r}")


def truncate(params, cfg: ModelConfig, num_layers: int):
    """(params, cfg) of the first ``num_layers`` layers: every ``params['layers']`` leaf sliced along axis 0."""
    if not 1 <= num_layers <= cfg.num_layers:
        raise ValueError(f"cannot keep {num_layers} of {cfg.num_layers} layers")
    layers = jax.tree_util.tree_map(lambda x: x[:num_layers], params["layers"])
    types = tuple(cfg.layer_types[:num_layers]) if cfg.layer_types else (FULL,) * num_layers
    return {**params, "layers": layers}, cfg.replace(num_layers=num_layers, layer_types=types)


def encode(params, cfg: ModelConfig, ctx_ids, ctx_attn_mask, *, encoder_type: str,
           layer_idx: Optional[int] = None, dtype=jnp.float32, positions=None):
    """Encoder features of right-padded chunks (or of packed rows).

    params, cfg: the *full* base model (truncated here). ctx_ids, ctx_attn_mask: [K, T]. Packed rows: pass
    ``positions`` [K, T] (restarting at 0 per chunk) and the rows' segment ids (chunk s = 1.., 0 = padding) as
    ctx_attn_mask; tokens attend only within their own chunk, so every token's features equal the unpacked ones.
    Returns [K, L, T, H] (per_layer_activations, L = cfg.num_layers) or [K, T, H] (early_exit), float32.
    Traceable (use inside jit; ``encoder_type`` / ``layer_idx`` must be static). Logits are computed by the shared
    forward but unused, so XLA drops them under jit.
    """
    k = kept_layers(cfg, encoder_type, layer_idx)
    tparams, tcfg = truncate(params, cfg, k)
    b, t = ctx_ids.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = jnp.asarray(ctx_attn_mask).astype(jnp.int32)
    out = forward(tparams, tcfg, ctx_ids, positions=positions, segment_ids=mask, dtype=dtype,
                  return_hidden=encoder_type == "per_layer_activations")
    final = out["final_hidden"].astype(jnp.float32)
    if encoder_type == "early_exit":
        return final
    hidden = out["hidden"].astype(jnp.float32)  # [L-1, K, T, H]: inputs of layers 0..L-2
    return jnp.swapaxes(jnp.concatenate([hidden, final[None]], axis=0), 0, 1)  # [K, L, T, H]


def encode_jit(params, cfg: ModelConfig, ctx_ids, ctx_attn_mask, *, encoder_type: str,
               layer_idx: Optional[int] = None, dtype=jnp.float32):
    """``encode`` compiled (cfg, encoder_type, layer_idx and dtype static)."""
    return _encode_jit(params, jnp.asarray(ctx_ids, jnp.int32), jnp.asarray(ctx_attn_mask, jnp.int32), cfg=cfg,
                       encoder_type=encoder_type, layer_idx=layer_idx, dtype=dtype)


_encode_jit = jax.jit(lambda params, ids, mask, *, cfg, encoder_type, layer_idx, dtype: encode(
    params, cfg, ids, mask, encoder_type=encoder_type, layer_idx=layer_idx, dtype=dtype),
    static_argnames=("cfg", "encoder_type", "layer_idx", "dtype"))
