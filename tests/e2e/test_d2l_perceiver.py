"""D2L perceiver aggregator: parity with the reference fixtures (tests/data/d2l), masking, init.

Fixtures: float32 outputs of the reference (doc-to-lora 1abe8ae) on CPU; tolerance 1e-5 absolute (golden README §3).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperlora_jax.d2l import D2LHypernetConfig, generate_chunk_loras, hypernet_intermediates
from hyperlora_jax.d2l.checkpoint_map import config_from_state_dict, torch_to_flax
from hyperlora_jax.d2l.hypernet import init_params
from hyperlora_jax.d2l.perceiver import masked_gqa_attention

import d2l_golden as d2l_golden_data  # tests/d2l_golden.py (the conftest fixture d2l_golden runs it)

ATOL = 1e-5


def test_config_matches_fixture_metadata(d2l_golden):
    kind, z, meta, config, _, _ = d2l_golden
    agg = meta["aggregator"]
    assert config.ctx_encoder_type == kind
    assert config.perceiver.input_size == agg["feature_size"]
    assert config.perceiver.hidden_size == meta["latent_size"] == agg["output_size"]
    assert config.perceiver.n_latents == agg["n_latent_queries"]
    assert config.perceiver.n_output_queries == agg["n_output_queries"]
    assert config.perceiver.num_blocks == agg["num_blocks"]
    assert (config.perceiver.n_heads, config.perceiver.head_dim, config.perceiver.num_key_value_heads) == (
        agg["n_heads"], agg["head_dim"], agg["num_key_value_heads"])
    assert config.n_layers == meta["n_layers"] and config.r == meta["r"]
    assert config.target_modules == tuple(meta["target_modules_sorted"])
    assert config.d_lora == meta["d_lora"]
    assert abs(config.alpha - meta["lora_alpha"]) < 1e-6


def test_modality_projection_valid_positions(d2l_golden):
    kind, z, _, _, _, inter = d2l_golden
    valid = z["ctx_attn_mask"].astype(bool)
    ours, ref = inter["modality_projection"], z["perceiver/modality_projection"]
    assert ours.shape == ref.shape
    if ours.ndim == 4:  # [K, L, T, d] -> [K, T, L, d] to index with the [K, T] mask
        ours, ref = ours.transpose(0, 2, 1, 3), ref.transpose(0, 2, 1, 3)
    np.testing.assert_allclose(ours[valid], ref[valid], rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["encoder_latents", "decoder_out"])
def test_resampler_outputs(d2l_golden, name):
    _, z, _, _, _, inter = d2l_golden
    ref = z[f"perceiver/{name}"]
    assert inter[name].shape == ref.shape
    np.testing.assert_allclose(inter[name], ref, rtol=0, atol=ATOL)


def test_aggregator_out(d2l_golden):
    _, z, _, _, _, inter = d2l_golden
    assert inter["aggregator_out"].shape == z["aggregator_out"].shape
    np.testing.assert_allclose(inter["aggregator_out"], z["aggregator_out"], rtol=0, atol=ATOL)


def test_extra_padding_and_garbage_at_padded_positions(d2l_golden):
    """Extra padding tokens (and arbitrary values at padded positions) do not change anything."""
    kind, z, _, config, params, inter = d2l_golden
    feats, mask = z["features"], z["ctx_attn_mask"]
    extra = 7
    rng = np.random.default_rng(0)
    pad_shape = feats.shape[:-2] + (extra, feats.shape[-1])
    feats_p = np.concatenate([feats, 50 * rng.standard_normal(pad_shape).astype(np.float32)], axis=-2)
    mask_p = np.concatenate([mask, np.zeros((mask.shape[0], extra), mask.dtype)], axis=1)
    # also overwrite the already padded positions with garbage
    inval = ~mask_p.astype(bool)
    garbage = 1e3 * rng.standard_normal(feats_p.shape).astype(np.float32)
    sel = inval[:, None, :, None] if feats_p.ndim == 4 else inval[:, :, None]
    feats_p = np.where(sel, garbage, feats_p)
    out = hypernet_intermediates(params, config, jnp.asarray(feats_p), jnp.asarray(mask_p))
    for name in ("encoder_latents", "decoder_out", "aggregator_out", "A/down_proj", "B/down_proj"):
        np.testing.assert_allclose(np.asarray(out[name]), inter[name], rtol=0, atol=ATOL, err_msg=name)


def test_single_chunk_alone_equals_batched(d2l_golden):
    """A chunk run alone, trimmed to its valid length without a mask, equals its row of the padded batch."""
    kind, z, _, config, params, inter = d2l_golden
    mask = z["ctx_attn_mask"]
    row = int(np.argmin(mask.sum(1)))  # the most padded chunk
    n = int(mask[row].sum())
    feats = z["features"][row:row + 1, ..., :n, :]
    A, B = generate_chunk_loras(params, config, jnp.asarray(feats), None)
    np.testing.assert_allclose(np.asarray(A["down_proj"])[0], inter["A/down_proj"][row], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(B["down_proj"])[0], inter["B/down_proj"][row], rtol=0, atol=1e-6)


def test_layer_loop_equals_batched(d2l_golden):
    """l2l: running the shared perceiver layer by layer (the reference's iterative mode) equals the folded batch."""
    kind, z, _, config, params, inter = d2l_golden
    if kind != "per_layer_activations":
        pytest.skip("layer loop is a per_layer_activations mode")
    f, m = jnp.asarray(z["features"]), jnp.asarray(z["ctx_attn_mask"])
    A1, B1 = generate_chunk_loras(params, config, f, m, layer_loop=True)
    np.testing.assert_allclose(np.asarray(A1["down_proj"]), inter["A/down_proj"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(B1["down_proj"]), inter["B/down_proj"], rtol=0, atol=1e-6)


def test_masked_gqa_attention_matches_explicit_repeat_kv():
    rng = np.random.default_rng(1)
    b, q, t, hq, hkv, d = 2, 3, 5, 8, 2, 4
    Q = rng.standard_normal((b, q, hq, d)).astype(np.float32)
    K = rng.standard_normal((b, t, hkv, d)).astype(np.float32)
    V = rng.standard_normal((b, t, hkv, d)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    out = np.asarray(masked_gqa_attention(jnp.asarray(Q), jnp.asarray(K), jnp.asarray(V), jnp.asarray(mask)))
    # explicit: query head h uses kv head h // (hq // hkv), keys restricted to valid positions
    Kr, Vr = np.repeat(K, hq // hkv, axis=2), np.repeat(V, hq // hkv, axis=2)
    logits = np.einsum("bqhd,bthd->bhqt", Q, Kr) / np.sqrt(d)
    logits0 = logits[0][..., :3]
    p = np.exp(logits0 - logits0.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref0 = np.einsum("hqt,thd->qhd", p, Vr[0, :3])
    np.testing.assert_allclose(out[0], ref0, rtol=0, atol=1e-5)
    assert np.all(out[1] == 0) and np.all(np.isfinite(out))  # all-padding row: zeros, not NaN


def _gemma_main(ctx_encoder_type="per_layer_activations", **kw):
    return D2LHypernetConfig.create(feature_size=2304, n_layers=26, r=8, d_in={"down_proj": 9216},
                                    d_out={"down_proj": 2304}, ctx_encoder_type=ctx_encoder_type, **kw)


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_param_counts_of_released_configs():
    """Spec section 9 counts, from abstract shapes only (nothing is allocated)."""
    shapes = jax.eval_shape(lambda k: init_params(_gemma_main(), k), jax.random.PRNGKey(0))
    p = shapes["perceiver"]
    assert _count(p["modality_projection"]) == 47_185_920
    assert _count(p["encoder"]) == 51_932_160
    assert _count(p["decoder"]) == 5_774_336
    assert _count(p["encoder"]["layers_0"]) == 5_769_728
    h = shapes["head"]
    assert _count(h["layers_0"]) == 54_594_560
    assert _count(h["head"]) == 153_354_240
    assert _count(h["bias_A"]) == 1_916_928 and _count(h["bias_B"]) == 479_232
    assert _count(h["scaler_A"]) + _count(h["scaler_B"]) == 416
    assert _count(shapes) == 315_237_792
    niah = _gemma_main("early_exit", n_latent_queries=208, num_blocks=8)
    assert niah.perceiver.n_output_queries == 208
    assert _count(jax.eval_shape(lambda k: init_params(niah, k), jax.random.PRNGKey(0))) == 309_672_864


def test_features_layout_is_checked():
    z, _, sd = d2l_golden_data.load("per_layer_activations")
    config = config_from_state_dict(sd)
    params = torch_to_flax(sd, config)
    with pytest.raises(ValueError, match="per_layer_activations features"):
        generate_chunk_loras(params, config, jnp.asarray(z["features"][:, 0]), None)
