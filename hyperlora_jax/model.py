"""The decoder: one pure-functional ``flax.linen`` transformer for llama, mistral, qwen3 and gemma2.

Family differences are ``ModelConfig`` fields (see ``config.py``). Layers are scanned over stacked weights
(``nn.scan``), so compile time does not grow with depth (models of at most ``UNROLL_MAX_LAYERS`` layers unroll
the scan: faster steps). Parameters mirror Hugging Face names, stacked over layers:

  embed_tokens/embedding                        [V, H]
  layers/input_layernorm/scale                  [L, H]
  layers/self_attn/{q,k,v,o}_proj/kernel        [L, d_in, d_out]   (HF ``weight`` transposed)
  layers/self_attn/{q,k}_norm/scale             [L, head_dim]      (qwen3)
  layers/post_attention_layernorm/scale         [L, H]
  layers/{pre,post}_feedforward_layernorm/scale [L, H]             (gemma2)
  layers/mlp/{gate,up,down}_proj/kernel         [L, d_in, d_out]
  norm/scale                                    [H]
  lm_head/kernel                                [H, V]             (absent when embeddings are tied)

Inputs are token ids [B, T] with ``positions`` [B, T] and ``segment_ids`` [B, T] (0 = padding). A token attends to
earlier-or-equal positions of its own segment, so left-padded, right-padded and packed batches all work. The
attention kernel (dense XLA, cuDNN, Pallas splash) is ``cfg.attention``; see ``attention.py``. LoRA adapters
enter as data (``lora.Adapter``, one per batch row). A KV cache (``KVCache``) turns the same forward into prefill and
decode steps. Under an active mesh (``sharding.with_mesh``) the hidden states after the embedding and after every
block, the adapter and the logits are constrained to their logical axes (``HIDDEN_AXES``, ``adapter_axes``,
(batch, seq, vocab)); without one the constraints are no-ops.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax import attention
from hyperlora_jax.config import ModelConfig, rope_inv_freq
from hyperlora_jax.lora import Adapter, check_adapter, lora_delta
from hyperlora_jax.sharding import adapter_axes, constrain

HIDDEN_AXES = ("batch", "seq", "embed")  # logical axes of the hidden states [B, T, H] (see sharding.py)

UNROLL_MAX_LAYERS = 8  # layer scans of at most this many layers are fully unrolled (see Decoder)
attention_masks = attention.attention_masks  # the dense [B, T, S] masks (re-exported)


def segment_positions(segment_ids):
    """Positions [B, T] int32 restarting at 0 at each segment's first token, from segment_ids [B, T] (0 = padding,
    segments contiguous). Padding repeats the previous token's position (0 before any segment), so on a 0/1 mask
    this is exactly max(cumsum(mask) - 1, 0)."""
    seg = jnp.asarray(segment_ids)
    nz = (seg != 0).astype(jnp.int32)
    count = jnp.cumsum(nz, axis=1)                                   # [B, T] non-padding tokens up to t
    prev = jnp.concatenate([jnp.zeros_like(seg[:, :1]), seg[:, :-1]], axis=1)
    start = (nz == 1) & (seg != prev)                                 # first token of a segment
    base = jax.lax.cummax(jnp.where(start, count - 1, 0), axis=1)     # non-padding tokens before that segment
    return jnp.maximum(count - 1 - base, 0).astype(jnp.int32)


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer, plus what each slot holds.

    k, v:       [L, B, S, kv_heads, head_dim]
    positions:  [B, S] int32   position of the token in each slot
    segments:   [B, S] int32   its segment id; 0 = empty slot or padding
    index:      []     int32   next slot to write (all rows share it: left-pad prompts)
    """

    k: jax.Array
    v: jax.Array
    positions: jax.Array
    segments: jax.Array
    index: jax.Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   positions=jnp.zeros((batch, max_len), jnp.int32),
                   segments=jnp.zeros((batch, max_len), jnp.int32), index=jnp.zeros((), jnp.int32))


# ----- small pieces -----------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """RMSNorm over the last axis, statistics in float32. ``offset`` = 1 gives Gemma's (1 + w) form."""

    eps: float
    offset: float = 0.0

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.offset else nn.initializers.ones
        w = self.param("scale", init, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.offset:  # gemma: scale in float32, then cast
            return (normed * (self.offset + w.astype(jnp.float32))).astype(x.dtype)
        return w.astype(x.dtype) * normed.astype(x.dtype)  # llama: cast, then scale


class Linear(nn.Module):
    """A bias-free projection ``x @ kernel`` [d_in, d_out] with an optional per-example LoRA term
    ``lora = (A, B, scale, dropout_rate)``: dropout (rng stream 'dropout') on the LoRA path's input only, as PEFT's
    ``lora_dropout``; the base path never sees it."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, lora=None):
        kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features), jnp.float32)
        y = jnp.einsum("btd,do->bto", x, kernel.astype(self.dtype))
        if lora is not None:
            a, b, scale, rate = lora
            x_lora = nn.Dropout(rate, deterministic=False)(x) if rate > 0 else x
            y = y + lora_delta(x_lora, a, b, scale)
        return y


def rope(x, positions, inv_freq):
    """Rotary embedding (HF "rotate half" convention). x: [B, T, heads, hd]; positions: [B, T]."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    cos, sin = jnp.cos(freqs)[:, :, None, :], jnp.sin(freqs)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# ----- one decoder layer ------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Projections, RoPE and the KV-cache write; the attention itself is ``attention.attend`` with the resolved
    ``kernel`` ('xla' | 'cudnn' | 'splash'). ``attn_ctx``: ``attention.prepare``'s dict; ``is_sliding``: [] bool."""

    cfg: ModelConfig
    dtype: Any = jnp.float32
    kernel: str = "xla"

    @nn.compact
    def __call__(self, x, positions, attn_ctx, is_sliding, inv_freq, lora, cache_kv=None, cache_index=None):
        cfg, (b, t, _) = self.cfg, x.shape
        hd, nq, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        proj = lambda name, n: Linear(n * hd, self.dtype, name=name)(x, _get(lora, name)).reshape(b, t, n, hd)
        q, k, v = proj("q_proj", nq), proj("k_proj", nkv), proj("v_proj", nkv)
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, name="k_norm")(k)
        q, k = rope(q, positions, inv_freq), rope(k, positions, inv_freq)
        new_kv = None
        if cache_kv is not None:  # write this step's keys/values into the cache, attend over the whole cache
            ck, cv = cache_kv
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
            new_kv = (k, v)
            k, v = k.astype(self.dtype), v.astype(self.dtype)
        out = attention.attend(self.kernel, cfg, q, k, v, attn_ctx, is_sliding, self.dtype)  # [B, T, nq * hd]
        return Linear(cfg.hidden_size, self.dtype, name="o_proj")(out, _get(lora, "o_proj")), new_kv


class MLP(nn.Module):
    cfg: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, lora):
        f = self.cfg.intermediate_size
        gate = Linear(f, self.dtype, name="gate_proj")(x, _get(lora, "gate_proj"))
        up = Linear(f, self.dtype, name="up_proj")(x, _get(lora, "up_proj"))
        act = jax.nn.silu(gate) if self.cfg.hidden_act == "silu" else jax.nn.gelu(gate, approximate=True)
        return Linear(self.cfg.hidden_size, self.dtype, name="down_proj")(act * up, _get(lora, "down_proj"))


def _get(lora, name):
    """(A, B, scale, dropout rate) of one projection from a one-layer adapter dict, or None."""
    if lora is None or name not in lora["A"]:
        return None
    return lora["A"][name], lora["B"][name], lora["scale"], lora["dropout"]


class DecoderLayer(nn.Module):
    """One block. Called under ``nn.scan``: (carry=hidden, per-layer xs, broadcast shared) -> (hidden, ys)."""

    cfg: ModelConfig
    dtype: Any = jnp.float32
    return_hidden: bool = False
    lora_dropout: float = 0.0
    kernel: str = "xla"  # the resolved attention kernel

    @nn.compact
    def __call__(self, h, xs, shared):
        cfg = self.cfg
        norm = functools.partial(RMSNorm, cfg.rms_norm_eps, cfg.norm_weight_offset)
        lora, is_sliding, cache_kv = xs["lora"], xs["sliding"], xs.get("cache")
        if lora is not None:
            lora = {**lora, "scale": shared["lora_scale"], "dropout": self.lora_dropout}
        layer_input = h
        attn_out, new_kv = Attention(cfg, self.dtype, self.kernel, name="self_attn")(
            norm(name="input_layernorm")(h), shared["positions"], shared["attn"], is_sliding, shared["inv_freq"],
            lora, cache_kv, shared.get("cache_index"))
        if cfg.sandwich_norms:
            h = h + norm(name="post_attention_layernorm")(attn_out)
            mlp_out = MLP(cfg, self.dtype, name="mlp")(norm(name="pre_feedforward_layernorm")(h), lora)
            h = h + norm(name="post_feedforward_layernorm")(mlp_out)
        else:
            h = h + attn_out
            h = h + MLP(cfg, self.dtype, name="mlp")(norm(name="post_attention_layernorm")(h), lora)
        ys = {"cache": new_kv, "hidden": layer_input if self.return_hidden else None}
        return constrain(h, HIDDEN_AXES), ys


# ----- the whole model --------------------------------------------------------------------------------------

class Decoder(nn.Module):
    """Causal LM. ``remat``: 'none' | 'full' | 'dots' (save matmul outputs) — rematerialisation of each layer.
    ``lora_dropout``: dropout rate on the input of every LoRA term (training; needs the 'dropout' rng).

    __call__(tokens [B, T] int, positions [B, T] = arange, segment_ids [B, T] = ones, adapter = None,
             cache = None, embeddings [B, T, H] = None (instead of tokens), return_hidden = False,
             logits_at [B, R] int = None)
      -> dict(logits [B, T, V] float32 (or [B, R, V]: only the positions ``logits_at`` names — the LM head, the
              largest matmul at real vocabularies, then runs on R rows instead of T), cache (when given),
              hidden [L, B, T, H] layer inputs (when asked), final_hidden [B, T, H] (after the final norm))
    """

    cfg: ModelConfig
    dtype: Any = jnp.float32
    remat: str = "none"
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, tokens=None, positions=None, segment_ids=None, adapter: Adapter | None = None,
                 cache: KVCache | None = None, embeddings=None, return_hidden: bool = False, logits_at=None):
        cfg = self.cfg
        embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=nn.initializers.normal(0.02),
                                param_dtype=jnp.float32, dtype=self.dtype, name="embed_tokens")
        if embeddings is None:
            x = embed_tokens(tokens)
            if cfg.embed_scale:  # gemma: × √H, rounded to the compute dtype as HF does
                x = x * jnp.asarray(cfg.hidden_size ** 0.5, self.dtype)
        else:
            x = embeddings.astype(self.dtype)
        x = constrain(x, HIDDEN_AXES)
        b, t = x.shape[:2]
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        positions, segment_ids = positions.astype(jnp.int32), segment_ids.astype(jnp.int32)
        shared: dict[str, Any] = {"positions": positions, "inv_freq": jnp.asarray(rope_inv_freq(cfg))}
        xs: dict[str, Any] = {"sliding": jnp.asarray(np.array(cfg.sliding_layers)), "lora": None}
        if adapter is not None:
            check_adapter(adapter, cfg.projection_shapes(), cfg.num_layers, b)
            axes = adapter_axes(adapter.A)
            xs["lora"] = {"A": constrain(dict(adapter.A), axes.A), "B": constrain(dict(adapter.B), axes.B)}
            shared["lora_scale"] = adapter.scale
        if cache is not None:
            k_pos = jax.lax.dynamic_update_slice(cache.positions, positions, (0, cache.index))
            k_seg = jax.lax.dynamic_update_slice(cache.segments, segment_ids, (0, cache.index))
            xs["cache"] = (cache.k, cache.v)
            shared["cache_index"] = cache.index
        else:
            k_pos, k_seg = positions, segment_ids
        kernel = attention.resolve(cfg, self.dtype, t, k_pos.shape[1], b, cached=cache is not None)
        shared["attn"] = attention.prepare(kernel, cfg, positions, segment_ids, k_pos, k_seg)

        layer = DecoderLayer
        if self.remat != "none":
            policy = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[self.remat]
            layer = nn.remat(DecoderLayer, prevent_cse=False, policy=policy)
        # shallow models: the scan fully unrolled (XLA then fuses across layers and skips the per-iteration weight
        # slices; ~7 % off the bench/train_step.py step on CPU); deep ones keep the loop (compile time)
        unroll = cfg.num_layers if cfg.num_layers <= UNROLL_MAX_LAYERS else 1
        layers = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                         in_axes=(0, nn.broadcast), length=cfg.num_layers, unroll=unroll)
        h, ys = layers(cfg, self.dtype, return_hidden, self.lora_dropout, kernel, name="layers")(x, xs, shared)

        h = RMSNorm(cfg.rms_norm_eps, cfg.norm_weight_offset, name="norm")(h)
        h_out = h if logits_at is None else jnp.take_along_axis(h, logits_at.astype(jnp.int32)[..., None], axis=1)
        if cfg.tie_word_embeddings:
            logits = embed_tokens.attend(h_out)
        else:
            logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                              kernel_init=nn.initializers.normal(0.02), name="lm_head")(h_out)
        logits = logits.astype(jnp.float32)
        if cfg.final_logit_softcap:
            logits = jnp.tanh(logits / cfg.final_logit_softcap) * cfg.final_logit_softcap
        logits = constrain(logits, ("batch", "seq", "vocab"))
        out = {"logits": logits, "final_hidden": h}
        if cache is not None:
            k, v = ys["cache"]
            out["cache"] = KVCache(k=k, v=v, positions=k_pos, segments=k_seg, index=cache.index + t)
        if return_hidden:
            out["hidden"] = ys["hidden"]
        return out


def init_params(cfg: ModelConfig, rng, dtype=jnp.float32):
    """Random parameters (float32 master copy) for ``cfg``; use under ``jax.eval_shape`` to get shapes only."""
    tokens = jnp.zeros((1, 1), jnp.int32)  # the parameters do not depend on the attention kernel
    return Decoder(cfg.replace(attention="xla"), dtype).init(rng, tokens)["params"]


def forward(params, cfg: ModelConfig, tokens, **kw):
    """Functional entry point: ``Decoder(cfg).apply({'params': params}, tokens, **kw)``.

    Accepts ``dtype`` (compute dtype), ``remat`` and ``lora_dropout`` (rate on the LoRA terms' input, with
    ``dropout_rng``) besides the Decoder call arguments.
    """
    dtype, remat = kw.pop("dtype", jnp.float32), kw.pop("remat", "none")
    rate, rng = float(kw.pop("lora_dropout", 0.0)), kw.pop("dropout_rng", None)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {rate}")
    if rate > 0 and rng is None:
        raise ValueError("lora_dropout > 0 needs dropout_rng")
    rngs = {"dropout": rng} if rate > 0 else None
    return Decoder(cfg, dtype, remat, rate).apply({"params": params}, tokens, rngs=rngs, **kw)


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
