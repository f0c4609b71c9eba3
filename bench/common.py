"""Shared pieces of the bench/ scripts: configs, byte counting, timing, tables and JSON output.

Every script prints a table and writes a JSON file (default ``bench/results/<script>.json``, or ``--out``) of the
form ``{"bench": name, "argv": [...], "machine": {...}, "rows": [...], ...}``; only ratios measured within one run
are meant to be compared (the machines are shared and noisy).
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from typing import Callable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
# the real config.json files of the published base models (shared with tests/unit/test_real_configs.py)
REAL_CONFIG_DIR = os.path.join(REPO, "tests", "data", "configs")
REAL_MODELS = ("gemma-2-2b", "Mistral-7B-Instruct-v0.2", "Qwen3-4B")

# llama-family bases for the CPU benches (random weights) and the D2L hypernetworks that go with them
BASES = {
    # the shape of d2l_memory's former "small" preset: hidden 256, 8 layers
    "small": dict(model_type="llama", vocab_size=32000, hidden_size=256, intermediate_size=1024, num_layers=8,
                  num_heads=4, num_kv_heads=2, head_dim=64, max_position_embeddings=4096),
    "tiny": dict(model_type="llama", vocab_size=320, hidden_size=48, intermediate_size=96, num_layers=3,
                 num_heads=2, num_kv_heads=1, head_dim=24, max_position_embeddings=4096),
}
HYPERS = {
    "small": dict(latent_size=256, n_latent_queries=8, num_blocks=2, n_heads=8, head_dim=32, num_key_value_heads=2),
    "tiny": dict(latent_size=12, n_latent_queries=4, num_blocks=1, n_heads=2, head_dim=8, num_key_value_heads=1),
    # configs/d2l.py:toy
    "toy": dict(latent_size=64, n_latent_queries=8, num_blocks=2, n_heads=4, head_dim=16, num_key_value_heads=2),
    # the released main configuration (spec D2L.md section 1)
    "main": dict(latent_size=512, n_latent_queries=8, num_blocks=9, n_heads=16, head_dim=128, num_key_value_heads=4),
}


def model_config(preset_or_dict):
    from hyperlora_jax.config import ModelConfig
    d = BASES[preset_or_dict] if isinstance(preset_or_dict, str) else preset_or_dict
    return ModelConfig(**d)


def real_config(name: str):
    """ModelConfig of a published base model from its real config.json."""
    from hyperlora_jax.config import ModelConfig
    with open(os.path.join(REAL_CONFIG_DIR, f"{name}.json")) as f:
        return ModelConfig.from_hf_dict(json.load(f))


def toy_config():
    from hyperlora_jax.config import ModelConfig
    from hyperlora_jax.packaged import toy_base_dir
    return ModelConfig.from_pretrained(toy_base_dir())


def hyper_config(base_cfg, hyper: str | dict = "small", r: int = 8, targets=("down_proj",),
                 ctx_encoder_type: str = "per_layer_activations"):
    """D2LHypernetConfig fitting ``base_cfg`` (per_layer_activations, the given targets, rank r)."""
    from hyperlora_jax.d2l.hypernet import D2LHypernetConfig
    shapes = base_cfg.projection_shapes()
    h = HYPERS[hyper] if isinstance(hyper, str) else hyper
    return D2LHypernetConfig.create(feature_size=base_cfg.hidden_size, n_layers=base_cfg.num_layers, r=r,
                                    d_in={m: shapes[m][0] for m in targets},
                                    d_out={m: shapes[m][1] for m in targets},
                                    ctx_encoder_type=ctx_encoder_type, **h)


def tree_bytes(tree) -> int:
    import jax
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)))


def mib(n: float) -> float:
    return n / 2 ** 20


def block(x):
    import jax
    return jax.block_until_ready(x)


def time_fn(fn: Callable, repeats: int = 3, min_time: float = 0.0) -> dict:
    """Calls ``fn()`` once (compile + first run, blocked), then ``repeats`` more times (at least ``min_time``
    seconds in all). Returns {"first_s", "steady_s" (median), "min_s", "n"}."""
    t0 = time.perf_counter()
    block(fn())
    first = time.perf_counter() - t0
    times = []
    t_start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - t_start < min_time and len(times) < 100):
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"first_s": first, "steady_s": times[len(times) // 2], "min_s": times[0], "n": len(times)}


def time_pair(fa: Callable, fb: Callable, repeats: int = 3) -> tuple[dict, dict]:
    """Like ``time_fn`` for two functions whose ratio is wanted: each is called once first (compile + first run),
    then ``repeats`` calls of each alternate (a b b a a b ...), so both see the same machine load; medians."""
    out = []
    for f in (fa, fb):
        t0 = time.perf_counter()
        block(f())
        out.append({"first_s": time.perf_counter() - t0, "times": []})
    for i in range(repeats):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            f = (fa, fb)[j]
            t0 = time.perf_counter()
            block(f())
            out[j]["times"].append(time.perf_counter() - t0)
    res = []
    for o in out:
        ts = sorted(o["times"])
        res.append({"first_s": o["first_s"], "steady_s": ts[len(ts) // 2], "min_s": ts[0], "n": len(ts)})
    return res[0], res[1]


def machine() -> dict:
    import jax
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"host": platform.node(), "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "devices": [d.device_kind for d in jax.devices()],
            "cpu_count": os.cpu_count(), "loadavg_at_start": load}


def table(rows: Sequence[dict], cols: Sequence[tuple], title: str | None = None) -> str:
    """Markdown table. cols: (key, header, format) with format a format spec ('.3f') or a callable."""
    def fmt(v, f):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        if callable(f):
            return f(v)
        return format(v, f) if f else str(v)
    lines = [] if title is None else [f"\n{title}"]
    lines.append("| " + " | ".join(h for _, h, _ in cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k), f) for k, _, f in cols) + " |")
    return "\n".join(lines)


def write_json(name: str, out: str | None, payload: dict) -> str:
    path = out or os.path.join(RESULTS, f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = {"bench": name, "argv": sys.argv[1:], "machine": machine(), **payload}
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=float)
    print(f"\nwrote {path}")
    return path
