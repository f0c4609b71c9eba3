"""Memory: a D2L adapter vs the KV cache of the same document, as the document grows; and the peak memory of
internalising a long document (streamed chunks) vs a one-chunk document.

    python bench/memory.py [--smoke] [--out FILE] [--no-peak] [--peak-chunks 64] [--peak-chunk-tokens 128]

Three tables:

1. **Published base models, computed from their real config.json** (gemma-2-2b, Mistral-7B-Instruct-v0.2,
   Qwen3-4B; ``tests/data/configs``), bf16, document lengths 1K..128K tokens. D2L with chunking (spec D2L.md 2.2 and
   7): chunks of 1024 tokens → K = ceil(n / 1024) chunks → one adapter of rank (K+1)·r (K chunk blocks + the learned
   bias block) on the published target module ``down_proj`` with r = 8:

       adapter bytes = L · (K+1)·r · (d_in + d_out) · 2          (A [L, R, d_in] and B [L, R, d_out], bf16)
       KV bytes      = Σ_layers 2 · kv_heads · head_dim · n_kept(layer) · 2      (K and V, bf16)

   n_kept = n for full-attention layers; gemma-2's sliding layers (every other one, window 4096) keep
   min(n, 4096) (a ring-buffer cache such as HF's HybridCache; a plain cache keeps n — both columns are printed).
   The chunk affixes (template tokens re-added to every chunk, ≤ 9 ids for gemma) are ignored here.
   Both grow linearly in n; the ratio settles at ≈ r·(d_in+d_out) / (1024 · 2·kv_heads·head_dim) per layer.

2. **Measured on the toy base** (``hyperlora_jax/assets/toy_base``, 3 layers, H = 96; hypernetwork of
   ``configs/d2l.py:toy`` with random weights; chunks of 64 tokens as that preset): the ``nbytes`` of the arrays
   ``internalize`` returns (A and B of every target module; float32 as computed, and the bf16 size) and of the
   ``KVCache`` arrays the generator allocates for the document held in context (float32 as the toy runs), for
   synthetic documents of growing length.

3. **Peak memory of internalisation** (formerly bench/d2l_memory.py): a document of ``--peak-chunks`` chunks vs a
   one-chunk document, same settings. ``internalize`` is one jitted XLA program per input shape (chunks streamed with
   ``lax.map``); each program is lowered and compiled and XLA's ``memory_analysis()`` gives the bytes of its
   arguments (base model + hypernetwork params + ids), outputs (the adapter) and temporaries (the buffer
   assignment's peak of everything else, including the stacked per-chunk LoRAs); peak = arguments + outputs +
   temporaries − aliased. This is XLA's static buffer assignment, i.e. the device memory the program needs. For
   contrast the non-streamed variant (all chunks encoded in one step, ``chunk_group = K``) is compiled (not run).
   Base preset "small" (llama, H = 256, 8 layers, d_ff 1024, V = 32000) with the "small" hypernetwork (latent 256,
   8 latents, 2 blocks), down_proj r = 8, random weights; ``--smoke`` uses the tiny preset and 4 chunks.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

PUBLISHED_CHUNK, PUBLISHED_R, PUBLISHED_TARGET = 1024, 8, "down_proj"
LENGTHS = (1024, 4096, 8192, 16384, 32768, 65536, 131072)
TOY_CHUNK = 64
TOY_LENGTHS = (64, 256, 1024, 4096)
SYNTH_AFFIXES = ((1, 2, 3, 4), (5, 6, 7, 8, 9))


# ----- 1. published models, computed ----------------------------------------------------------------------------

def kv_bytes(cfg, n: int, bytes_per: int = 2, ring_buffer: bool = True) -> int:
    per_tok_layer = 2 * cfg.num_kv_heads * cfg.head_dim * bytes_per
    total = 0
    for sliding in cfg.sliding_layers:
        kept = min(n, cfg.sliding_window) if (sliding and ring_buffer and cfg.sliding_window) else n
        total += per_tok_layer * kept
    return total


def adapter_bytes(cfg, n: int, chunk: int = PUBLISHED_CHUNK, r: int = PUBLISHED_R, module: str = PUBLISHED_TARGET,
                  bytes_per: int = 2) -> tuple[int, int]:
    k = max(1, math.ceil(n / chunk))
    d_in, d_out = cfg.projection_shapes()[module]
    rank = (k + 1) * r
    return cfg.num_layers * rank * (d_in + d_out) * bytes_per, rank


def published_rows(lengths=LENGTHS):
    rows = []
    for name in C.REAL_MODELS:
        cfg = C.real_config(name)
        for n in lengths:
            a, rank = adapter_bytes(cfg, n)
            kv = kv_bytes(cfg, n)
            kv_plain = kv_bytes(cfg, n, ring_buffer=False)
            rows.append({"model": name, "tokens": n, "chunks": max(1, math.ceil(n / PUBLISHED_CHUNK)), "rank": rank,
                         "adapter_MiB": C.mib(a), "kv_MiB": C.mib(kv), "kv_plain_MiB": C.mib(kv_plain),
                         "adapter_over_kv": a / kv, "kv_over_adapter": kv / a})
    return rows


# ----- 2. toy model, measured -----------------------------------------------------------------------------------

def toy_rows(lengths=TOY_LENGTHS, chunk: int = TOY_CHUNK):
    from hyperlora_jax.d2l.context import Affixes, chunk_ids, pad_chunks, padded_chunk_len
    from hyperlora_jax.d2l.hypernet import init_params as init_hyper
    from hyperlora_jax.d2l.internalize import internalize
    from hyperlora_jax.io.hf_load import load_model
    from hyperlora_jax.model import KVCache
    from hyperlora_jax.packaged import toy_base_dir

    bc, bp = load_model(toy_base_dir())
    hc = C.hyper_config(bc, "toy")
    hp = init_hyper(hc, jax.random.PRNGKey(1))
    aff = Affixes(*SYNTH_AFFIXES)
    rng = np.random.default_rng(0)
    rows = []
    for n in lengths:
        ids = rng.integers(10, bc.vocab_size, size=n).tolist()
        batch = pad_chunks([chunk_ids(ids, chunk, aff)], padded_chunk_len(chunk, aff))
        ad = internalize(hp, hc, bp, bc, batch.ctx_ids, batch.ctx_attn_mask, batch.n_ctx_chunks)
        jax.block_until_ready(ad)
        a32 = C.tree_bytes((ad.A, ad.B))
        a16 = sum(x.size * 2 for x in jax.tree_util.tree_leaves((ad.A, ad.B)))
        cache = KVCache.init(bc, 1, n, jnp.float32)  # what generation allocates for the document in context
        kv = cache.k.nbytes + cache.v.nbytes
        del cache
        rows.append({"model": "toy_base", "tokens": n, "chunks": int(batch.ctx_ids.shape[0]), "rank": ad.rank,
                     "adapter_KiB": a32 / 1024, "adapter_bf16_KiB": a16 / 1024, "kv_KiB": kv / 1024,
                     "adapter_over_kv": a32 / kv, "hypernet_MiB": C.mib(C.tree_bytes(hp)),
                     "base_MiB": C.mib(C.tree_bytes(bp))})
    return rows


# ----- 3. peak memory of internalisation (XLA memory_analysis) ----------------------------------------------------

def _peak_measure(name, hp, hc, bp, bc, batch, chunk_group=1, run=True):
    from hyperlora_jax.d2l.internalize import internalize, lowered
    args = (hp, hc, bp, bc, batch.ctx_ids, batch.ctx_attn_mask, batch.n_ctx_chunks)
    t0 = time.perf_counter()
    compiled = lowered(*args, chunk_group=chunk_group).compile()
    t_compile = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    arg, out, tmp = ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.temp_size_in_bytes
    alias = getattr(ma, "alias_size_in_bytes", 0)
    row = {"program": name, "chunks": int(batch.ctx_ids.shape[0]), "T": int(batch.ctx_ids.shape[1]),
           "args_MiB": C.mib(arg), "out_MiB": C.mib(out), "temp_MiB": C.mib(tmp),
           "peak_MiB": C.mib(arg + out + tmp - alias), "compile_s": t_compile, "run_s": None,
           "_params_in_args": arg - C.tree_bytes((batch.ctx_ids, batch.ctx_attn_mask))}
    adapter = None
    if run:
        t0 = time.perf_counter()
        adapter = internalize(*args, chunk_group=chunk_group)
        jax.block_until_ready(adapter)
        row["run_s"] = time.perf_counter() - t0
    return row, adapter


def peak_rows(preset: str, chunks: int, chunk_tokens: int, contrast: bool = True):
    from hyperlora_jax.d2l.context import Affixes, chunk_ids, pad_chunks, padded_chunk_len
    from hyperlora_jax.d2l.hypernet import init_params as init_hyper
    from hyperlora_jax.model import init_params as init_base

    bc = C.model_config(preset)
    hc = C.hyper_config(bc, preset, r=8 if preset == "small" else 2)
    bp = init_base(bc, jax.random.PRNGKey(0))
    hp = init_hyper(hc, jax.random.PRNGKey(1))
    aff = Affixes(*SYNTH_AFFIXES)
    rng = np.random.default_rng(0)
    c = chunk_tokens
    T = padded_chunk_len(c, aff)
    long_b = pad_chunks([chunk_ids(rng.integers(10, bc.vocab_size, size=chunks * c).tolist(), c, aff)], T)
    short_b = pad_chunks([chunk_ids(rng.integers(10, bc.vocab_size, size=c).tolist(), c, aff)], T)
    r1, _ = _peak_measure("one-chunk document", hp, hc, bp, bc, short_b)
    rk, adapter = _peak_measure(f"{chunks}-chunk document (streamed)", hp, hc, bp, bc, long_b)
    rows = [r1, rk]
    if contrast:
        ra, _ = _peak_measure(f"{chunks}-chunk, all chunks in one step", hp, hc, bp, bc, long_b,
                              chunk_group=long_b.ctx_ids.shape[0], run=False)
        rows.append(ra)
    full = C.tree_bytes((bp, hp))
    for r in rows:  # every parameter resident (jit drops unused ones such as the LM head from the arguments)
        r["resident_peak_MiB"] = C.mib(full) + r["peak_MiB"] - C.mib(r.pop("_params_in_args"))
    kv = 2 * bc.num_layers * bc.num_kv_heads * bc.head_dim * 4 * chunks * c
    summary = {"preset": preset, "chunk_tokens": c, "chunks": chunks,
               "peak_ratio_long_over_short": rk["peak_MiB"] / r1["peak_MiB"],
               "resident_ratio_long_over_short": rk["resident_peak_MiB"] / r1["resident_peak_MiB"],
               "temp_ratio_long_over_short": rk["temp_MiB"] / max(r1["temp_MiB"], 1e-9),
               "temp_ratio_all_at_once_over_short": (rows[2]["temp_MiB"] / max(r1["temp_MiB"], 1e-9)
                                                     if contrast else None),
               "adapter_MiB_fp32": C.mib(C.tree_bytes((adapter.A, adapter.B))), "adapter_rank": adapter.rank,
               "kv_MiB_fp32_same_document": C.mib(kv)}
    return rows, summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (for tests): 2 lengths, tiny peak preset")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-peak", action="store_true")
    ap.add_argument("--peak-chunks", type=int, default=64)
    ap.add_argument("--peak-chunk-tokens", type=int, default=128)
    ap.add_argument("--peak-preset", choices=("small", "tiny"), default="small")
    a = ap.parse_args(argv)
    if a.smoke:
        a.peak_chunks, a.peak_chunk_tokens, a.peak_preset = 4, 32, "tiny"
    print(f"backend {jax.default_backend()}; load {os.getloadavg()}")

    pub = published_rows(LENGTHS[:2] if a.smoke else LENGTHS)
    print(C.table(pub, [("model", "model", ""), ("tokens", "doc tokens", ","), ("chunks", "chunks", ""),
                        ("rank", "rank (K+1)·8", ""), ("adapter_MiB", "D2L adapter MiB", ",.1f"),
                        ("kv_MiB", "KV cache MiB", ",.1f"), ("kv_plain_MiB", "KV (no ring buffer) MiB", ",.1f"),
                        ("kv_over_adapter", "KV / adapter", ".1f")],
                  "1. published models, bf16, computed from config.json (down_proj r=8, chunks of 1024 tokens)"))

    toy = toy_rows(TOY_LENGTHS[:2] if a.smoke else TOY_LENGTHS)
    print(C.table(toy, [("tokens", "doc tokens", ","), ("chunks", "chunks", ""), ("rank", "rank", ""),
                        ("adapter_KiB", "adapter KiB (fp32, measured)", ",.1f"),
                        ("adapter_bf16_KiB", "adapter KiB (bf16)", ",.1f"),
                        ("kv_KiB", "KV cache KiB (fp32, measured)", ",.1f"),
                        ("adapter_over_kv", "adapter / KV", ".3f")],
                  f"2. toy base (measured nbytes; {toy[0]['base_MiB']:.2f} MiB base, "
                  f"{toy[0]['hypernet_MiB']:.2f} MiB hypernetwork; chunks of {TOY_CHUNK} tokens)"))

    peak, summary = None, None
    if not a.no_peak:
        peak, summary = peak_rows(a.peak_preset, a.peak_chunks, a.peak_chunk_tokens)
        print(C.table(peak, [("program", "internalize program", ""), ("chunks", "K", ""), ("T", "T", ""),
                             ("args_MiB", "args MiB", ".1f"), ("out_MiB", "out MiB", ".2f"),
                             ("temp_MiB", "temp MiB", ".1f"), ("peak_MiB", "peak MiB", ".1f"),
                             ("resident_peak_MiB", "all params resident MiB", ".1f"),
                             ("compile_s", "compile s", ".1f"), ("run_s", "run s", ".2f")],
                      f"3. peak memory of internalisation (XLA memory_analysis; preset {a.peak_preset})"))
        print(f"peak long/short = {summary['peak_ratio_long_over_short']:.3f}x (all params resident "
              f"{summary['resident_ratio_long_over_short']:.3f}x); temporaries {summary['temp_ratio_long_over_short']:.2f}x"
              + ("" if summary["temp_ratio_all_at_once_over_short"] is None else
                 f", non-streamed temporaries {summary['temp_ratio_all_at_once_over_short']:.1f}x")
              + f"; adapter {summary['adapter_MiB_fp32']:.2f} MiB (rank {summary['adapter_rank']}) vs KV cache "
              f"{summary['kv_MiB_fp32_same_document']:.2f} MiB (fp32) of the same document")
    payload = {"published": pub, "toy": toy, "peak": peak, "peak_summary": summary}
    payload["json"] = C.write_json("memory", a.out, dict(payload))
    return payload


if __name__ == "__main__":
    main()
