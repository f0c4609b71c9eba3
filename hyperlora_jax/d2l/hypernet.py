"""The D2L hypernetwork: context-encoder features → per-chunk LoRAs → one combined ``Adapter`` per document.

Shapes (K = chunk rows of the whole batch, T = chunk length, H = encoder width, L = base-model layers,
M = target modules in sorted order, r = rank, d = latent width, n_docs = documents)::

  features   per_layer_activations ("l2l"): [K, L, T, H]     early_exit: [K, T, H]
  mask       ctx_attn_mask [K, T] (1 = token, 0 = padding) or None (all valid)
    │ Perceiver (shared over layers in l2l mode)
  lora_emb   [K, L, M, r, d]   (l2l: decoder query j of layer l = (module j // r, rank j % r);
    │                          early exit: query j = ((l·M + m)·r + k), layer-major)
    │ HyperLoRAHead
  per chunk  A[m] [K, L, r, d_in],  B[m] [K, L, r, d_out]
    │ combine_chunks (+ bias LoRA, zero padding)
  Adapter    A[m] [L, n_docs, (max_chunks+1)·r, d_in], B[m] [L, n_docs, (max_chunks+1)·r, d_out],
             scale [n_docs] = lora_alpha = 2·r^1.5 (applied directly)

Under an active mesh (``sharding.with_mesh``) lora_emb is constrained to ``LORA_EMB_AXES`` and the Adapter to
``sharding.adapter_axes`` (in ``combine_chunks``); the perceiver constrains its own output.

Everything is a pure function of ``(params, config, arrays)``; ``config`` is a frozen (hashable) dataclass. The
public functions jit themselves (config and max_chunks static); they also trace inside an outer ``jax.jit`` when
``config`` and ``max_chunks`` are static there.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.d2l.head import HyperLoRAHead, combine_chunks
from hyperlora_jax.d2l.perceiver import Perceiver, PerceiverConfig
from hyperlora_jax.lora import Adapter
from hyperlora_jax.sharding import constrain

LORA_EMB_AXES = ("batch", "layers", None, "rank", "embed")  # logical axes of lora_emb [K, L, M, r, d]

CTX_ENCODER_TYPES = ("per_layer_activations", "early_exit")


@dataclasses.dataclass(frozen=True)
class D2LHypernetConfig:
    """D2L hypernetwork configuration.

    perceiver: the aggregator's ``PerceiverConfig`` (its n_output_queries must be M·r for per_layer_activations
      and L·M·r for early_exit).
    ctx_encoder_type: "per_layer_activations" (layer-to-layer) or "early_exit".
    n_layers: number of base-model layers L receiving a LoRA (layer indices 0..L-1).
    r: LoRA rank per chunk.
    target_modules: module names, sorted (the reference orders modules by sorted name).
    d_in, d_out: per-module feature sizes, aligned with ``target_modules``.
    num_pre_head_layers: ResMLPBlockPerLayer count (1 in every released config; legacy checkpoints: 4).
    lora_alpha: the LoRA scale applied directly; None = 2·r^1.5.
    """

    perceiver: PerceiverConfig
    ctx_encoder_type: str
    n_layers: int
    r: int
    target_modules: tuple
    d_in: tuple
    d_out: tuple
    num_pre_head_layers: int = 1
    lora_alpha: Optional[float] = None

    def __post_init__(self):
        for f in ("target_modules", "d_in", "d_out"):  # keep the config hashable (a jit static argument)
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if self.ctx_encoder_type not in CTX_ENCODER_TYPES:
            raise ValueError(f"ctx_encoder_type must be one of {CTX_ENCODER_TYPES}, got {self.ctx_encoder_type!r}")
        if tuple(self.target_modules) != tuple(sorted(self.target_modules)):
            raise ValueError(f"target_modules must be sorted, got {self.target_modules}")
        if not (len(self.target_modules) == len(self.d_in) == len(self.d_out)) or not self.target_modules:
            raise ValueError("target_modules, d_in and d_out must be non-empty and of equal length")
        want = self.n_queries_per_layer * (1 if self.layer_to_layer else self.n_layers)
        if self.perceiver.n_output_queries != want:
            raise ValueError(f"perceiver.n_output_queries is {self.perceiver.n_output_queries}, expected {want} "
                             f"for {self.ctx_encoder_type}")

    @classmethod
    def create(cls, *, feature_size: int, n_layers: int, r: int, d_in: Mapping[str, int],
               d_out: Mapping[str, int], ctx_encoder_type: str = "per_layer_activations", latent_size: int = 512,
               n_latent_queries: int = 8, num_blocks: int = 9, num_self_attn_per_block: int = 0,
               num_pre_head_layers: int = 1, lora_alpha: Optional[float] = None, **perceiver_kwargs
               ) -> "D2LHypernetConfig":
        """Builds a config from reference-style arguments (module dicts; n_output_queries derived)."""
        mods = tuple(sorted(d_in))
        if set(d_out) != set(mods):
            raise ValueError(f"d_in and d_out name different modules: {sorted(d_in)} vs {sorted(d_out)}")
        per_layer = len(mods) * r
        n_out = per_layer if ctx_encoder_type == "per_layer_activations" else n_layers * per_layer
        pc = PerceiverConfig(input_size=feature_size, hidden_size=latent_size, n_latents=n_latent_queries,
                             n_output_queries=n_out, num_blocks=num_blocks,
                             num_self_attn_per_block=num_self_attn_per_block, **perceiver_kwargs)
        return cls(perceiver=pc, ctx_encoder_type=ctx_encoder_type, n_layers=n_layers, r=r, target_modules=mods,
                   d_in=tuple(int(d_in[m]) for m in mods), d_out=tuple(int(d_out[m]) for m in mods),
                   num_pre_head_layers=num_pre_head_layers, lora_alpha=lora_alpha)

    @property
    def layer_to_layer(self) -> bool:
        return self.ctx_encoder_type == "per_layer_activations"

    @property
    def n_modules(self) -> int:
        return len(self.target_modules)

    @property
    def n_queries_per_layer(self) -> int:
        return self.n_modules * self.r

    @property
    def latent_size(self) -> int:
        return self.perceiver.hidden_size

    @property
    def d_lora(self) -> int:
        return max(i + o for i, o in zip(self.d_in, self.d_out))

    @property
    def alpha(self) -> float:
        """The scale applied directly to (x Aᵀ) B: lora_alpha, default 2·r^1.5."""
        return float(self.lora_alpha) if self.lora_alpha is not None else 2.0 * self.r ** 1.5


def _head(config: D2LHypernetConfig) -> HyperLoRAHead:
    return HyperLoRAHead(n_layers=config.n_layers, r=config.r, target_modules=tuple(config.target_modules),
                         d_in=tuple(config.d_in), d_out=tuple(config.d_out), latent_size=config.latent_size,
                         num_pre_head_layers=config.num_pre_head_layers, precision=config.perceiver.precision)


class D2LHypernet(nn.Module):
    """Perceiver + HyperLoRA head. Params: ``{"perceiver": ..., "head": ...}``.

    __call__(features, mask) → (A {m: [K, L, r, d_in]}, B {m: [K, L, r, d_out]}) per chunk; also sows
    ``aggregator_out`` [K, L, M, r, d] (plus the perceiver's and head's own intermediates).
    """

    config: D2LHypernetConfig

    def setup(self):
        self.perceiver = Perceiver(self.config.perceiver)
        self.head = _head(self.config)

    def aggregate(self, features, mask=None):
        """features [K, L, T, H] (l2l) or [K, T, H] (early exit); mask [K, T] → lora_emb [K, L, M, r, d]."""
        c = self.config
        if c.layer_to_layer:
            out = self.perceiver(features, None if mask is None else mask[:, None, :])  # [K, L, M·r, d]
        else:
            out = self.perceiver(features, mask)  # [K, L·M·r, d]
        emb = constrain(out.reshape(features.shape[0], c.n_layers, c.n_modules, c.r, out.shape[-1]), LORA_EMB_AXES)
        self.sow("intermediates", "aggregator_out", emb)
        return emb

    def __call__(self, features, mask=None):
        return self.head(self.aggregate(features, mask))

    def packed(self, features, segment_ids, n_slots: int):
        """Packed context rows: features [P, L, C, H] (l2l) or [P, C, H] (early exit) of P rows holding up to
        ``n_slots`` S contexts each (segment_ids [P, C]: s = 1..S, 0 = padding) → per-chunk (A, B) with P·S chunk
        rows in (row, slot) order, each equal to ``__call__`` on that segment alone (empty slots: garbage rows
        that the caller does not select)."""
        c = self.config
        if c.layer_to_layer:
            out = self.perceiver(features, segment_ids[:, None, :], n_slots)  # [P, L, S, M·r, d]
            out = jnp.swapaxes(out, 1, 2)
        else:
            out = self.perceiver(features, segment_ids, n_slots)  # [P, S, L·M·r, d]
        emb = out.reshape(features.shape[0] * n_slots, c.n_layers, c.n_modules, c.r, out.shape[-1])
        emb = constrain(emb, LORA_EMB_AXES)
        self.sow("intermediates", "aggregator_out", emb)
        return self.head(emb)

    def bias_lora(self):
        return self.head.bias_lora()

    def init_all(self, features, mask=None):
        """Touches every parameter (the bias LoRA is not used by ``__call__``); for ``init``."""
        return self(features, mask), self.bias_lora()


def init_params(config: D2LHypernetConfig, rng: jax.Array) -> dict:
    """Fresh parameters (spec section 6 initialisation), as the plain nested dict ``{"perceiver", "head"}``."""
    c = config
    feats = (jnp.zeros((1, c.n_layers, 1, c.perceiver.input_size)) if c.layer_to_layer
             else jnp.zeros((1, 1, c.perceiver.input_size)))
    init = jax.jit(lambda key: D2LHypernet(c).init(key, feats, jnp.ones((1, 1), jnp.int32),
                                                   method=D2LHypernet.init_all)["params"])
    return _to_dict(init(rng))


def _to_dict(tree):
    if isinstance(tree, Mapping):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree


def _check_features(config: D2LHypernetConfig, features, mask):
    want_ndim = 4 if config.layer_to_layer else 3
    if features.ndim != want_ndim or features.shape[-1] != config.perceiver.input_size or (
            config.layer_to_layer and features.shape[1] != config.n_layers):
        layout = "[K, L, T, H]" if config.layer_to_layer else "[K, T, H]"
        raise ValueError(f"{config.ctx_encoder_type} features must be {layout} with L={config.n_layers}, "
                         f"H={config.perceiver.input_size}; got {tuple(features.shape)}")
    if mask is not None and (mask.ndim != 2 or mask.shape[0] != features.shape[0]
                             or mask.shape[1] != features.shape[-2]):
        raise ValueError(f"ctx_attn_mask must be [K, T] = {(features.shape[0], features.shape[-2])}, "
                         f"got {tuple(mask.shape)}")


@functools.partial(jax.jit, static_argnames=("config", "layer_loop"))
def _chunk_loras(params, config, features, ctx_attn_mask, layer_loop):
    if not (layer_loop and config.layer_to_layer):
        return D2LHypernet(config).apply({"params": params}, features, ctx_attn_mask)
    perceiver = Perceiver(config.perceiver)
    per_layer = jax.lax.map(lambda f: perceiver.apply({"params": params["perceiver"]}, f, ctx_attn_mask),
                            jnp.swapaxes(features, 0, 1))  # [L, K, M·r, d]
    emb = jnp.swapaxes(per_layer, 0, 1).reshape(features.shape[0], config.n_layers, config.n_modules, config.r, -1)
    return _head(config).apply({"params": params["head"]}, emb)


def generate_chunk_loras(params, config: D2LHypernetConfig, features, ctx_attn_mask=None, *,
                         layer_loop: bool = False):
    """Per-chunk LoRAs.

    features: [K, L, T, H] (per_layer_activations) or [K, T, H] (early_exit); ctx_attn_mask: [K, T] or None.
    layer_loop: l2l only — run the shared perceiver one layer at a time (``lax.map``) instead of folding all L
      layers into the batch; same result, activation memory / L (the reference's "iterative mode").
    Returns (A {m: [K, L, r, d_in]}, B {m: [K, L, r, d_out]}) — B in the [r, d_out] layout.
    """
    _check_features(config, features, ctx_attn_mask)
    return _chunk_loras(params, config, features, ctx_attn_mask, layer_loop)


def bias_lora(params, config: D2LHypernetConfig):
    """The learned bias LoRA: (bias_A {m: [L, r, d_in]}, bias_B {m: [L, r, d_out]})."""
    return _head(config).apply({"params": params["head"]}, method=HyperLoRAHead.bias_lora)


@functools.partial(jax.jit, static_argnames=("config", "max_chunks", "layer_loop"))
def _adapter(params, config, features, ctx_attn_mask, n_ctx_chunks, chunk_scalers, bias_scaler, max_chunks,
             layer_loop):
    A, B = _chunk_loras(params, config, features, ctx_attn_mask, layer_loop)
    bA, bB = _head(config).apply({"params": params["head"]}, method=HyperLoRAHead.bias_lora)
    return combine_chunks(A, B, n_ctx_chunks, bA, bB, lora_alpha=config.alpha, max_chunks=max_chunks,
                          chunk_scalers=chunk_scalers, bias_scaler=bias_scaler)


def generate_adapter(params, config: D2LHypernetConfig, features, ctx_attn_mask, n_ctx_chunks, *,
                     max_chunks: Optional[int] = None, chunk_scalers=None, bias_scaler=None,
                     layer_loop: bool = False) -> Adapter:
    """features → per-chunk LoRAs → combined ``Adapter`` (one row per document); jitted internally.

    features / ctx_attn_mask: as ``generate_chunk_loras`` (rows = all chunks of all documents, in order).
    n_ctx_chunks: [n_docs] chunk count per document. max_chunks: static rank budget (default max(n_ctx_chunks);
      pass it when n_ctx_chunks is traced, or to keep one compiled shape across batches).
    chunk_scalers: [K] on A only (default 1). bias_scaler: scalar on bias A and bias B (default 1).
    Returns Adapter A[m] [L, n_docs, (max_chunks+1)·r, d_in], B[m] [L, n_docs, (max_chunks+1)·r, d_out],
    scale [n_docs] = config.alpha.
    """
    _check_features(config, features, ctx_attn_mask)
    if max_chunks is None:
        try:
            max_chunks = int(np.max(np.asarray(n_ctx_chunks)))
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError) as e:
            raise ValueError("generate_adapter: pass a static max_chunks when n_ctx_chunks is traced") from e
    k = features.shape[0]
    # neutral scalers keep one compiled graph for the scaled and unscaled calls (x * 1.0 is exact)
    chunk_scalers = jnp.ones((k,), jnp.float32) if chunk_scalers is None else jnp.asarray(chunk_scalers)
    bias_scaler = jnp.float32(1.0) if bias_scaler is None else jnp.asarray(bias_scaler, jnp.float32)
    return _adapter(params, config, features, ctx_attn_mask, jnp.asarray(n_ctx_chunks, jnp.int32), chunk_scalers,
                    bias_scaler, int(max_chunks), layer_loop)


@functools.partial(jax.jit, static_argnames=("config",))
def _intermediates(params, config, features, ctx_attn_mask):
    return D2LHypernet(config).apply({"params": params}, features, ctx_attn_mask, mutable=["intermediates"])


def hypernet_intermediates(params, config: D2LHypernetConfig, features, ctx_attn_mask=None) -> dict:
    """Debug / parity helper: every named intermediate of one forward pass, unwrapped to arrays.

    Keys: modality_projection, encoder_latents, decoder_out (perceiver, leading dims as the input),
    aggregator_out, resmlp_out, head_in, head_out, and A/<m>, B/<m> (per chunk).
    """
    _check_features(config, features, ctx_attn_mask)
    (A, B), state = _intermediates(params, config, features, ctx_attn_mask)
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        name = [getattr(p, "key", None) for p in path]
        name = [n for n in name if isinstance(n, str)][-1]
        out[{"projected_context": "modality_projection"}.get(name, name)] = leaf
    for m in A:
        out[f"A/{m}"], out[f"B/{m}"] = A[m], B[m]
    return out
