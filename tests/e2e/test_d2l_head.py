"""D2L HyperLoRA head and chunk combination: parity with the reference fixtures (tests/data/d2l), init, jit.

Fixture layout: combined/* are [n_docs, L, R, d] (reference); the project's Adapter is [L, n_docs, R, d].
Tolerance 1e-5 absolute (golden README §3).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperlora_jax.d2l import D2LHypernetConfig, bias_lora, combine_chunks, generate_adapter, init_params
from hyperlora_jax.lora import Adapter, lora_delta

ATOL = 1e-5
M = "down_proj"


@pytest.mark.parametrize("name", ["resmlp_out", "head_in", "head_out"])
def test_head_intermediates(d2l_golden, name):
    _, z, _, _, _, inter = d2l_golden
    assert inter[name].shape == z[name].shape
    np.testing.assert_allclose(inter[name], z[name], rtol=0, atol=ATOL)


def test_head_in_is_unit_norm(d2l_golden):
    _, _, _, _, _, inter = d2l_golden
    np.testing.assert_allclose(np.linalg.norm(inter["head_in"], axis=-1), 1.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mat", ["A", "B"])
def test_per_chunk_lora(d2l_golden, mat):
    _, z, _, _, _, inter = d2l_golden
    ref = z[f"per_chunk/{mat}/{M}"]
    assert inter[f"{mat}/{M}"].shape == ref.shape
    np.testing.assert_allclose(inter[f"{mat}/{M}"], ref, rtol=0, atol=ATOL)


def _adapter_to_ref(x):
    return np.asarray(x).transpose(1, 0, 2, 3)  # [L, n_docs, R, d] -> [n_docs, L, R, d]


@pytest.mark.parametrize("scaled", [False, True])
def test_combined_adapter(d2l_golden, scaled):
    _, z, meta, config, params, _ = d2l_golden
    kw = dict(chunk_scalers=jnp.asarray(z["chunk_scalers"]), bias_scaler=jnp.asarray(z["bias_scaler"])) \
        if scaled else {}
    ad = generate_adapter(params, config, jnp.asarray(z["features"]), jnp.asarray(z["ctx_attn_mask"]),
                          z["n_ctx_chunks"], **kw)
    assert isinstance(ad, Adapter)
    prefix = "combined_scaled" if scaled else "combined"
    for mat in ("A", "B"):
        ref = z[f"{prefix}/{mat}/{M}"]
        got = _adapter_to_ref(getattr(ad, mat)[M])
        assert got.shape == ref.shape  # R = (max_chunks + 1) * r
        np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL, err_msg=f"{prefix}/{mat}")
    np.testing.assert_allclose(np.asarray(ad.scale), meta["lora_alpha"], rtol=1e-7)
    assert ad.scale.shape == (len(z["n_ctx_chunks"]),)


def test_combine_chunks_from_fixture_per_chunk_arrays(d2l_golden):
    """combine_chunks alone, fed the reference's own per-chunk LoRAs and bias, reproduces combined* exactly."""
    _, z, meta, config, params, _ = d2l_golden
    bA, bB = bias_lora(params, config)
    A = {M: jnp.asarray(z[f"per_chunk/A/{M}"])}
    B = {M: jnp.asarray(z[f"per_chunk/B/{M}"])}
    ad = combine_chunks(A, B, z["n_ctx_chunks"], bA, bB, lora_alpha=meta["lora_alpha"],
                        chunk_scalers=z["chunk_scalers"], bias_scaler=float(z["bias_scaler"]))
    np.testing.assert_array_equal(_adapter_to_ref(ad.A[M]), z[f"combined_scaled/A/{M}"])
    np.testing.assert_array_equal(_adapter_to_ref(ad.B[M]), z[f"combined_scaled/B/{M}"])


def _toy(n_chunks, r=2, L=3, d_in=5, d_out=4, seed=0):
    rng = np.random.default_rng(seed)
    K = int(sum(n_chunks))
    A = {M: rng.standard_normal((K, L, r, d_in)).astype(np.float32)}
    B = {M: rng.standard_normal((K, L, r, d_out)).astype(np.float32)}
    bA = {M: rng.standard_normal((L, r, d_in)).astype(np.float32)}
    bB = {M: rng.standard_normal((L, r, d_out)).astype(np.float32)}
    return A, B, bA, bB


def test_combine_chunks_layout_and_delta():
    """Block layout, zero padding, and ΔW = α[Σ_k s_k B_kᵀA_k + β² bias_Bᵀ bias_A] through lora_delta."""
    n = np.array([2, 0, 3])
    A, B, bA, bB = _toy(n)
    s = np.array([0.5, 2.0, -1.0, 1.5, 3.0], np.float32)
    beta, alpha, r = 0.7, 5.0, 2
    ad = combine_chunks(A, B, n, bA, bB, lora_alpha=alpha, chunk_scalers=s, bias_scaler=beta)
    assert ad.A[M].shape == (3, 3, (3 + 1) * r, 5) and ad.B[M].shape == (3, 3, 8, 4)
    a, b = np.asarray(ad.A[M]), np.asarray(ad.B[M])
    # document 1 has no chunks: bias block first, then zeros
    np.testing.assert_allclose(a[:, 1, :r], bA[M] * beta, rtol=1e-6)
    assert np.all(a[:, 1, r:] == 0) and np.all(b[:, 1, r:] == 0)
    # document 0: chunks 0, 1, bias, zeros
    np.testing.assert_allclose(a[:, 0, :r], A[M][0] * s[0], rtol=1e-6)
    np.testing.assert_allclose(b[:, 0, r:2 * r], B[M][1], rtol=1e-6)  # scalers touch A only
    np.testing.assert_allclose(b[:, 0, 2 * r:3 * r], bB[M] * beta, rtol=1e-6)
    assert np.all(a[:, 0, 3 * r:] == 0)
    # ΔW via the project's LoRA contraction, document 2 (chunks 2, 3, 4), layer 1
    x = np.random.default_rng(1).standard_normal((3, 6, 5)).astype(np.float32)
    y = np.asarray(lora_delta(jnp.asarray(x), ad.layer(1).A[M], ad.layer(1).B[M], ad.scale))
    dW = sum(s[k] * A[M][k, 1].T @ B[M][k, 1] for k in (2, 3, 4)) + beta ** 2 * bA[M][1].T @ bB[M][1]
    np.testing.assert_allclose(y[2], alpha * x[2] @ dW, rtol=1e-4, atol=1e-4)


def test_combine_chunks_under_jit_and_max_chunks():
    n = np.array([1, 3])
    A, B, bA, bB = _toy(n)
    eager = combine_chunks(A, B, n, bA, bB, lora_alpha=2.0)

    @jax.jit
    def f(A, B, n, bA, bB):
        return combine_chunks(A, B, n, bA, bB, lora_alpha=2.0, max_chunks=3)

    jitted = f(A, B, jnp.asarray(n), bA, bB)
    np.testing.assert_array_equal(np.asarray(jitted.A[M]), np.asarray(eager.A[M]))
    np.testing.assert_array_equal(np.asarray(jitted.B[M]), np.asarray(eager.B[M]))
    wider = combine_chunks(A, B, n, bA, bB, lora_alpha=2.0, max_chunks=5)  # extra zero rows only
    assert wider.A[M].shape[2] == 12
    np.testing.assert_array_equal(np.asarray(wider.A[M])[:, :, :8], np.asarray(eager.A[M]))
    assert np.all(np.asarray(wider.A[M])[:, :, 8:] == 0)
    with pytest.raises(ValueError, match="max_chunks"):
        combine_chunks(A, B, n, bA, bB, lora_alpha=2.0, max_chunks=2)
    with pytest.raises(ValueError, match="static max_chunks"):
        jax.jit(lambda n: combine_chunks(A, B, n, bA, bB, lora_alpha=2.0).A[M])(jnp.asarray(n))


def test_init_values_and_shapes():
    """Spec section 6 initialisation, on a small config (one init compile, cheap RBG key)."""
    c = D2LHypernetConfig.create(feature_size=64, n_layers=3, r=4, d_in={"down_proj": 96, "up_proj": 64},
                                 d_out={"down_proj": 64, "up_proj": 128}, latent_size=32, n_latent_queries=256,
                                 num_blocks=1, n_heads=4, head_dim=16, num_key_value_heads=2)
    assert c.target_modules == ("down_proj", "up_proj") and c.d_lora == 192 and c.perceiver.n_output_queries == 8
    assert abs(c.alpha - 16.0) < 1e-12  # 2 * r**1.5
    p = init_params(c, jax.random.key(0, impl="rbg"))
    p = jax.tree_util.tree_map(np.asarray, p)
    h, L, r, d = p["head"], 3, 4, 32
    # scalers and bias LoRA: ΔW = 0 at init
    for m, di, do in (("down_proj", 96, 64), ("up_proj", 64, 128)):
        assert h["scaler_A"][m].shape == (L, r) and np.all(h["scaler_A"][m] == 1)
        assert h["scaler_B"][m].shape == (L, r) and np.all(h["scaler_B"][m] == 0)
        assert h["bias_B"][m].shape == (L, r, do) and np.all(h["bias_B"][m] == 0)
        assert h["bias_A"][m].shape == (L, r, di)
        std = 0.2 / np.sqrt(di * r)
        assert 0.85 * std < h["bias_A"][m].std() < 1.15 * std
    hk = h["head"]["kernel"]
    assert hk.shape == (L, 2, d, 192)
    std = 0.5 / np.sqrt(d + 192 * r)
    assert 0.95 * std < hk.std() < 1.05 * std and abs(hk.mean()) < 0.1 * std
    blk = h["layers_0"]
    assert blk["mix1"]["kernel"].shape == (L, d, 4 * d) and blk["mix1"]["bias"].shape == (L, 4 * d)
    assert blk["mix2"]["kernel"].shape == (L, 4 * d, d) and blk["mix2"]["bias"].shape == (L, d)
    for name, fan_in in (("mix1", d), ("mix2", 4 * d)):  # einops EinMix: U(±√(3/fan_in)), bias U(±1/√fan_in)
        w, bias = blk[name]["kernel"], blk[name]["bias"]
        assert np.sqrt(3 / fan_in) * 0.9 < np.abs(w).max() <= np.sqrt(3 / fan_in)
        assert np.sqrt(1 / fan_in) * 0.8 < np.abs(bias).max() <= np.sqrt(1 / fan_in)
    for ln in ("ln_in", "ln_out"):
        assert np.all(blk[ln]["scale"] == 1) and np.all(blk[ln]["bias"] == 0)
    # perceiver: std-1 latents, unit RMSNorm weights, torch-Linear U(±1/√fan_in), [in, out] kernels
    pp = p["perceiver"]
    lat = pp["encoder"]["latents_q"]
    assert lat.shape == (256, d) and abs(lat.std() - 1.0) < 0.05
    assert pp["decoder"]["latents_q"].shape == (8, d)
    assert sorted(k for k in pp["encoder"] if k.startswith("layers_")) == ["layers_0"]
    assert sorted(k for k in pp["decoder"] if k.startswith("layers_")) == ["layers_0"]
    layer = pp["encoder"]["layers_0"]
    for norm in ("input_latents_layernorm", "input_context_layernorm", "post_attention_layernorm",
                 "pre_ff_layernorm", "post_ff_layernorm"):
        assert np.all(layer[norm]["scale"] == 1)
    assert np.all(pp["encoder"]["layernorm"]["scale"] == 1) and np.all(pp["decoder"]["layernorm"]["scale"] == 1)
    att = layer["self_attn"]
    assert att["q_proj"]["kernel"].shape == (d, 64) and att["k_proj"]["kernel"].shape == (d, 32)
    assert att["v_proj"]["kernel"].shape == (d, 32) and att["o_proj"]["kernel"].shape == (64, d)
    assert layer["mlp"]["gate_proj"]["kernel"].shape == (d, 4 * d)
    assert pp["modality_projection"]["gate_proj"]["kernel"].shape == (64, 256)
    assert pp["modality_projection"]["down_proj"]["kernel"].shape == (256, d)
    for k in (att["q_proj"]["kernel"], att["o_proj"]["kernel"], pp["modality_projection"]["down_proj"]["kernel"]):
        bound = k.shape[0] ** -0.5
        assert 0.9 * bound < np.abs(k).max() <= bound
