"""T2L hypernetwork: parity with the reference fixtures (L, M, S) and the reference initialisation.

Fixtures: tests/data/t2l/{L,M,S}.{npz,json} (copied from the golden set; weights under ``hypermod/<torch key>``,
arrays task-major [task, layer, ...], B in PEFT layout [out, r]). Tolerance: 1e-5 absolute, float32.
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from conftest import DATA
from hyperlora_jax.lora import Adapter, check_adapter
from hyperlora_jax.t2l import checkpoint as ckpt
from hyperlora_jax.t2l import hypernet as hn

TOL = 1e-5
T2L = os.path.join(DATA, "t2l")


def _fixture(variant):
    z = np.load(os.path.join(T2L, f"{variant}.npz"))
    with open(os.path.join(T2L, f"{variant}.json")) as f:
        meta = json.load(f)
    order = tuple(sorted(meta["module_to_int"], key=meta["module_to_int"].get))
    cfg = hn.T2LConfig(variant=variant, latent_size=meta["latent_size"], head_in_size=meta["head_in_size"],
                       task_emb_size=meta["task_emb_size"], r=meta["r"], lora_alpha=meta["lora_alpha"],
                       target_modules=order, in_features=tuple(meta["in_features"][m] for m in order),
                       out_features=tuple(meta["out_features"][m] for m in order), n_layers=meta["n_layers"])
    sd = {k[len("hypermod/"):]: z[k] for k in z.files if k.startswith("hypermod/")}
    params = ckpt.params_from_state_dict(sd, cfg)
    return cfg, params, z, meta


@pytest.fixture(scope="module", params=["L", "M", "S"])
def variant_fixture(request):
    return _fixture(request.param)


def _to_reference_layout(adapter: Adapter, m):
    """Adapter A [L, N, r, in] / B [L, N, r, out] -> fixture A [N, L, r, in] / B [N, L, out, r]."""
    return (np.asarray(adapter.A[m]).transpose(1, 0, 2, 3), np.asarray(adapter.B[m]).transpose(1, 0, 3, 2))


@pytest.mark.parametrize("source", ["encoded_task_emb", "task_emb"])
def test_parity_with_reference(variant_fixture, source):
    cfg, params, z, meta = variant_fixture
    if source == "task_emb":
        adapter = hn.generate_adapters(params, cfg, jnp.asarray(z["task_emb"]))
    else:
        adapter = hn.generate_adapters_from_encoded(params, cfg, jnp.asarray(z["encoded_task_emb"]))
    n, n_layers = z["task_emb"].shape[0], meta["n_layers"]
    assert isinstance(adapter, Adapter)
    check_adapter(adapter, cfg.features, n_layers, batch=n)
    worst = 0.0
    for m in cfg.target_modules:
        d_in, d_out = cfg.features[m]
        assert adapter.A[m].shape == (n_layers, n, cfg.r, d_in)
        assert adapter.B[m].shape == (n_layers, n, cfg.r, d_out)
        a, b = _to_reference_layout(adapter, m)
        err_a, err_b = np.abs(a - z[f"A/{m}"]).max(), np.abs(b - z[f"B/{m}"]).max()
        worst = max(worst, err_a, err_b)
        assert err_a < TOL and err_b < TOL, (m, err_a, err_b)
    print(f"{cfg.variant} from {source}: max |diff| = {worst:.3g}")


def test_task_encoder_parity(variant_fixture):
    cfg, params, z, _ = variant_fixture
    enc = hn.encode_task(params, cfg, jnp.asarray(z["task_emb"]))
    np.testing.assert_allclose(np.asarray(enc), z["encoded_task_emb"], atol=TOL, rtol=0)


def test_both_scales(variant_fixture):
    cfg, params, z, meta = variant_fixture
    emb = jnp.asarray(z["task_emb"])
    rs = hn.generate_adapters(params, cfg, emb, "rslora")
    ar = hn.generate_adapters(params, cfg, emb, "alpha_over_r")
    np.testing.assert_allclose(np.asarray(rs.scale), [meta["scaling_rslora"]] * 2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ar.scale), [meta["scaling_alpha_over_r"]] * 2, rtol=1e-6)
    assert math.isclose(float(rs.scale[0]), 16 / math.sqrt(8), rel_tol=1e-6)
    assert float(ar.scale[0]) == 2.0
    for m in cfg.target_modules:  # the scale never touches A or B
        np.testing.assert_array_equal(np.asarray(rs.A[m]), np.asarray(ar.A[m]))
        np.testing.assert_array_equal(np.asarray(rs.B[m]), np.asarray(ar.B[m]))
    with pytest.raises(ValueError, match="unknown LoRA scale"):
        hn.generate_adapters(params, cfg, emb, "alpha")


def test_rows_are_independent_of_the_batch():
    """Row n of every layer depends on description n only (same shape as the parity call: no recompile)."""
    cfg, params, z, _ = _fixture("L")
    emb = jnp.asarray(z["task_emb"])
    fwd = hn.generate_adapters(params, cfg, emb)
    rev = hn.generate_adapters(params, cfg, emb[::-1])
    for m in cfg.target_modules:
        np.testing.assert_allclose(np.asarray(fwd.A[m]), np.asarray(rev.A[m])[:, ::-1], atol=1e-6)
        np.testing.assert_allclose(np.asarray(fwd.B[m]), np.asarray(rev.B[m])[:, ::-1], atol=1e-6)


def test_dropout_needs_rng_and_is_reproducible():
    cfg, params, z, _ = _fixture("L")
    emb = jnp.asarray(z["task_emb"])
    with pytest.raises(ValueError, match="rng"):
        hn.generate_adapters(params, cfg, emb, deterministic=False)
    key = jax.random.key(3, impl="rbg")   # any PRNG impl works; rbg compiles faster on CPU
    d1 = hn.generate_adapters(params, cfg, emb, deterministic=False, rng=key)
    d2 = hn.generate_adapters(params, cfg, emb, deterministic=False, rng=key)
    d3 = hn.generate_adapters(params, cfg, emb, deterministic=False, rng=jax.random.key(4, impl="rbg"))
    det = hn.generate_adapters(params, cfg, emb)
    m = cfg.target_modules[0]
    np.testing.assert_array_equal(np.asarray(d1.A[m]), np.asarray(d2.A[m]))
    assert not np.allclose(np.asarray(d1.A[m]), np.asarray(d3.A[m]))
    assert not np.allclose(np.asarray(d1.A[m]), np.asarray(det.A[m]))


# ------------------------------------------------------------------------------------------------ initialisation
def _small_cfg(variant, **kw):
    base = dict(variant=variant, latent_size=32, head_in_size=24, task_emb_size=20, r=4, lora_alpha=16,
                target_modules=("v_proj", "q_proj"), in_features=(64, 64), out_features=(32, 64), n_layers=3)
    base.update(kw)
    return hn.T2LConfig(**base)


@pytest.fixture(scope="module")
def l_init():
    cfg = _small_cfg("L")
    return cfg, hn.init_params(cfg, jax.random.key(0))


def test_L_init_is_shared_A0_and_zero_delta(l_init):
    cfg, params = l_init
    emb = jax.random.normal(jax.random.key(1), (5, cfg.task_emb_size))
    ad = hn.generate_adapters(params, cfg, emb)
    for m in cfg.target_modules:
        d_in, d_out = cfg.features[m]
        head = params["heads"][m]
        assert not np.any(np.asarray(head["kernel"]))
        a0 = np.asarray(head["bias"][: cfg.r * d_in]).reshape(cfg.r, d_in)
        assert not np.any(np.asarray(head["bias"][cfg.r * d_in:]))
        assert np.abs(a0).max() <= 1 / math.sqrt(d_in) and np.abs(a0).max() > 0.5 / math.sqrt(d_in)
        A, B = np.asarray(ad.A[m]), np.asarray(ad.B[m])
        np.testing.assert_array_equal(A, np.broadcast_to(a0, A.shape))   # every layer and task: the same A0
        assert not np.any(B)                                              # B = 0, hence delta W = 0
        assert not np.any(np.einsum("lnro,lnri->lnoi", B, A))
    a0_q = np.asarray(params["heads"]["q_proj"]["bias"][: cfg.r * 64])
    a0_v = np.asarray(params["heads"]["v_proj"]["bias"][: cfg.r * 64])
    assert not np.array_equal(a0_q, a0_v)   # one A0 per module type
    again = hn.init_params(cfg, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(again["mixer"]["fc1"]["kernel"]),
                                  np.asarray(params["mixer"]["fc1"]["kernel"]))


def test_default_inits_match_torch(l_init):
    cfg, params = l_init
    flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}
    assert set(flat) == {"/".join(k) for k in flatten_dict(hn.param_shapes(cfg))}
    for name, v in flat.items():
        if name.startswith("heads/"):
            continue
        owner = name.rsplit("/", 1)[0]
        if owner + "/kernel" in flat:                                          # Linear: U(+-1/sqrt(fan_in))
            fan_in = flat[owner + "/kernel"].shape[0]
            assert np.abs(v).max() <= 1 / math.sqrt(fan_in), name
            assert np.abs(v).max() > 0.5 / math.sqrt(fan_in), name
        elif name.endswith("/scale"):
            np.testing.assert_array_equal(v, 1.0)                             # LayerNorm (1, 0)
        elif name.endswith("/bias"):
            np.testing.assert_array_equal(v, 0.0)
        else:
            assert name.endswith("/embedding"), name
            assert 0.5 < v.std() < 1.5, name                                  # N(0, 1), not fan-in scaled
    assert flat["task_encoder/linear/kernel"].shape == (20, 16)
    assert flat["depth_emb/embedding"].shape == (3, 8)
    x = np.asarray(hn._normal(jax.random.key(2), (4000,)))                     # out_emb / pos_emb draws
    assert abs(x.mean()) < 0.1 and abs(x.std() - 1) < 0.1


@pytest.mark.parametrize("variant", ["M", "S"])
def test_M_and_S_hyperinit(variant):
    """M/S heads at init (zero weights, HyperInit bias): A from A0, and unlike L, B != 0.

    Uses the fixture's trained trunk with re-initialised heads, so no extra model is compiled.
    """
    cfg, params, z, _ = _fixture(variant)
    params = jax.tree_util.tree_map(lambda a: a, params)
    biases = {}
    for i, m in enumerate(cfg.target_modules):
        d_in, d_out = cfg.features[m]
        n_out = cfg.head_out_size(m)
        bias = hn._hyperinit_bias(variant, cfg.r, d_in, d_out)(jax.random.key(i), (n_out,))
        params["heads"][m] = {"kernel": jnp.zeros_like(params["heads"][m]["kernel"]), "bias": bias}
        biases[m] = np.asarray(bias)
    ad = hn.generate_adapters(params, cfg, jnp.asarray(z["task_emb"]))
    for m in cfg.target_modules:
        d_in, d_out = cfg.features[m]
        bias, A, B = biases[m], np.asarray(ad.A[m]), np.asarray(ad.B[m])
        if variant == "M":   # bias = A0.flatten() / sqrt(2)   (in >= out)
            rows = bias.reshape(cfg.r, max(d_in, d_out))
            np.testing.assert_array_equal(A, np.broadcast_to(rows[:, :d_in], A.shape))
            np.testing.assert_array_equal(B, np.broadcast_to(rows[:, :d_out], B.shape))
            assert np.abs(rows).max() <= 1 / math.sqrt(d_in) / math.sqrt(2)
        else:                # bias = A0.flatten()[:max(in, out)] / sqrt(2 r): every rank row the same
            np.testing.assert_array_equal(A, np.broadcast_to(bias[:d_in], A.shape))
            np.testing.assert_array_equal(B, np.broadcast_to(bias[:d_out], B.shape))
            assert np.abs(bias).max() <= 1 / math.sqrt(d_in) / math.sqrt(2 * cfg.r)
        assert np.any(B)


def test_M_hyperinit_when_out_exceeds_in():
    """The reference cannot build M when out > in; the port places A0 in the first `in` columns of each row."""
    bias = np.asarray(hn._hyperinit_bias("M", 2, 3, 5)(jax.random.key(0), (10,))).reshape(2, 5)
    assert np.all(bias[:, 3:] == 0) and np.all(bias[:, :3] != 0)


def test_config_validation_and_roundtrip():
    cfg = _small_cfg("M")
    assert hn.T2LConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert hash(cfg) == hash(hn.T2LConfig.from_dict(cfg.to_dict()))
    with pytest.raises(ValueError, match="variant"):
        _small_cfg("XL")
    with pytest.raises(ValueError, match="in_features"):
        _small_cfg("L", in_features=(64,))
    with pytest.raises(ValueError, match="not LoRA modules"):
        _small_cfg("L", target_modules=("q", "v"))


@pytest.mark.parametrize("variant,latent,head_in,want", [
    ("L", 512, 2048, 230_027_264), ("M", 512, 2048, 146_103_296), ("S", 512, 2048, 28_610_560),
    ("L", 128, 512, 55_424_000), ("M", 128, 512, 34_412_288), ("S", 128, 512, 4_996_096)])
def test_parameter_counts_match_the_paper(variant, latent, head_in, want):
    """Llama-3.1-8B / Mistral-7B shapes (32 layers, q 4096->4096, v 4096->1024, r 8, gte 1024): spec section 6."""
    cfg = hn.T2LConfig(variant=variant, latent_size=latent, head_in_size=head_in)
    assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(hn.param_shapes(cfg))) == want
