"""D2L internalisation memory: a document 64x the chunk length vs a one-chunk document, same settings.

    python bench/d2l_memory.py [--chunks 64] [--chunk-tokens 128] [--preset small]

Random weights (memory does not depend on values). Preset "small": a llama-family base of hidden 256, 8 layers,
d_ff 1024, vocab 32000; per_layer_activations hypernetwork (latent 256, 8 latents, 2 encoder blocks, 8x32 query
heads), target down_proj, r = 8. Documents are synthetic token ids chunked with ``context.chunk_ids`` (4 + 5
affix ids), so every chunk row is padded to chunk_tokens + 9.

How peak memory is measured: ``internalize`` is one jitted XLA program per input shape (chunks streamed with
``lax.map``). For each document the program is lowered and compiled and XLA's ``memory_analysis()`` gives the bytes
of its arguments (base model + hypernetwork params + ids), outputs (the adapter) and temporaries (the buffer
assignment's peak of everything else, including the stacked per-chunk LoRAs); peak = arguments + outputs +
temporaries - aliased. This is XLA's static buffer assignment, i.e. the device memory the program needs; host
Python objects are not counted. The program is then run once (timed). For contrast the script also compiles (does
not run) the non-streamed variant that encodes all chunks in one step (``chunk_group = K``).

KV-cache comparison: the cache of the same document held in context by the base model (float32, like the adapter):
2 x layers x kv_heads x head_dim x 4 bytes per token.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.config import ModelConfig
from hyperlora_jax.d2l.context import Affixes, chunk_ids, pad_chunks, padded_chunk_len
from hyperlora_jax.d2l.hypernet import D2LHypernetConfig, init_params as init_hyper
from hyperlora_jax.d2l.internalize import internalize, lowered
from hyperlora_jax.model import init_params as init_base

PRESETS = {
    "small": dict(base=dict(model_type="llama", vocab_size=32000, hidden_size=256, intermediate_size=1024,
                            num_layers=8, num_heads=4, num_kv_heads=2, head_dim=64, max_position_embeddings=4096),
                  hyper=dict(latent_size=256, n_latent_queries=8, num_blocks=2, n_heads=8, head_dim=32,
                             num_key_value_heads=2), r=8),
    "tiny": dict(base=dict(model_type="llama", vocab_size=320, hidden_size=48, intermediate_size=96, num_layers=3,
                           num_heads=2, num_kv_heads=1, head_dim=24, max_position_embeddings=4096),
                 hyper=dict(latent_size=12, n_latent_queries=4, num_blocks=1), r=2),
}
AFFIXES = Affixes([1, 2, 3, 4], [5, 6, 7, 8, 9])


def _mib(n: float) -> str:
    return f"{n / 2 ** 20:8.2f} MiB"


def _tree_bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)))


def measure(name, hp, hc, bp, bc, batch, chunk_group=1, run=True):
    args = (hp, hc, bp, bc, batch.ctx_ids, batch.ctx_attn_mask, batch.n_ctx_chunks)
    t0 = time.perf_counter()
    compiled = lowered(*args, chunk_group=chunk_group).compile()
    t_compile = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    arg, out, tmp = ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.temp_size_in_bytes
    alias = getattr(ma, "alias_size_in_bytes", 0)
    peak = arg + out + tmp - alias
    line = (f"{name:<34} K={batch.ctx_ids.shape[0]:3d} T={batch.ctx_ids.shape[1]}  args {_mib(arg)}  "
            f"out {_mib(out)}  temp {_mib(tmp)}  peak {_mib(peak)}  (compile {t_compile:.1f}s")
    adapter = None
    if run:
        t0 = time.perf_counter()
        adapter = internalize(*args, chunk_group=chunk_group)
        jax.block_until_ready(adapter)
        line += f", run {time.perf_counter() - t0:.1f}s"
    print(line + ")", flush=True)
    return peak, tmp, adapter, arg - _tree_bytes((batch.ctx_ids, batch.ctx_attn_mask))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--chunk-tokens", type=int, default=128)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--no-contrast", action="store_true", help="skip the non-streamed contrast compile")
    a = ap.parse_args()
    p = PRESETS[a.preset]
    bc = ModelConfig(**p["base"])
    shapes = bc.projection_shapes()
    hc = D2LHypernetConfig.create(feature_size=bc.hidden_size, n_layers=bc.num_layers, r=p["r"],
                                  d_in={"down_proj": shapes["down_proj"][0]},
                                  d_out={"down_proj": shapes["down_proj"][1]}, **p["hyper"])
    bp = init_base(bc, jax.random.PRNGKey(0))
    hp = init_hyper(hc, jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    c = a.chunk_tokens
    long_ids = rng.integers(10, bc.vocab_size, size=a.chunks * c).tolist()
    short_ids = rng.integers(10, bc.vocab_size, size=c).tolist()
    T = padded_chunk_len(c, AFFIXES)
    long_b = pad_chunks([chunk_ids(long_ids, c, AFFIXES)], T)
    short_b = pad_chunks([chunk_ids(short_ids, c, AFFIXES)], T)
    print(f"devices: {jax.devices()}  preset {a.preset}: base {bc.model_type} H={bc.hidden_size} L={bc.num_layers} "
          f"V={bc.vocab_size}; hypernet per_layer_activations latent {hc.latent_size}, r={hc.r}, down_proj")
    print(f"params: base {_mib(_tree_bytes(bp))}, hypernet {_mib(_tree_bytes(hp))} (fp32); chunk tokens {c} "
          f"(rows padded to {T}); long document {len(long_ids)} ids -> {long_b.ctx_ids.shape[0]} chunks, "
          f"short document {len(short_ids)} ids -> {short_b.ctx_ids.shape[0]} chunk")
    print("peak = XLA compiled memory_analysis(): arguments + outputs + temporaries - aliased, of the one program "
          "internalize runs")
    p1, t1, _, a1 = measure("one-chunk document", hp, hc, bp, bc, short_b)
    pk, tk, adapter, ak = measure(f"{a.chunks}-chunk document (streamed)", hp, hc, bp, bc, long_b)
    if not a.no_contrast:
        _, tall, _, _ = measure(f"{a.chunks}-chunk, all chunks in one step", hp, hc, bp, bc, long_b,
                             chunk_group=long_b.ctx_ids.shape[0], run=False)
    adapter_bytes = _tree_bytes((adapter.A, adapter.B))
    n_tokens = int(long_b.ctx_attn_mask.sum())  # templated ids incl. re-added affixes
    kv_per_token = 2 * bc.num_layers * bc.num_kv_heads * bc.head_dim * 4
    full = _tree_bytes((bp, hp))
    r1, rk = full + p1 - a1, full + pk - ak  # all params resident (jit drops unused arguments such as the LM head)
    print(f"counting every parameter as resident ({_mib(full)}; jit drops unused ones such as the LM head from the "
          f"program's arguments): one-chunk {_mib(r1)}, {a.chunks}-chunk {_mib(rk)} -> {rk / r1:.3f}x")
    print(f"peak ratio long/short: {pk / p1:.3f}x (goal <= 1.5x); temporaries ratio {tk / max(t1, 1):.3f}x"
          + ("" if a.no_contrast else f"; non-streamed temporaries would be {tall / max(t1, 1):.1f}x"))
    print(f"adapter (rank {adapter.rank} = ({long_b.ctx_ids.shape[0]}+1)x{hc.r}, fp32): {_mib(adapter_bytes)}  vs  "
          f"KV cache of the {len(long_ids)}-token document in context (fp32, {kv_per_token} B/token): "
          f"{_mib(kv_per_token * len(long_ids))}  -> adapter/KV = {adapter_bytes / (kv_per_token * len(long_ids)):.3f}"
          f" (chunk tokens incl. affixes: {n_tokens})")


if __name__ == "__main__":
    main()
