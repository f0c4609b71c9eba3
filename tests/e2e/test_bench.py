"""Smoke of the bench/ scripts' building blocks (tiny sizes; no timings are asserted — they are machine-dependent)."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench"))


def test_memory_formulas_published_models():
    import memory
    rows = {(r["model"], r["tokens"]): r for r in memory.published_rows((1024, 8192))}
    g = rows[("gemma-2-2b", 1024)]
    # 26 layers x (K + V) x 4 kv heads x 256 x bf16 x 1024 tokens; adapter 26 x rank 16 x (9216 + 2304) x bf16
    assert g["kv_MiB"] * 2 ** 20 == 26 * 2 * 4 * 256 * 2 * 1024
    assert g["adapter_MiB"] * 2 ** 20 == 26 * 16 * (9216 + 2304) * 2 and g["rank"] == 16
    # gemma-2's sliding layers (window 4096) keep 4096 tokens with a ring buffer; a plain cache keeps them all
    g8 = rows[("gemma-2-2b", 8192)]
    assert g8["kv_MiB"] == pytest.approx(g8["kv_plain_MiB"] * (4096 + 8192) / (2 * 8192))
    assert rows[("Mistral-7B-Instruct-v0.2", 8192)]["kv_MiB"] == 32 * 2 * 8 * 128 * 2 * 8192 / 2 ** 20


def test_flop_accounting_matches_xla_count():
    import common as C
    from device_step import fwd_flops, xla_flops
    from hyperlora_jax.model import forward, init_params
    cfg = C.model_config(dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=192,
                              num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=64))
    # one layer: XLA's cost analysis counts the body of the layer scan once, whatever the trip count
    params = init_params(cfg, jax.random.PRNGKey(0))
    ids = jnp.zeros((2, 16), jnp.int32)
    xla = xla_flops(lambda p, t: forward(p, cfg, t)["logits"], params, ids)
    ours = fwd_flops(cfg, 16, cfg.num_layers, 16, rows=2)
    assert xla is not None and ours == pytest.approx(xla, rel=0.15)


def test_train_step_torch_matches_jax():
    """The PyTorch re-statement computes the JAX trainer step's loss on identical weights (step 1 and, after one
    clipped AdamW update, step 2)."""
    import train_step
    rows, s = train_step.run("smoke", steps=1)
    assert s["loss_abs_diff"] < 1e-4 and s["loss2_abs_diff"] < 1e-4
    assert s["loss2_jax"] != s["loss_jax"]  # the optimizer moved the hypernetwork
    assert np.isfinite(s["jax_over_torch"]) and len(rows) == 2


def test_device_step_compile_only_reports_buffer_assignment(tmp_path):
    """--compile-only builds the trainer's D2L step with abstract base weights and reads XLA's memory analysis."""
    import device_step
    out = device_step.main(["--small", "--compile-only", "--which", "d2l", "--out", str(tmp_path / "m.json")])
    (row,) = out["rows"]
    assert row["step"] == "D2L" and row["temp_GiB"] > 0 and row["argument_GiB"] > 0
    assert (tmp_path / "m.json").exists()
