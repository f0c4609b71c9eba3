"""Latency: D2L internalisation vs prefill of the same document, and T2L adapter generation vs 3-shot ICL prefill,
as the input grows. Compile time (first call) is reported apart from steady state: after one first call of each, the two
programs of a row are called alternately ``--repeats`` times (every call blocked with ``block_until_ready``) and the
medians are reported, so each ratio is measured under the same machine load.

    python bench/latency.py [--smoke] [--out FILE] [--repeats 3] [--no-small] [--long]

1. **D2L** — for a document of n tokens (synthetic ids, batch 1):
   * *internalize*: ``d2l.internalize.internalize`` — the whole path: context encoder (the frozen base's first L-1
     layers) on chunks of c tokens (+ 9 affix ids), streamed one chunk at a time, the hypernetwork on every chunk,
     and the rank combination → the adapter;
   * *prefill*: the base model's forward over the n tokens writing a ``KVCache`` of n slots (what answering a
     question with the document in context costs before the first new token; the LM head is applied to the last
     position only).
   Models: the toy base (``hyperlora_jax/assets/toy_base``, 3 layers, H = 96, window 128; hypernetwork of
   ``configs/d2l.py:toy``, c = 64) and a bigger random "small" llama (H = 256, 8 layers, d_ff 1024, V = 32000;
   hypernetwork latent 256 / 8 latents / 2 blocks, c = 256). Both use random hypernetwork weights (time does not
   depend on values). Prefill grows ~quadratically (attention over n), internalisation linearly (K = n / c chunks
   of fixed cost).
2. **T2L** — one adapter from one task description (``t2l.hypernet.generate_adapters``, variant L, q_proj + v_proj
   of the "small" base, latent 128, head_in 512, task embedding 1024; the sentence encoder that embeds the
   description is NOT included) vs the prefill of a 3-shot in-context prompt (3 demonstrations of s tokens each + a
   32-token query) on the same base — the cost ICL pays on every request and T2L pays once per task.
3. **T2L batching** (formerly bench/t2l_generation.py) — ``--t2l-batch`` descriptions in one jitted call vs one call
   per description, per adapter (T2L-L, latent 128 / head_in 512, task embedding 1024, q_proj + v_proj of a
   1B-class base: hidden 1024, v 256, 16 layers).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hyperlora_jax.model import KVCache, forward  # noqa: E402

AFFIXES = ((1, 2, 3, 4), (5, 6, 7, 8, 9))


@functools.partial(jax.jit, static_argnames=("cfg",))
def prefill(params, ids, *, cfg):
    """Forward over ids [B, n] into a fresh n-slot KV cache; LM head on the last position only."""
    b, n = ids.shape
    cache = KVCache.init(cfg, b, n, jnp.float32)
    out = forward(params, cfg, ids, cache=cache)
    h = out["final_hidden"][:, -1]
    w = params["embed_tokens"]["embedding"].T if cfg.tie_word_embeddings else params["lm_head"]["kernel"]
    return out["cache"], h @ w


def d2l_rows(name, bc, bp, hyper, chunk, lengths, repeats):
    from hyperlora_jax.d2l.context import Affixes, chunk_ids, pad_chunks, padded_chunk_len
    from hyperlora_jax.d2l.hypernet import init_params as init_hyper
    from hyperlora_jax.d2l.internalize import internalize
    hc = C.hyper_config(bc, hyper)
    hp = init_hyper(hc, jax.random.PRNGKey(1))
    aff = Affixes(*AFFIXES)
    rng = np.random.default_rng(0)
    rows = []
    for n in lengths:
        ids = rng.integers(10, bc.vocab_size, size=n)
        batch = pad_chunks([chunk_ids(ids.tolist(), chunk, aff)], padded_chunk_len(chunk, aff))
        jids = jnp.asarray(ids[None], jnp.int32)
        t_int, t_pre = C.time_pair(lambda: internalize(hp, hc, bp, bc, batch.ctx_ids, batch.ctx_attn_mask,
                                                       batch.n_ctx_chunks),
                                   lambda: prefill(bp, jids, cfg=bc), repeats)
        rows.append({"model": name, "tokens": n, "chunks": int(batch.ctx_ids.shape[0]), "chunk_tokens": chunk,
                     "internalize_ms": 1e3 * t_int["steady_s"], "prefill_ms": 1e3 * t_pre["steady_s"],
                     "internalize_over_prefill": t_int["steady_s"] / t_pre["steady_s"],
                     "internalize_compile_s": t_int["first_s"] - t_int["steady_s"],
                     "prefill_compile_s": t_pre["first_s"] - t_pre["steady_s"]})
        print(f"  {name} n={n}: internalize {rows[-1]['internalize_ms']:.1f} ms, prefill "
              f"{rows[-1]['prefill_ms']:.1f} ms", flush=True)
    base0 = rows[0]
    for r in rows:  # scaling relative to the shortest document
        r["internalize_growth"] = r["internalize_ms"] / base0["internalize_ms"]
        r["prefill_growth"] = r["prefill_ms"] / base0["prefill_ms"]
    return rows


def t2l_rows(bc, bp, shots, repeats, hyper=None):
    from hyperlora_jax.t2l.hypernet import T2LConfig, generate_adapters, init_params
    shapes = bc.projection_shapes()
    mods = ("q_proj", "v_proj")
    hyper = hyper or dict(latent_size=128, head_in_size=512, task_emb_size=1024)
    tc = T2LConfig(variant="L", r=8, lora_alpha=16.0, target_modules=mods,
                   in_features=tuple(shapes[m][0] for m in mods), out_features=tuple(shapes[m][1] for m in mods),
                   n_layers=bc.num_layers, **hyper)
    tp = init_params(tc, jax.random.PRNGKey(0))
    e = np.random.default_rng(0).standard_normal((1, tc.task_emb_size)).astype(np.float32)
    emb = jnp.asarray(e / np.linalg.norm(e) * np.sqrt(tc.task_emb_size))
    gen = lambda: (lambda ad: (ad.A, ad.B))(generate_adapters(tp, tc, emb))
    rng = np.random.default_rng(1)
    rows = []
    for s in shots:
        n = 3 * s + 32
        ids = jnp.asarray(rng.integers(10, bc.vocab_size, size=(1, n)), jnp.int32)
        t_gen, t_pre = C.time_pair(gen, lambda: prefill(bp, ids, cfg=bc), max(repeats, 5))
        rows.append({"shot_tokens": s, "prompt_tokens": n, "t2l_generate_ms": 1e3 * t_gen["steady_s"],
                     "icl_prefill_ms": 1e3 * t_pre["steady_s"],
                     "icl_over_t2l": t_pre["steady_s"] / t_gen["steady_s"],
                     "t2l_compile_s": (t_gen["first_s"] - t_gen["steady_s"]) if not rows else None,  # compiled once
                     "prefill_compile_s": t_pre["first_s"] - t_pre["steady_s"]})
        print(f"  3-shot s={s}: T2L {rows[-1]['t2l_generate_ms']:.2f} ms, ICL prefill "
              f"{rows[-1]['icl_prefill_ms']:.1f} ms", flush=True)
    return rows


T2L_BATCH_PRESET = dict(variant="L", latent_size=128, head_in_size=512, task_emb_size=1024, r=8, lora_alpha=16.0,
                        target_modules=("q_proj", "v_proj"), in_features=(1024, 1024), out_features=(1024, 256),
                        n_layers=16)


def t2l_batch_rows(n_desc, repeats, preset=None):
    """N descriptions in one jitted call vs one call per description (formerly bench/t2l_generation.py)."""
    from hyperlora_jax.t2l.hypernet import T2LConfig, generate_adapters, init_params
    tc = T2LConfig(**(preset or T2L_BATCH_PRESET))
    tp = init_params(tc, jax.random.PRNGKey(0))
    e = np.random.default_rng(0).standard_normal((n_desc, tc.task_emb_size)).astype(np.float32)
    emb = jnp.asarray(e / np.linalg.norm(e, axis=1, keepdims=True) * np.sqrt(tc.task_emb_size))
    singles = [emb[i:i + 1] for i in range(n_desc)]
    ab = lambda ad: (ad.A, ad.B)
    batched = lambda: ab(generate_adapters(tp, tc, emb))
    one_by_one = lambda: [ab(generate_adapters(tp, tc, x)) for x in singles]
    t_b, t_s = C.time_pair(batched, one_by_one, repeats)
    n_out = sum(tc.r * (i + o) for i, o in zip(tc.in_features, tc.out_features)) * tc.n_layers
    row = {"descriptions": n_desc, "lora_values_per_adapter": n_out,
           "batched_ms_per_adapter": 1e3 * t_b["steady_s"] / n_desc,
           "single_ms_per_adapter": 1e3 * t_s["steady_s"] / n_desc,
           "single_over_batched": t_s["steady_s"] / t_b["steady_s"],
           "compile_s": t_b["first_s"] - t_b["steady_s"] + t_s["first_s"] - t_s["steady_s"]}
    print(f"  T2L batch of {n_desc}: {row['batched_ms_per_adapter']:.2f} ms/adapter batched, "
          f"{row['single_ms_per_adapter']:.2f} ms one at a time", flush=True)
    return [row]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="toy model, two short lengths, tiny T2L (for tests)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-small", action="store_true", help="skip the bigger random model")
    ap.add_argument("--t2l-batch", type=int, default=64, help="descriptions for table 3")
    ap.add_argument("--long", action="store_true", help="also 4096-token documents and 1024-token shots (slow)")
    a = ap.parse_args(argv)
    from hyperlora_jax.io.hf_load import load_model
    from hyperlora_jax.model import init_params
    from hyperlora_jax.packaged import toy_base_dir
    print(f"backend {jax.default_backend()}; load {os.getloadavg()}", flush=True)

    tc, tp = load_model(toy_base_dir())
    toy_lengths = (64, 256) if a.smoke else (128, 512, 2048) + ((4096,) if a.long else ())
    d2l = d2l_rows("toy_base", tc, tp, "toy", 64, toy_lengths, 2 if a.smoke else a.repeats)
    if a.smoke:
        t2l = t2l_rows(tc, tp, (8,), 2, hyper=dict(latent_size=32, head_in_size=32, task_emb_size=32))
        t2lb = t2l_batch_rows(8, 2, dict(T2L_BATCH_PRESET, latent_size=32, head_in_size=32, task_emb_size=32,
                                         in_features=(64, 64), out_features=(64, 32), n_layers=2))
    else:
        sc = C.model_config("small")
        sp = init_params(sc, jax.random.PRNGKey(0))
        if not a.no_small:
            d2l += d2l_rows("small (random)", sc, sp, "small", 256, (256, 1024, 2048) + ((4096,) if a.long else ()),
                            a.repeats)
        t2l = t2l_rows(sc, sp, (32, 128, 512) + ((1024,) if a.long else ()), a.repeats)
        t2lb = t2l_batch_rows(a.t2l_batch, a.repeats)

    print(C.table(d2l, [("model", "model", ""), ("tokens", "doc tokens", ","), ("chunks", "chunks", ""),
                        ("internalize_ms", "internalize ms", ",.1f"), ("prefill_ms", "prefill ms", ",.1f"),
                        ("internalize_over_prefill", "internalize / prefill", ".2f"),
                        ("internalize_growth", "internalize ×", ".1f"), ("prefill_growth", "prefill ×", ".1f"),
                        ("internalize_compile_s", "compile s (int.)", ".1f"),
                        ("prefill_compile_s", "compile s (prefill)", ".1f")],
                  "1. D2L internalisation vs prefill of the same document (steady state, batch 1; × = vs the "
                  "shortest document)"))
    print(C.table(t2l, [("shot_tokens", "tokens per shot", ","), ("prompt_tokens", "3-shot prompt tokens", ","),
                        ("t2l_generate_ms", "T2L adapter ms", ".2f"), ("icl_prefill_ms", "ICL prefill ms", ",.1f"),
                        ("icl_over_t2l", "ICL / T2L", ".1f"), ("t2l_compile_s", "compile s (T2L)", ".1f"),
                        ("prefill_compile_s", "compile s (prefill)", ".1f")],
                  "2. T2L adapter generation (one description, encoder excluded) vs 3-shot ICL prefill"))
    print(C.table(t2lb, [("descriptions", "descriptions", ""),
                         ("lora_values_per_adapter", "LoRA values / adapter", ","),
                         ("batched_ms_per_adapter", "batched ms / adapter", ".2f"),
                         ("single_ms_per_adapter", "one-at-a-time ms / adapter", ".2f"),
                         ("single_over_batched", "one-at-a-time / batched", ".1f"),
                         ("compile_s", "compile s (both)", ".1f")],
                  "3. T2L: N descriptions in one call vs one call per description (per adapter, steady state)"))
    payload = {"d2l": d2l, "t2l": t2l, "t2l_batch": t2lb}
    payload["json"] = C.write_json("latency", a.out, dict(payload))
    return payload


if __name__ == "__main__":
    main()
