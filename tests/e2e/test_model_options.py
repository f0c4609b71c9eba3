"""Loading straight into shardings (8 emulated devices), bfloat16 loading, and rematerialisation."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_tiny import make_tiny
from hyperlora_jax.io.hf_load import load_model
from hyperlora_jax.model import forward


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny("gemma2", str(tmp_path_factory.mktemp("opts") / "m"))


def test_load_into_shardings(model_dir):
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P, AxisType
        from hyperlora_jax.io.hf_load import load_model, abstract_params
        from hyperlora_jax.config import ModelConfig
        from hyperlora_jax.model import forward
        assert len(jax.devices()) == 8
        mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(AxisType.Auto,) * 2)
        cfg = ModelConfig.from_pretrained({model_dir!r})
        def spec(path, x):
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            if name.endswith("kernel") and x.shape[-1] % 4 == 0:
                return NamedSharding(mesh, P(*([None] * (len(x.shape) - 1)), "tensor"))
            return NamedSharding(mesh, P())
        shardings = jax.tree_util.tree_map_with_path(spec, abstract_params(cfg))
        _, sharded = load_model({model_dir!r}, shardings=shardings)
        q = sharded["layers"]["self_attn"]["q_proj"]["kernel"]
        assert q.sharding.spec == P(None, None, "tensor"), q.sharding
        assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape[-1] == q.shape[-1] // 4
        _, plain = load_model({model_dir!r})
        for a, b in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(plain)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12)))
        ids = jax.device_put(ids, NamedSharding(mesh, P("data")))
        got = jax.jit(lambda p, x: forward(p, cfg, x)["logits"])(sharded, ids)
        want = forward(plain, cfg, np.asarray(ids))["logits"]
        assert np.abs(np.asarray(got) - np.asarray(want)).max() < 1e-4
        print("OK")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-3000:]


def test_bfloat16_load_and_forward(model_dir):
    cfg, p32 = load_model(model_dir)
    _, p16 = load_model(model_dir, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(p16))
    ids = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (1, 16)))
    a = forward(p32, cfg, ids)["logits"]
    b = forward(p16, cfg, ids, dtype=jnp.bfloat16)["logits"]
    assert b.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(b)))
    # bf16 is not a parity target; it must still track float32 (softcapped logits, |logit| ≤ 3)
    assert float(jnp.abs(a - b).mean()) < 0.1


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_same_values_and_gradients(model_dir, remat):
    cfg, params = load_model(model_dir)
    ids = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 10)))

    def loss(p, remat):
        return forward(p, cfg, ids, remat=remat)["logits"].std()

    g0 = jax.grad(loss)(params, "none")
    g1 = jax.jit(jax.grad(loss), static_argnums=1)(params, remat)
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5


def test_hidden_states_are_layer_inputs(model_dir):
    cfg, params = load_model(model_dir)
    ids = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (1, 9)))
    out = forward(params, cfg, ids, return_hidden=True)
    assert out["hidden"].shape == (cfg.num_layers, 1, 9, cfg.hidden_size)
    emb = params["embed_tokens"]["embedding"][ids] * jnp.float32(cfg.hidden_size ** 0.5)
    assert np.abs(np.asarray(out["hidden"][0] - emb)).max() < 1e-6


def _random_adapter(cfg, batch, rank=4, seed=0):
    from hyperlora_jax.lora import Adapter
    rng = np.random.default_rng(seed)
    shapes = cfg.projection_shapes()
    mods = ("q_proj", "down_proj")
    A = {m: jnp.asarray(0.2 * rng.standard_normal((cfg.num_layers, batch, rank, shapes[m][0])), jnp.float32)
         for m in mods}
    B = {m: jnp.asarray(0.2 * rng.standard_normal((cfg.num_layers, batch, rank, shapes[m][1])), jnp.float32)
         for m in mods}
    return Adapter(A=A, B=B, scale=jnp.full((batch,), 2.0, jnp.float32))


def test_lora_dropout_on_the_lora_input_only(model_dir):
    """lora_dropout (T2L's LoRA-input dropout): a function of the rng; no effect when the LoRA term is zero (the
    base path never sees it); refused without an rng or with a rate outside [0, 1)."""
    import dataclasses
    cfg, params = load_model(model_dir)
    ids = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 7)))
    ad = _random_adapter(cfg, 2)
    run = lambda a, rate, key: forward(params, cfg, ids, adapter=a, lora_dropout=rate, dropout_rng=key)["logits"]
    plain = forward(params, cfg, ids, adapter=ad)["logits"]
    d1, d1b, d2 = run(ad, 0.3, jax.random.PRNGKey(1)), run(ad, 0.3, jax.random.PRNGKey(1)), run(ad, 0.3,
                                                                                              jax.random.PRNGKey(2))
    np.testing.assert_array_equal(np.asarray(d1), np.asarray(d1b))
    assert float(jnp.abs(d1 - plain).max()) > 1e-3 and float(jnp.abs(d1 - d2).max()) > 1e-3
    zero_b = dataclasses.replace(ad, B={m: jnp.zeros_like(b) for m, b in ad.B.items()})
    np.testing.assert_array_equal(np.asarray(run(zero_b, 0.3, jax.random.PRNGKey(1))),
                                  np.asarray(forward(params, cfg, ids)["logits"]))
    with pytest.raises(ValueError, match="needs dropout_rng"):
        forward(params, cfg, ids, adapter=ad, lora_dropout=0.3)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        forward(params, cfg, ids, adapter=ad, lora_dropout=1.0, dropout_rng=jax.random.PRNGKey(0))


def test_lora_dropout_is_inverted_dropout():
    """E over masks of the LoRA term with input dropout p equals the term without (kept inputs scaled 1/(1-p))."""
    from hyperlora_jax.model import Linear
    r = np.random.default_rng(5)
    x = jnp.asarray(r.standard_normal((2, 3, 16)), jnp.float32)
    a, b = (jnp.asarray(r.standard_normal(s), jnp.float32) for s in ((2, 4, 16), (2, 4, 8)))
    scale = jnp.ones((2,), jnp.float32)
    lin = Linear(8)
    p = lin.init(jax.random.PRNGKey(0), x)
    base = lin.apply(p, x)
    exact = lin.apply(p, x, (a, b, scale, 0.0)) - base
    draws = jax.vmap(lambda k: lin.apply(p, x, (a, b, scale, 0.5), rngs={"dropout": k}) - base)(
        jax.random.split(jax.random.PRNGKey(1), 4000))
    assert float(jnp.abs(draws[0] - exact).max()) > 0.1             # one draw is not the mean
    err = float(jnp.abs(draws.mean(0) - exact).max() / jnp.abs(exact).max())
    assert err < 0.06, err


@pytest.mark.parametrize("family", ["gemma2", "llama"])
def test_logits_at_are_the_full_logits_at_those_positions(model_dir, tmp_path, family):
    """``logits_at`` [B, R] runs the LM head on R rows only (gemma: tied embeddings + final soft-cap; llama: own
    lm_head) and returns exactly those rows of the full logits, with the adapter in place and gradients alike."""
    cfg, params = load_model(model_dir if family == "gemma2" else make_tiny(family, str(tmp_path / "m")))
    rng = np.random.default_rng(5)
    ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 11)))
    idx = jnp.asarray([[3, 4, 5, 0], [9, 1, 1, 2]], jnp.int32)
    ad = _random_adapter(cfg, 2)
    full = forward(params, cfg, ids, adapter=ad)["logits"]
    part = forward(params, cfg, ids, adapter=ad, logits_at=idx)["logits"]
    assert part.shape == (2, 4, cfg.vocab_size)
    np.testing.assert_allclose(np.asarray(part), np.take_along_axis(np.asarray(full), np.asarray(idx)[..., None], 1),
                               rtol=0, atol=1e-5)
    # the gradient w.r.t. the adapter of a loss on those rows is the same either way
    w = jnp.asarray(rng.standard_normal((2, 4, cfg.vocab_size)), jnp.float32)
    g_full = jax.grad(lambda a: jnp.sum(jnp.take_along_axis(
        forward(params, cfg, ids, adapter=a)["logits"], idx[..., None], axis=1) * w))(ad)
    g_part = jax.grad(lambda a: jnp.sum(forward(params, cfg, ids, adapter=a, logits_at=idx)["logits"] * w))(ad)
    for a, b in zip(jax.tree_util.tree_leaves(g_full), jax.tree_util.tree_leaves(g_part)):
        # float32, summation order differs (vocab-sized contractions): relative to the largest entry
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5 * np.abs(np.asarray(a)).max()
