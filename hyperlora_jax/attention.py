"""Attention kernels, chosen by ``ModelConfig.attention`` (``model.attention`` in a run config).

The decoder calls three functions: ``resolve`` (which kernel runs for this call), ``prepare`` (once per forward:
what the kernel needs to mask — dense masks or segment ids) and ``attend`` (per layer).

| attention | backend                | kernel                                      | masking it applies              |
|-----------|------------------------|---------------------------------------------|---------------------------------|
| xla       | any                    | dense softmax(QK^T)V, float32 logits, over  | everything: positions, segments,|
|           |                        | a materialised [B, T, S] boolean mask       | window, soft-cap, GQA, KV cache |
| cudnn     | CUDA GPU, bf16/fp16    | jax.nn.dot_product_attention(implementation | causal (is_causal); segments,   |
|           | compute                | ="cudnn"): cuDNN flash attention            | padding, window as a boolean    |
|           |                        |                                             | [B, 1, T, S] mask; GQA. No      |
|           |                        |                                             | soft-cap (ConfigError)          |
| splash    | TPU (elsewhere: Pallas | Pallas splash attention: the MQA kernel per | causal / window as block-sparse |
|           | interpret mode, slow)  | KV head, vmapped over KV heads and batch,   | CausalMask / LocalMask, segment |
|           |                        | shard_map over the batch (and KV heads under| ids, logit soft-cap, GQA        |
|           |                        | an active mesh) on several devices          |                                 |
| auto      | GPU: cudnn where it applies (bf16/fp16, no soft-cap, even lengths), TPU: splash where T, S are       |
|           | multiples of 128 (and the batch divides over the devices), otherwise xla                              |

A forward with a KV cache (prefill and decode) always runs ``xla``: its queries are a window of the cache, which the
fused kernels' index-causal masks do not describe.

Contract of the fused kernels: inside every segment, positions grow by one per sequence index (packed, left- and
right-padded batches built by this project do). They mask causality and the sliding window by sequence *index*, the
dense path by *position*; the two agree under that contract. Outputs at padding positions (segment 0) are unspecified
and differ between kernels (no real token attends to them).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from hyperlora_jax import sharding
from hyperlora_jax.config import ModelConfig

_NEG = -1e30  # added to masked attention logits (finite, so fully masked padding rows stay NaN-free)
SPLASH_BLOCKS = (512, 256, 128)  # splash tile sizes tried, largest first (its kernels need multiples of 128)
_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def attention_masks(cfg: ModelConfig, q_pos, q_seg, k_pos, k_seg):
    """Boolean masks [B, T, S] for full and sliding-window layers.

    A query sees a key iff both are in the same non-zero segment and the key's position is not later;
    sliding layers also need ``q_pos - k_pos < sliding_window``.
    """
    same = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    full = same & (delta >= 0)
    if cfg.sliding_window is None:
        return full, full
    return full, full & (delta < cfg.sliding_window)


# ----- which kernel ---------------------------------------------------------------------------------------------

def _cudnn_problem(cfg: ModelConfig, dtype, q_len: int, kv_len: int, backend: str) -> str | None:
    if backend != "gpu":
        return f"cuDNN attention needs a CUDA GPU (JAX backend is {backend})"
    if cfg.attn_logit_softcap:
        return "cuDNN attention has no logit soft-cap (attn_logit_softcapping)"
    if jnp.dtype(dtype) not in _HALF:
        return f"cuDNN flash attention needs bfloat16/float16 compute, got {jnp.dtype(dtype).name}"
    if cfg.head_dim > 256 or cfg.head_dim % 8:
        return f"cuDNN flash attention needs head_dim <= 256 and a multiple of 8, got {cfg.head_dim}"
    if q_len % 2 or kv_len % 2:
        return f"cuDNN attention with a mask needs even sequence lengths, got {q_len} queries, {kv_len} keys"
    return None


def _splash_problem(q_len: int, kv_len: int, batch: int) -> str | None:
    if q_len % SPLASH_BLOCKS[-1] or kv_len % SPLASH_BLOCKS[-1]:
        return (f"splash attention needs sequence lengths that are multiples of {SPLASH_BLOCKS[-1]}, got "
                f"{q_len} queries, {kv_len} keys (pad the batch)")
    mesh = sharding.active_mesh()
    if mesh is None:
        n, over = jax.device_count(), "devices"
    else:
        n, over = sharding.axes_size(mesh, sharding.LOGICAL_RULES["batch"]), "batch mesh axes"
    if n > 1 and batch % n:
        return f"splash attention shards the batch over the {n} {over}: batch {batch} is not a multiple"
    return None


def resolve(cfg: ModelConfig, dtype, q_len: int, kv_len: int, batch: int, cached: bool = False,
            backend: str | None = None) -> str:
    """The kernel ('xla' | 'cudnn' | 'splash') that runs for one forward; ValueError when the configured kernel
    cannot run it (``auto`` never raises: it falls back to xla)."""
    choice = cfg.attention
    if cached or choice == "xla":
        return "xla"
    backend = backend or jax.default_backend()
    if choice == "auto":
        if backend == "gpu" and _cudnn_problem(cfg, dtype, q_len, kv_len, backend) is None:
            return "cudnn"
        if backend == "tpu" and _splash_problem(q_len, kv_len, batch) is None:
            return "splash"
        return "xla"
    problem = (_cudnn_problem(cfg, dtype, q_len, kv_len, backend) if choice == "cudnn"
               else _splash_problem(q_len, kv_len, batch))
    if problem:
        raise ValueError(f"attention={choice!r}: {problem}; use attention='auto' or 'xla'")
    return choice


def prepare(kernel: str, cfg: ModelConfig, q_pos, q_seg, k_pos, k_seg) -> dict:
    """What ``attend`` needs, built once per forward: the dense masks [B, T, S] (xla, cudnn) or the segment ids
    [B, T] / [B, S] (splash: its masks are block-sparse and built from the sequence index)."""
    if kernel == "splash":
        return {"q_seg": q_seg, "k_seg": k_seg}
    full, sliding = attention_masks(cfg, q_pos, q_seg, k_pos, k_seg)
    return {"mask_full": full, "mask_sliding": sliding}


def attend(kernel: str, cfg: ModelConfig, q, k, v, ctx: dict, is_sliding, dtype):
    """Attention of one layer. q [B, T, nq, hd] (RoPE applied), k, v [B, S, nkv, hd]; ctx from ``prepare``;
    is_sliding: [] bool (traced under the layer scan). Returns [B, T, nq * hd] in ``dtype``."""
    if kernel == "splash":
        return splash_attention(cfg, q, k, v, ctx["q_seg"], ctx["k_seg"], is_sliding)
    mask = jnp.where(is_sliding, ctx["mask_sliding"], ctx["mask_full"])
    if kernel == "cudnn":
        return cudnn_attention(cfg, q, k, v, mask)
    return xla_attention(cfg, q, k, v, mask, dtype)


# ----- the kernels ----------------------------------------------------------------------------------------------

def xla_attention(cfg: ModelConfig, q, k, v, mask, dtype):
    """Dense attention: logits [B, kv_heads, group, T, S] in float32, soft-capped, masked, softmax, @ V.
    mask [B, T, S] bool. Returns [B, T, nq * hd]."""
    b, t, nq, hd = q.shape
    nkv = k.shape[2]
    q = q.reshape(b, t, nkv, nq // nkv, hd)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * cfg.attn_scale
    if cfg.attn_logit_softcap:
        logits = jnp.tanh(logits / cfg.attn_logit_softcap) * cfg.attn_logit_softcap
    logits = jnp.where(mask[:, None, None], logits, _NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, nq * hd)


def cudnn_attention(cfg: ModelConfig, q, k, v, mask, implementation: str = "cudnn"):
    """``jax.nn.dot_product_attention``: causal by index (cuDNN skips the upper triangle), segments, padding and the
    sliding window through the boolean mask [B, T, S] (broadcast over heads; JAX computes no bias gradient for a
    boolean mask). ``implementation='xla'`` runs the same call through JAX's reference (the CPU test of this
    path's mask construction). Returns [B, T, nq * hd]."""
    b, t, nq, hd = q.shape
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=cfg.attn_scale, is_causal=True,
                                       implementation=implementation)
    return out.reshape(b, t, nq * hd)


def _splash_blocks(q_len: int, kv_len: int):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    bq = next(s for s in SPLASH_BLOCKS if q_len % s == 0)
    bkv = next(s for s in SPLASH_BLOCKS if kv_len % s == 0)
    return sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                         block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)


def splash_mask(q_len: int, kv_len: int, group: int, window: int | None):
    """The block-sparse mask of one KV head's ``group`` query heads: causal, or causal within ``window`` keys
    (a query at index i sees keys i - window + 1 .. i)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
    shape = (q_len, kv_len)
    one = sm.CausalMask(shape) if window is None else sm.LocalMask(shape, (window - 1, 0), offset=0)
    return sm.MultiHeadMask([one] * group)


def splash_attention(cfg: ModelConfig, q, k, v, q_seg, k_seg, is_sliding):
    """Pallas splash attention (interpret mode off TPU). q [B, T, nq, hd], k, v [B, S, nkv, hd]; q_seg [B, T],
    k_seg [B, S] int (equal ids attend; 0 = padding, which then sees only padding). The MQA kernel runs per KV head
    on its ``nq / nkv`` query heads. Returns [B, T, nq * hd] in q's dtype."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    b, t, nq, hd = q.shape
    s, nkv = k.shape[1], k.shape[2]
    g = nq // nkv
    blocks, interpret = _splash_blocks(t, s), jax.default_backend() != "tpu"

    def kernel(window):
        return sk.make_splash_mqa(splash_mask(t, s, g, window), block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                  attn_logits_soft_cap=cfg.attn_logit_softcap, interpret=interpret)

    qh = (q * jnp.asarray(cfg.attn_scale, q.dtype)).reshape(b, t, nkv, g, hd).transpose(0, 2, 3, 1, 4)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, nkv, S, hd]
    ids = sk.SegmentIds(q=q_seg.astype(jnp.int32), kv=k_seg.astype(jnp.int32))

    def run(window):
        per_head = jax.vmap(kernel(window), in_axes=(0, 0, 0, None))  # over KV heads
        f = jax.vmap(per_head, in_axes=(0, 0, 0, sk.SegmentIds(0, 0)))  # over the batch
        mesh = sharding.active_mesh()
        # Mosaic kernels are not auto-partitioned: each device runs its share of the batch (and, under an active
        # mesh, of the KV heads: the logical axes (batch, kv_heads) of the rules table)
        if mesh is not None:
            spec = sharding.logical_to_spec(("batch", "kv_heads"), (b, nkv), mesh)
            rows = P(spec[0])
            f = jax.shard_map(f, in_specs=(spec, spec, spec, sk.SegmentIds(rows, rows)), out_specs=spec,
                              check_vma=False)
        elif jax.device_count() > 1:
            devices = Mesh(np.array(jax.devices()), ("batch",))
            f = jax.shard_map(f, mesh=devices, in_specs=P("batch"), out_specs=P("batch"), check_vma=False)
        return f(qh, kh, vh, ids)  # [B, nkv, g, T, hd]

    layer_kinds = set(cfg.sliding_layers) if cfg.sliding_window is not None else {False}
    if layer_kinds == {False}:
        out = run(None)
    elif layer_kinds == {True}:
        out = run(cfg.sliding_window)
    else:  # gemma2: alternating layers share one scanned body; the branch is picked at run time
        out = jax.lax.cond(is_sliding, lambda: run(cfg.sliding_window), lambda: run(None))
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, nq * hd)


def describe(cfg: ModelConfig, dtype, seq_len: int, batch: int = 1, backend: str | None = None) -> str:
    """One line naming the kernel a forward of ``seq_len`` tokens would run (bench / logs)."""
    try:
        return resolve(cfg, dtype, seq_len, seq_len, batch, backend=backend)
    except ValueError as e:
        return f"error: {e}"
