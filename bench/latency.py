"""Latency: D2L internalisation vs prefill of the same document, and T2L adapter generation vs 3-shot ICL prefill,
as the input grows. Compile time (first call) is reported apart from steady state (median of repeats, every call
blocked with ``block_until_ready``).

    python bench/latency.py [--smoke] [--out FILE] [--repeats 3] [--no-small]

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
        t_int = C.time_fn(lambda: internalize(hp, hc, bp, bc, batch.ctx_ids, batch.ctx_attn_mask,
                                              batch.n_ctx_chunks), repeats)
        jids = jnp.asarray(ids[None], jnp.int32)
        t_pre = C.time_fn(lambda: prefill(bp, jids, cfg=bc), repeats)
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
    t_gen = C.time_fn(lambda: (lambda ad: (ad.A, ad.B))(generate_adapters(tp, tc, emb)), max(repeats, 5))
    rng = np.random.default_rng(1)
    rows = []
    for s in shots:
        n = 3 * s + 32
        ids = jnp.asarray(rng.integers(10, bc.vocab_size, size=(1, n)), jnp.int32)
        t_pre = C.time_fn(lambda: prefill(bp, ids, cfg=bc), repeats)
        rows.append({"shot_tokens": s, "prompt_tokens": n, "t2l_generate_ms": 1e3 * t_gen["steady_s"],
                     "icl_prefill_ms": 1e3 * t_pre["steady_s"],
                     "icl_over_t2l": t_pre["steady_s"] / t_gen["steady_s"],
                     "t2l_compile_s": t_gen["first_s"] - t_gen["steady_s"],
                     "prefill_compile_s": t_pre["first_s"] - t_pre["steady_s"]})
        print(f"  3-shot s={s}: T2L {rows[-1]['t2l_generate_ms']:.2f} ms, ICL prefill "
              f"{rows[-1]['icl_prefill_ms']:.1f} ms", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="toy model, two short lengths, tiny T2L (for tests)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-small", action="store_true", help="skip the bigger random model")
    a = ap.parse_args(argv)
    from hyperlora_jax.hf_load import load_model
    from hyperlora_jax.model import init_params
    from hyperlora_jax.toy.assets import toy_base_dir
    print(f"backend {jax.default_backend()}; load {os.getloadavg()}", flush=True)

    tc, tp = load_model(toy_base_dir())
    toy_lengths = (64, 256) if a.smoke else (128, 512, 2048, 4096)
    d2l = d2l_rows("toy_base", tc, tp, "toy", 64, toy_lengths, 2 if a.smoke else a.repeats)
    if a.smoke:
        t2l = t2l_rows(tc, tp, (8,), 2, hyper=dict(latent_size=32, head_in_size=32, task_emb_size=32))
    else:
        sc = C.model_config("small")
        sp = init_params(sc, jax.random.PRNGKey(0))
        if not a.no_small:
            d2l += d2l_rows("small (random)", sc, sp, "small", 256, (256, 1024, 2048, 4096), a.repeats)
        t2l = t2l_rows(sc, sp, (32, 128, 512, 1024), a.repeats)

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
    payload = {"d2l": d2l, "t2l": t2l}
    payload["json"] = C.write_json("latency", a.out, dict(payload))
    return payload


if __name__ == "__main__":
    main()
