"""T2L adapter generation: N descriptions in one jitted call vs one call per description (after compilation).

    python bench/t2l_generation.py [--n 256] [--repeats 3] [--preset small]

Same hypernetwork config for both; task embeddings are random unit vectors x sqrt(E) (the encoder is not timed).
Presets (L variant, q_proj + v_proj, r = 8):
  small  latent 128 / head_in 512, E 1024, a 1B-class base (hidden 1024 -> q 1024, v 256, 16 layers)   (default)
  tiny   the golden fixture's sizes (latent 32, head 32, hidden 64, 2 layers)
Prints the per-adapter time of both ways and the ratio (one-at-a-time / batched; > 1 = batched is faster).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.t2l.hypernet import T2LConfig, generate_adapters, init_params

PRESETS = {
    "small": dict(variant="L", latent_size=128, head_in_size=512, task_emb_size=1024, r=8, lora_alpha=16.0,
                  target_modules=("q_proj", "v_proj"), in_features=(1024, 1024), out_features=(1024, 256),
                  n_layers=16),
    "tiny": dict(variant="L", latent_size=32, head_in_size=32, task_emb_size=32, r=8, lora_alpha=16.0,
                 target_modules=("q_proj", "v_proj"), in_features=(64, 64), out_features=(64, 32), n_layers=2),
}


def _block(adapter):
    jax.block_until_ready((adapter.A, adapter.B))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    args = ap.parse_args()
    cfg = T2LConfig(**PRESETS[args.preset])
    params = init_params(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    e = rng.standard_normal((args.n, cfg.task_emb_size)).astype(np.float32)
    emb = jnp.asarray(e / np.linalg.norm(e, axis=1, keepdims=True) * np.sqrt(cfg.task_emb_size))
    singles = [emb[i:i + 1] for i in range(args.n)]

    t0 = time.perf_counter()
    _block(generate_adapters(params, cfg, emb))          # compile both shapes first
    _block(generate_adapters(params, cfg, singles[0]))
    compile_s = time.perf_counter() - t0

    batched, single = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        _block(generate_adapters(params, cfg, emb))
        batched.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for s in singles:
            _block(generate_adapters(params, cfg, s))
        single.append(time.perf_counter() - t0)
    b, s = min(batched) / args.n, min(single) / args.n
    n_out = sum(cfg.r * (i + o) for i, o in zip(cfg.in_features, cfg.out_features)) * cfg.n_layers
    print(f"T2L-{cfg.variant} preset {args.preset}: latent {cfg.latent_size}, head_in {cfg.head_in_size}, "
          f"{cfg.n_layers} layers, modules {','.join(cfg.target_modules)}; {n_out / 1e6:.2f} M LoRA values per "
          f"adapter; backend {jax.default_backend()}; compile {compile_s:.1f} s")
    print(f"batched ({args.n} in one call):  {b * 1e3:8.3f} ms per adapter  ({min(batched):.3f} s per call)")
    print(f"one at a time ({args.n} calls):  {s * 1e3:8.3f} ms per adapter  ({min(single):.3f} s in all)")
    print(f"ratio one-at-a-time / batched: {s / b:.1f}x  ({'batched faster' if b < s else 'BATCHED NOT FASTER'})")


if __name__ == "__main__":
    main()
