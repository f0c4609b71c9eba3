"""The logical-axis rules table (sharding.py) for parameters, activations and adapters.

In process: the table maps every logical axis the code names, specs from it, and the no-mesh / one-device no-op.
On 8 emulated CPU devices (a subprocess: the device count is fixed when JAX starts), under a 2x2x2
(data, fsdp, tensor) mesh: D2L and T2L forwards (hypernetwork -> adapter -> decoder) whose constrained activations
and adapters carry the table's shardings and equal the unsharded forward (float32, atol 1e-5), and splash attention
under the mesh (batch and KV heads sharded) against the dense path (< 1e-4, as tests/e2e/test_attention.py).
"""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from hyperlora_jax import sharding
from hyperlora_jax.d2l.hypernet import LORA_EMB_AXES
from hyperlora_jax.lora import LORA_MODULES
from hyperlora_jax.model import HIDDEN_AXES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH_2x2x2 = AbstractMesh((2, 2, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def test_rules_table_maps_every_logical_axis():
    named = {a for _, axes in sharding.PARAM_RULES for a in axes}
    named |= {a for axes in sharding.PROJECTION_AXES.values() for a in axes}
    named |= set(HIDDEN_AXES) | {a for a in LORA_EMB_AXES if a} | {"vocab"}
    ad = sharding.adapter_axes(LORA_MODULES)
    named |= {a for spec in jax.tree_util.tree_leaves(ad) for a in spec if a}
    assert named <= set(sharding.LOGICAL_RULES), named - set(sharding.LOGICAL_RULES)
    for name, axes in sharding.LOGICAL_RULES.items():
        assert set(axes) <= set(sharding.MESH_AXES), name
    assert set(sharding.PROJECTION_AXES) == set(LORA_MODULES)


def test_specs_from_the_table():
    spec = lambda axes, shape: sharding.logical_to_spec(axes, shape, MESH_2x2x2)
    assert spec(("batch", "seq", "embed"), (8, 5, 64)) == P(("data", "fsdp"), None, None)  # fsdp taken by batch
    assert spec(("batch", "seq", "embed"), (2, 5, 64)) == P("data", None, "fsdp")  # longest dividing prefix
    assert spec(("batch", "seq", "vocab"), (3, 5, 96)) == P(None, None, "tensor")
    assert spec(("embed", "mlp"), (64, 96)) == P("fsdp", "tensor")  # a weight: the same table
    assert spec(("layers", "batch", "rank", "heads"), (2, 4, 6, 7)) == P(None, ("data", "fsdp"), None, None)
    with pytest.raises(ValueError, match="unknown logical axes"):
        spec(("batch", "tokens"), (8, 5))
    with pytest.raises(ValueError, match="do not match"):
        spec(("batch",), (8, 5))
    with pytest.raises(ValueError, match="unknown modules"):
        sharding.adapter_axes(["lm_head"])


def test_adapter_axes_follow_the_projection_kernels():
    ad = sharding.adapter_axes(["q_proj", "down_proj"])
    assert ad.A["q_proj"] == P("layers", "batch", "rank", "embed") and ad.B["q_proj"] == P(
        "layers", "batch", "rank", "heads")
    assert ad.A["down_proj"] == P("layers", "batch", "rank", "mlp") and ad.scale == P("batch")


def test_no_mesh_is_a_no_op():
    x = jnp.ones((4, 3, 8))
    assert sharding.active_mesh() is None
    assert sharding.constrain(x, HIDDEN_AXES) is x
    one = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    with sharding.with_mesh(one):
        assert sharding.active_mesh() is None  # one device: nothing to shard
        assert sharding.constrain(x, HIDDEN_AXES) is x
        y = jax.jit(lambda a: sharding.constrain(a * 2, HIDDEN_AXES))(x)
    np.testing.assert_array_equal(np.asarray(y), 2 * np.ones((4, 3, 8)))


SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from hyperlora_jax import sharding
from hyperlora_jax.config import ModelConfig
from hyperlora_jax.d2l import hypernet as dh
from hyperlora_jax.model import forward, init_params
from hyperlora_jax.t2l import hypernet as th

assert jax.device_count() == 8
mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
BATCH = ("data", "fsdp")
rng = np.random.default_rng(0)
cfg = ModelConfig(model_type="llama", vocab_size=96, hidden_size=64, intermediate_size=96, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16)
params = init_params(cfg, jax.random.PRNGKey(0))
sharded_params = jax.device_put(params, sharding.param_shardings(params, mesh))
tokens = rng.integers(0, cfg.vocab_size, (4, 8))
mods = {"down_proj": (96, 64), "q_proj": (64, 64)}

def check(x, spec, what):
    want = NamedSharding(mesh, spec)
    assert x.sharding.is_equivalent_to(want, x.ndim), (what, x.sharding, spec)

def close(a, b, what):
    err = max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
              for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    assert err < 1e-5, (what, err)

def check_adapter(ad):  # (scale is a constant: XLA may hand it back replicated)
    check(ad.A["q_proj"], P(None, BATCH, None, None), "A q_proj")        # embed: fsdp is taken by batch
    check(ad.B["q_proj"], P(None, BATCH, None, "tensor"), "B q_proj")    # heads
    check(ad.A["down_proj"], P(None, BATCH, None, "tensor"), "A down_proj")  # mlp
    check(ad.B["down_proj"], P(None, BATCH, None, None), "B down_proj")

# ----- D2L: 8 chunk rows (2 per document) -> perceiver -> head -> adapter [4 documents] -> decoder
hcfg = dh.D2LHypernetConfig.create(feature_size=64, n_layers=2, r=2, d_in={m: s[0] for m, s in mods.items()},
                                   d_out={m: s[1] for m, s in mods.items()}, latent_size=16, n_latent_queries=4,
                                   num_blocks=1, n_heads=2, head_dim=8, num_key_value_heads=1)
hparams = dh.init_params(hcfg, jax.random.PRNGKey(1))
feats = rng.normal(size=(8, 2, 8, 64)).astype(np.float32)
mask = np.ones((8, 8), np.int32)
n_chunks = np.full((4,), 2, np.int32)

def d2l(hp, p, tok):
    ad = dh.generate_adapter(hp, hcfg, feats, mask, n_chunks, max_chunks=2)
    return ad, forward(p, cfg, tok, adapter=ad)["logits"]

want = jax.jit(d2l)(hparams, params, tokens)  # traced without a mesh first: the mesh is part of the cache key
inter_want = dh.hypernet_intermediates(hparams, hcfg, feats, mask)
with sharding.with_mesh(mesh):
    f = jax.jit(d2l)
    got = f(hparams, sharded_params, tokens)
    hlo = f.lower(hparams, sharded_params, tokens).as_text()
    inter = dh.hypernet_intermediates(hparams, hcfg, feats, mask)
check_adapter(got[0])
check(got[1], P(BATCH, None, "tensor"), "logits")
check(inter["decoder_out"], P(BATCH), "perceiver output")
check(inter["aggregator_out"], P(BATCH), "lora_emb")
# hidden states after the embedding and after the (scanned) block body
assert hlo.count('sharding_constraint') >= 5 and hlo.count('[{"data", "fsdp"}, {}, {}]> : tensor<4x8x64xf32>') >= 2, hlo
close(got, want, "d2l sharded vs unsharded")
close(inter, inter_want, "d2l intermediates")

# ----- T2L: 4 task embeddings -> adapters -> decoder
tcfg = th.T2LConfig(variant="M", latent_size=16, head_in_size=8, task_emb_size=12, r=2,
                    target_modules=tuple(mods), in_features=tuple(s[0] for s in mods.values()),
                    out_features=tuple(s[1] for s in mods.values()), n_layers=2, dropout_rate=0.0)
tparams = th.init_params(tcfg, jax.random.PRNGKey(2))
tparams = jax.tree_util.tree_map(lambda x: x + 0.1 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), tparams)  # B != 0
emb = rng.normal(size=(4, 12)).astype(np.float32)

def t2l(tp, p, tok):
    ad = th.generate_adapters(tp, tcfg, emb)
    return ad, forward(p, cfg, tok, adapter=ad)["logits"]

want = t2l(tparams, params, tokens)
with sharding.with_mesh(mesh):
    got = jax.jit(t2l)(tparams, sharded_params, tokens)
    eager = th.generate_adapters(tparams, tcfg, emb)
check_adapter(got[0])
check_adapter(eager)
check(got[1], P(BATCH, None, "tensor"), "t2l logits")
close(got, want, "t2l sharded vs unsharded")
print("OK")
"""

SPLASH = """
import sys, jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests/e2e")
import test_attention as ta
from hyperlora_jax import sharding
from hyperlora_jax.model import forward
cfg, params = ta.tiny("gemma2")  # 2 KV heads: sharded over tensor, 4 rows over (data, fsdp)
pos, seg = ta.packed(4, 128)
tok = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (4, 128)))
mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
with sharding.with_mesh(mesh):
    params = jax.device_put(params, sharding.param_shardings(params, mesh))
    run = lambda k: np.asarray(jax.jit(lambda p, t, ps, sg: forward(
        p, cfg.replace(attention=k), t, positions=ps, segment_ids=sg)["logits"])(params, tok, pos, seg))
    err = np.abs(run("splash") - run("xla"))[np.asarray(seg) != 0].max()
assert err < 1e-4, err
print("OK")
"""


def _run(script):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-4000:]


def test_sharded_d2l_and_t2l_forwards_on_2x2x2():
    _run(SCRIPT)


def test_splash_under_the_mesh():
    _run(SPLASH)
