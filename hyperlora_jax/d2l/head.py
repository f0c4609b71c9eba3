"""The D2L HyperLoRA head and the chunk combination (spec D2L.md sections 5-7).

Head (per chunk; K = chunks, L = layers, M = number of target modules, r = rank, d = latent width)::

  lora_emb [K, L, M, r, d]                                  (perceiver output, modules in sorted name order)
    │ num_pre_head_layers × ResMLPBlockPerLayer:  x + LN_out(Mix2_l(silu(Mix1_l(LN_in(x)))))
    │     LayerNorm eps 1e-5 (affine); Mix1_l: [L, d, 4d] + bias [L, 4d]; Mix2_l: [L, 4d, d] + bias [L, d]
    │ x / ||x||_2 over d                                     (no epsilon, as the reference)
    │ per-layer bias-free head: [L, M, d, d_lora]            d_lora = max_m(d_in[m] + d_out[m])
    ▼
  head_out [K, L, M, r, d_lora]; row = [A (d_in[m]) | B (d_out[m]) | zero pad]
    │ per module m:  A = head_out[:, :, m, :, :d_in] * scaler_A[m][l, k]
    │                B = head_out[:, :, m, :, d_in:d_in+d_out] * scaler_B[m][l, k]
    ▼
  A [K, L, r, d_in],  B [K, L, r, d_out]            (B is [r, d_out]: the transpose of PEFT's lora_B)

plus the learned context-independent bias LoRA ``bias_A[m]`` [L, r, d_in], ``bias_B[m]`` [L, r, d_out].

Parameter tree::

  layers_<i>/{ln_in,ln_out}/{scale,bias}      [d]
  layers_<i>/mix1/{kernel [L, d, 4d], bias [L, 4d]};  layers_<i>/mix2/{kernel [L, 4d, d], bias [L, d]}
  head/kernel                                 [L, M, d, d_lora]
  scaler_A/<m>, scaler_B/<m>                  [L, r]
  bias_A/<m> [L, r, d_in];  bias_B/<m> [L, r, d_out]

Initialisation (spec section 6): LayerNorm (1, 0); Mix weights U(±sqrt(3/fan_in)), biases U(±1/sqrt(fan_in));
head N(0, (0.5/sqrt(d + d_lora·r))²); scaler_A 1, scaler_B 0; bias_A N(0, (0.2/sqrt(d_in·r))²), bias_B 0.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.lora import Adapter
from hyperlora_jax.sharding import adapter_axes, constrain


def _uniform(bound):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class PerLayerMix(nn.Module):
    """EinMix ``... L M r d_in → ... L M r d_out`` with per-layer weights ``kernel [L, d_in, d_out]`` and
    ``bias [L, d_out]`` (einops init). x: [..., L, M, r, d_in] (the layer axis is the 4th from the end)."""

    n_layers: int
    features: int
    use_bias: bool = True
    precision: Optional[str] = None

    @nn.compact
    def __call__(self, x):
        d_in = x.shape[-1]
        kernel = self.param("kernel", _uniform((3.0 / d_in) ** 0.5), (self.n_layers, d_in, self.features))
        y = jnp.einsum("...lmrd,lde->...lmre", x, kernel.astype(x.dtype), precision=self.precision)
        if self.use_bias:
            bias = self.param("bias", _uniform((1.0 / d_in) ** 0.5), (self.n_layers, self.features))
            y = y + bias.astype(x.dtype)[:, None, None, :]
        return y


class ResMLPBlockPerLayer(nn.Module):
    """``x + LN_out(Mix2(silu(Mix1(LN_in(x)))))`` with per-layer Mix weights. x: [..., L, M, r, d]."""

    n_layers: int
    hidden_factor: int = 4
    precision: Optional[str] = None

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        h = nn.LayerNorm(epsilon=1e-5, name="ln_in")(x)
        h = nn.silu(PerLayerMix(self.n_layers, self.hidden_factor * d, precision=self.precision, name="mix1")(h))
        h = PerLayerMix(self.n_layers, d, precision=self.precision, name="mix2")(h)
        return x + nn.LayerNorm(epsilon=1e-5, name="ln_out")(h)


class PerLayerHead(nn.Module):
    """Bias-free per-(layer, module) head: x [..., L, M, r, d] @ kernel [L, M, d, d_lora] → [..., L, M, r, d_lora]."""

    n_layers: int
    n_modules: int
    features: int
    init_std: float
    precision: Optional[str] = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.normal(self.init_std),
                            (self.n_layers, self.n_modules, x.shape[-1], self.features))
        return jnp.einsum("...lmrd,lmde->...lmre", x, kernel.astype(x.dtype), precision=self.precision)


class _PerModuleParams(nn.Module):
    """Holds one parameter per target module: ``{module: param}`` (keeps the tree ``name/<module>``)."""

    shapes: tuple  # ((module, shape), ...)
    init_kind: str  # "ones" | "zeros" | "normal:<std per module>"
    stds: tuple = ()

    @nn.compact
    def __call__(self):
        out = {}
        for i, (m, shape) in enumerate(self.shapes):
            if self.init_kind == "ones":
                init = nn.initializers.ones
            elif self.init_kind == "zeros":
                init = nn.initializers.zeros
            else:
                init = nn.initializers.normal(self.stds[i])
            out[m] = self.param(m, init, tuple(shape), jnp.float32)
        return out


class HyperLoRAHead(nn.Module):
    """From perceiver output to per-chunk LoRAs.

    __call__(lora_emb [K, L, M, r, d]) → (A {m: [K, L, r, d_in[m]]}, B {m: [K, L, r, d_out[m]]}).
    ``bias_lora()`` → (bias_A {m: [L, r, d_in]}, bias_B {m: [L, r, d_out]}).
    Intermediates: ``resmlp_out``, ``head_in`` [K, L, M, r, d]; ``head_out`` [K, L, M, r, d_lora].
    """

    n_layers: int
    r: int
    target_modules: tuple  # sorted
    d_in: tuple  # aligned with target_modules
    d_out: tuple
    latent_size: int = 512
    num_pre_head_layers: int = 1
    precision: Optional[str] = None

    @property
    def d_lora(self) -> int:
        return max(i + o for i, o in zip(self.d_in, self.d_out))

    def setup(self):
        L, r, M, d = self.n_layers, self.r, len(self.target_modules), self.latent_size
        self.layers = [ResMLPBlockPerLayer(L, precision=self.precision, name=f"layers_{i}")
                       for i in range(self.num_pre_head_layers)]
        self.head = PerLayerHead(L, M, self.d_lora, 0.5 / (d + self.d_lora * r) ** 0.5, self.precision,
                                 name="head")
        mods = self.target_modules
        self.scaler_A = _PerModuleParams(tuple((m, (L, r)) for m in mods), "ones", name="scaler_A")
        self.scaler_B = _PerModuleParams(tuple((m, (L, r)) for m in mods), "zeros", name="scaler_B")
        self.bias_A = _PerModuleParams(tuple((m, (L, r, di)) for m, di in zip(mods, self.d_in)), "normal",
                                       tuple(0.2 / (di * r) ** 0.5 for di in self.d_in), name="bias_A")
        self.bias_B = _PerModuleParams(tuple((m, (L, r, do)) for m, do in zip(mods, self.d_out)), "zeros",
                                       name="bias_B")

    def __call__(self, lora_emb):
        x = lora_emb
        for layer in self.layers:
            x = layer(x)
        self.sow("intermediates", "resmlp_out", x)
        x = x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))  # no epsilon (reference behaviour)
        self.sow("intermediates", "head_in", x)
        out = self.head(x)
        self.sow("intermediates", "head_out", out)
        sa, sb = self.scaler_A(), self.scaler_B()
        A, B = {}, {}
        for i, (m, di, do) in enumerate(zip(self.target_modules, self.d_in, self.d_out)):
            A[m] = out[..., i, :, :di] * sa[m].astype(out.dtype)[:, :, None]
            B[m] = out[..., i, :, di:di + do] * sb[m].astype(out.dtype)[:, :, None]
        return A, B

    def bias_lora(self):
        return self.bias_A(), self.bias_B()


def combine_chunks(
    per_chunk_A: Mapping[str, jax.Array],
    per_chunk_B: Mapping[str, jax.Array],
    n_ctx_chunks,
    bias_A: Optional[Mapping[str, jax.Array]],
    bias_B: Optional[Mapping[str, jax.Array]],
    *,
    lora_alpha: float,
    max_chunks: Optional[int] = None,
    chunk_scalers: Optional[jax.Array] = None,
    bias_scaler=None,
    chunk_offsets=None,
) -> Adapter:
    """Combines per-chunk LoRAs into one adapter per document (the reference's ``combine_lora``).

    per_chunk_A[m]: [K, L, r, d_in]; per_chunk_B[m]: [K, L, r, d_out] — the K chunk rows of all documents, in
      document order (document c owns ``n_ctx_chunks[c]`` consecutive rows).
    n_ctx_chunks: [n_docs] int (may be traced; every entry >= 0, summing to at most K).
    bias_A[m]: [L, r, d_in]; bias_B[m]: [L, r, d_out]; or None (the bias slot then stays zero).
    max_chunks: static rank budget; the output rank is R = (max_chunks + 1)·r. Defaults to max(n_ctx_chunks),
      which needs a concrete ``n_ctx_chunks``; pass it explicitly under ``jit``. Documents with more chunks than
      max_chunks are an error when checkable (concrete input).
    chunk_scalers: [K] multipliers of the chunks' A only (linear effect on ΔW), or None.
    bias_scaler: scalar multiplying both bias_A and bias_B (quadratic effect), default 1.
    chunk_offsets: [n_docs] first chunk row of each document (default: consecutive, cumsum of n_ctx_chunks); packed
      rows pass their own (a document's chunks are still consecutive rows, but unused slots lie between documents).

    Returns ``Adapter`` with A[m]: [L, n_docs, R, d_in], B[m]: [L, n_docs, R, d_out], scale = lora_alpha
    (applied directly, D2L: 2·r^1.5) for every row. Rank rows of document c: its chunks in order
    ``[0, n_c·r)``, then the bias block ``[n_c·r, (n_c+1)·r)``, then zeros. No averaging over chunks.
    Under an active mesh the result is constrained to ``sharding.adapter_axes``.
    """
    modules = tuple(per_chunk_A)
    first = per_chunk_A[modules[0]]
    K, L, r = first.shape[:3]
    n = jnp.asarray(n_ctx_chunks, jnp.int32)
    n_docs = n.shape[0]
    try:
        concrete = np.asarray(n_ctx_chunks)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        concrete = None  # traced under jit
    if max_chunks is None:
        if concrete is None:
            raise ValueError("combine_chunks: pass a static max_chunks when n_ctx_chunks is traced")
        max_chunks = int(concrete.max())
    elif concrete is not None and concrete.size and int(concrete.max()) > max_chunks:
        raise ValueError(f"combine_chunks: a document has {int(concrete.max())} chunks > max_chunks={max_chunks}")
    if concrete is not None and int(concrete.sum()) > K:
        raise ValueError(f"combine_chunks: n_ctx_chunks sums to {int(concrete.sum())} > {K} chunk rows")
    slots = max_chunks + 1
    offsets = jnp.cumsum(n) - n if chunk_offsets is None else jnp.asarray(chunk_offsets, jnp.int32)
    k = jnp.arange(slots)[None, :]
    # source rows: 0..K-1 chunks, K = bias block, K+1 = zeros
    idx = jnp.where(k < n[:, None], offsets[:, None] + k, jnp.where(k == n[:, None], K, K + 1))  # [n_docs, slots]
    bscale = 1.0 if bias_scaler is None else bias_scaler

    def build(chunks, bias, scalers):
        d = chunks.shape[-1]
        if scalers is not None:
            chunks = chunks * jnp.asarray(scalers, chunks.dtype)[:, None, None, None]
        b = jnp.zeros((L, r, d), chunks.dtype) if bias is None else bias.astype(chunks.dtype) * jnp.asarray(
            bscale, chunks.dtype)
        src = jnp.concatenate([chunks, b[None], jnp.zeros((1, L, r, d), chunks.dtype)], axis=0)  # [K+2, L, r, d]
        g = src[idx]  # [n_docs, slots, L, r, d]
        return jnp.transpose(g, (2, 0, 1, 3, 4)).reshape(L, n_docs, slots * r, d)

    A = {m: build(per_chunk_A[m], None if bias_A is None else bias_A[m], chunk_scalers) for m in modules}
    B = {m: build(per_chunk_B[m], None if bias_B is None else bias_B[m], None) for m in modules}
    scale = jnp.full((n_docs,), lora_alpha, jnp.float32)
    return constrain(Adapter(A, B, scale), adapter_axes(modules))
