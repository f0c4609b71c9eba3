"""The D2L Perceiver aggregator (a modified Idefics2 perceiver) in flax.linen.

Structure (spec D2L.md section 4):

  context  [..., T, H_ctx]   (mask [..., T]: 1 = real token, 0 = padding, ignored everywhere)
    │ modality_projection: SwiGLU  down(silu(gate(x)) * up(x)),  H_ctx → f·H_ctx → d   (no biases)
    ▼
  projected [..., T, d]
    │ encoder resampler: ``n_latents`` learned latents (shared over the batch), ``num_blocks`` blocks of
    │   one cross-attention layer (+ ``num_self_attn_per_block`` self-attention layers), final RMSNorm
    ▼
  encoder latents [..., n_latents, d]
    │ decoder resampler: ``n_output_queries`` learned queries, one cross-attention layer over the encoder
    │   latents (no mask), final RMSNorm
    ▼
  output [..., n_output_queries, d]

A perceiver layer uses sandwich norms; queries come from the latents and keys/values from the (normalised) context
only — the latents are *not* concatenated to the keys::

  h   = lat + post_attention_layernorm(Attn(q=input_latents_layernorm(lat), kv=input_context_layernorm(ctx)))
  out = h + post_ff_layernorm(SwiGLU(pre_ff_layernorm(h)))            SwiGLU d → 4d → d

Attention: ``n_heads`` query heads and ``num_key_value_heads`` kv heads of ``head_dim`` each (GQA: query head h uses
kv head h // (n_heads / num_key_value_heads)), non-causal, scale 1/sqrt(head_dim), no positions, softmax in float32.
Padding is handled with a key mask (a masked softmax) instead of flash-attn's varlen packing; both give the same
result. A row whose mask is all zero yields zero attention output instead of NaN.

RMSNorm is the plain multiplicative form ``w * x * rsqrt(mean(x²) + eps)`` (statistics in float32), not Gemma's
``(1 + w)``.

Leading batch dimensions are arbitrary: the layer-to-layer ("per_layer_activations") mode simply passes features
``[chunks, L, T, H]`` with a mask broadcastable to ``[chunks, L, T]``; the same weights then process every layer.

Parameter tree (Flax kernels are ``[in, out]``, the transpose of torch's ``Linear.weight``)::

  modality_projection/{gate_proj,up_proj,down_proj}/kernel
  encoder/latents_q                                   [n_latents, d]
  encoder/layers_<i>/{input_latents_layernorm,input_context_layernorm,post_attention_layernorm,
                      pre_ff_layernorm,post_ff_layernorm}/scale            [d]
  encoder/layers_<i>/self_attn/{q_proj,k_proj,v_proj,o_proj}/kernel
  encoder/layers_<i>/mlp/{gate_proj,up_proj,down_proj}/kernel
  encoder/layernorm/scale
  decoder/...                                         same layout, one layer

``layers_<i>`` follow the reference's order: per block one cross-attention layer, then its self-attention layers
(self-attention layers have no ``input_context_layernorm``).

Intermediates (``mutable=["intermediates"]``): ``projected_context`` (modality projection output) [..., T, d], ``encoder_latents``
[..., n_latents, d], ``decoder_out`` [..., n_output_queries, d].
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperlora_jax.sharding import constrain

# torch.nn.Linear's default init: U(±1/sqrt(fan_in)).
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class PerceiverConfig:
    """Configuration of the D2L perceiver (defaults: the released Gemma-2 main configuration).

    input_size: width of the context-encoder features (H_ctx).
    hidden_size: latent width d (``latent_size``, 512).
    n_latents: encoder latents (``n_latent_queries``; 8 main, 208 NIAH).
    n_output_queries: decoder queries (n_mod·r in layer-to-layer mode, L·n_mod·r in early-exit mode).
    num_blocks: encoder blocks (each: one cross-attention layer + ``num_self_attn_per_block`` self-attention layers).
    intermediate_size_factor: modality projection width factor (H_ctx → factor·H_ctx → d). The layer MLPs are
      always d → 4d → d, as in the reference.
    precision: matmul precision passed to every dense / einsum (None = JAX default; "highest" for exact float32 on
      accelerators).
    """

    input_size: int
    hidden_size: int = 512
    n_latents: int = 8
    n_output_queries: int = 8
    num_blocks: int = 9
    num_self_attn_per_block: int = 0
    n_heads: int = 16
    head_dim: int = 128
    num_key_value_heads: int = 4
    intermediate_size_factor: int = 4
    mlp_factor: int = 4
    rms_norm_eps: float = 1e-6
    precision: Optional[str] = None

    def __post_init__(self):
        if self.n_heads % self.num_key_value_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of num_key_value_heads "
                             f"{self.num_key_value_heads}")
        if self.num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")

    @property
    def decoder(self) -> "PerceiverConfig":
        """The decoder resampler's view of the config (only the fields a resampler reads differ)."""
        return dataclasses.replace(self, n_latents=self.n_output_queries, num_blocks=1, num_self_attn_per_block=0)


class RMSNorm(nn.Module):
    """``scale * (x * rsqrt(mean(x², -1) + eps))`` with float32 statistics (Idefics2RMSNorm). x: [..., d]."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return scale.astype(x.dtype) * xf.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x, w, precision=None):
    """x [N, d_in] @ w [d_in, d_out] → [N, d_out], the same maths as ``x @ w`` under autodiff.

    Only the backward pass differs: the weight gradient xᵀ·g [d_in, d_out] is computed from an explicitly
    transposed copy of x [d_in, N] (an optimisation barrier keeps XLA from folding the transpose back into the
    dot). Autodiff's form contracts x's leading axis, which XLA:CPU does not hand to its fast (YNNPACK) matmul:
    ~1.6x slower for the Perceiver's modality projection, the largest matmuls of the D2L step.
    """
    return jnp.matmul(x, w, precision=precision)


def _matmul_fwd(x, w, precision):
    return jnp.matmul(x, w, precision=precision), (x, w)


def _matmul_bwd(precision, res, g):
    x, w = res
    dx = jnp.matmul(g, w.T, precision=precision)
    dw = jnp.matmul(jax.lax.optimization_barrier(x.T), g, precision=precision)
    return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


class _Linear(nn.Module):
    """Bias-free ``nn.Dense`` on 2-D input (same ``kernel`` [d_in, features] and init), computed in x's dtype
    (float32 master weights cast to it: the perceiver runs in the compute dtype); on CPU with ``_matmul``'s faster
    weight gradient (accelerators keep autodiff's form: no extra transposed copy of x). x [N, d_in] → [N, features]."""

    features: int
    precision: Optional[str] = None

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", torch_linear_init, (x.shape[-1], self.features), jnp.float32)
        w = w.astype(x.dtype)
        if jax.default_backend() == "cpu":
            return _matmul(x, w, self.precision)
        return jnp.matmul(x, w, precision=self.precision)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``, bias-free: [..., d_in] → [..., out_size] via ``intermediate_size``."""

    intermediate_size: int
    out_size: int
    precision: Optional[str] = None

    @nn.compact
    def __call__(self, x):
        dense = lambda n, name: _Linear(n, self.precision, name=name)
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])  # 2-D matmuls: XLA:CPU's weight gradient of a 3-D Dense is ~2x slower
        h = nn.silu(dense(self.intermediate_size, "gate_proj")(x)) * dense(self.intermediate_size, "up_proj")(x)
        return dense(self.out_size, "down_proj")(h).reshape(*lead, self.out_size)


def masked_gqa_attention(q, k, v, mask=None, precision=None):
    """Non-causal grouped-query attention with an optional key mask.

    q: [B, Q, Hq, D]; k, v: [B, T, Hkv, D]; mask: [B, T] (a key mask, nonzero = attend), [B, Q, T] (per query:
    packed rows, where each query attends only to its own segment's keys) or None. Returns [B, Q, Hq, D].
    Query head h uses kv head h // (Hq // Hkv) (``repeat_kv`` grouping). Logits and softmax in float32.
    Rows with no valid key give zeros.
    """
    b, nq, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    qg = q.reshape(b, nq, hkv, g, d)
    logits = jnp.einsum("bqkgd,btkd->bkgqt", qg, k, precision=precision,
                        preferred_element_type=jnp.float32) * (1.0 / float(d) ** 0.5)
    if mask is not None:
        valid = (mask != 0)[:, None, None, None, :] if mask.ndim == 2 else (mask != 0)[:, None, None, :, :]
        logits = jnp.where(valid, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        # all-padding rows: zero output instead of a uniform average over garbage
        probs = jnp.where(valid, probs, 0.0)
    out = jnp.einsum("bkgqt,btkd->bqkgd", probs.astype(v.dtype), v, precision=precision)
    return out.reshape(b, nq, hq, d)


class HeadSumDense(nn.Module):
    """The attention output projection: x [..., H, D] → [..., out] with ``kernel [H·D, out]`` (a plain bias-free
    Dense on the flattened heads), computed as per-head products summed over heads. Same maths; on CPU it avoids
    XLA's long single-accumulator dot over H·D (2048) terms, which costs ~4x more float32 rounding error."""

    features: int
    precision: Optional[str] = None

    @nn.compact
    def __call__(self, x):
        h, d = x.shape[-2:]
        kernel = self.param("kernel", torch_linear_init, (h * d, self.features), jnp.float32)
        y = jnp.einsum("...hd,hde->...he", x, kernel.astype(x.dtype).reshape(h, d, self.features),
                       precision=self.precision)
        return jnp.sum(y, axis=-2)


class PerceiverAttention(nn.Module):
    """Cross-attention: queries from ``latents`` [B, Q, d], keys/values from ``context`` [B, T, d] only."""

    config: PerceiverConfig

    @nn.compact
    def __call__(self, latents, context, mask=None):
        c = self.config
        dense = lambda n, name: nn.Dense(n, use_bias=False, kernel_init=torch_linear_init, dtype=latents.dtype,
                                         precision=c.precision, name=name)  # computed in the latents' dtype
        b, nq, _ = latents.shape
        t = context.shape[1]
        q = dense(c.n_heads * c.head_dim, "q_proj")(latents).reshape(b, nq, c.n_heads, c.head_dim)
        flat = context.reshape(b * t, context.shape[-1])  # 2-D matmuls (see SwiGLU)
        k = dense(c.num_key_value_heads * c.head_dim, "k_proj")(flat).reshape(b, t, c.num_key_value_heads, c.head_dim)
        v = dense(c.num_key_value_heads * c.head_dim, "v_proj")(flat).reshape(b, t, c.num_key_value_heads, c.head_dim)
        out = masked_gqa_attention(q, k, v, mask, precision=c.precision)
        return HeadSumDense(c.hidden_size, c.precision, name="o_proj")(out)


class PerceiverLayer(nn.Module):
    """One sandwich-norm perceiver layer (cross-attention, or self-attention over the normed latents)."""

    config: PerceiverConfig
    is_cross_attn: bool = True

    @nn.compact
    def __call__(self, latents, context=None, mask=None):
        c = self.config
        norm = lambda name: RMSNorm(c.rms_norm_eps, name=name)
        residual = latents
        x = norm("input_latents_layernorm")(latents)
        if self.is_cross_attn:
            kv, kv_mask = norm("input_context_layernorm")(context), mask
        else:
            kv, kv_mask = x, None
        x = PerceiverAttention(c, name="self_attn")(x, kv, kv_mask)
        h = residual + norm("post_attention_layernorm")(x)
        x = SwiGLU(c.mlp_factor * c.hidden_size, c.hidden_size, c.precision, name="mlp")(norm("pre_ff_layernorm")(h))
        return h + norm("post_ff_layernorm")(x)


class PerceiverResampler(nn.Module):
    """``n_latents`` learned latents attend to ``context`` [B, T, d] (mask [B, T] or None) → [B, n_latents, d].

    Packed rows (``n_slots`` S > 0): ``mask`` is then the row's segment ids [B, T] (segment s = 1..S is one
    context, 0 = padding); the latents are repeated once per segment and copy s attends only to segment s's
    tokens, so the result [B, S·n_latents, d] (segment-major) equals the resampler run on each segment alone (an
    empty segment gives the all-padding result)."""

    config: PerceiverConfig

    @nn.compact
    def __call__(self, context, mask=None, n_slots: int = 0):
        c = self.config
        latents_q = self.param("latents_q", nn.initializers.normal(1.0), (c.n_latents, c.hidden_size), jnp.float32)
        n_q = c.n_latents * max(n_slots, 1)
        x = jnp.broadcast_to(jnp.tile(latents_q.astype(context.dtype), (max(n_slots, 1), 1)),
                             (context.shape[0], n_q, c.hidden_size))
        if n_slots:  # query j belongs to segment j // n_latents + 1
            q_seg = jnp.repeat(jnp.arange(1, n_slots + 1, dtype=jnp.int32), c.n_latents)
            mask = q_seg[None, :, None] == mask.astype(jnp.int32)[:, None, :]  # [B, S·n_latents, T]
        i = 0
        for _ in range(c.num_blocks):
            x = PerceiverLayer(c, True, name=f"layers_{i}")(x, context, mask)
            i += 1
            for _ in range(c.num_self_attn_per_block):
                x = PerceiverLayer(c, False, name=f"layers_{i}")(x)
                i += 1
        return RMSNorm(c.rms_norm_eps, name="layernorm")(x)


class Perceiver(nn.Module):
    """The D2L aggregator perceiver: modality projection → encoder resampler → decoder resampler.

    Computes in the context's dtype (parameters are float32 and cast; norm statistics, attention logits and
    softmax in float32): bfloat16 features give the reference's bf16 autocast of the aggregator.

    __call__(context [..., T, H_ctx], mask [..., T] (broadcastable) or None) → [..., n_output_queries, d].
    All leading dimensions are folded into one batch; each row (e.g. each (chunk, layer)) is independent.

    Packed rows (``n_slots`` S > 0): each row holds up to S contexts, ``mask`` is its segment ids [..., T]
    (s = 1..S, 0 = padding) → [..., S, n_output_queries, d], slot s-1 equal to the perceiver run on segment s
    alone (the modality projection is per token; the encoder's latents of segment s attend only to its tokens;
    the decoder runs per slot).

    Under an active mesh the output is constrained to logical axes (batch, None, ..., embed): the first leading
    dimension (chunk rows) is the batch, the latent width d is ``embed`` (see ``sharding.py``).
    """

    config: PerceiverConfig

    @nn.compact
    def __call__(self, context, mask=None, n_slots: int = 0):
        c = self.config
        lead, t = context.shape[:-2], context.shape[-2]
        x = context.reshape(-1, t, context.shape[-1])
        m = None
        if mask is not None:
            m = jnp.broadcast_to(mask, lead + (t,)).reshape(-1, t)
        elif n_slots:
            raise ValueError("packed perceiver rows (n_slots > 0) need their segment ids as mask")
        proj = SwiGLU(c.intermediate_size_factor * c.input_size, c.hidden_size, c.precision,
                      name="modality_projection")(x)
        self.sow("intermediates", "projected_context", proj.reshape(lead + proj.shape[1:]))
        lat = PerceiverResampler(c, name="encoder")(proj, m, n_slots)
        if n_slots:  # [N, S·n_latents, d] → one decoder row per slot
            lead = lead + (n_slots,)
            lat = lat.reshape(-1, c.n_latents, lat.shape[-1])
        self.sow("intermediates", "encoder_latents", lat.reshape(lead + lat.shape[1:]))
        out = PerceiverResampler(c.decoder, name="decoder")(lat, None)
        lead_axes = ("batch",) + (None,) * (len(lead) - 1) if lead else ()
        out = constrain(out.reshape(lead + out.shape[1:]), lead_axes + (None, "embed"))
        self.sow("intermediates", "decoder_out", out)
        return out
