"""D2L checkpoint map: reference state-dict keys <-> Flax params (tests/data/d2l npz ``hypernet/*`` arrays)."""
import json
import pathlib

import jax
import numpy as np
import pytest

from hyperlora_jax.d2l import D2LHypernetConfig, init_params
from hyperlora_jax.d2l.checkpoint_map import (config_from_state_dict, expected_torch_shapes, flax_to_torch,
                                              torch_to_flax)

DATA = pathlib.Path(__file__).parent.parent / "data" / "d2l"
KINDS = ["per_layer_activations", "early_exit"]


def _load(kind):
    z = np.load(DATA / f"{kind}.npz")
    meta = json.loads((DATA / f"{kind}.json").read_text())
    sd = {k[len("hypernet/"):]: z[k] for k in z.files if k.startswith("hypernet/")}
    return sd, meta


def _shapes(tree):
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)


def _fake_state_dict(config):
    """Zero-stride arrays with the reference shapes (no memory even for the full-size model)."""
    return {k: np.broadcast_to(np.float32(0), s) for k, s in expected_torch_shapes(config).items()}


@pytest.mark.parametrize("kind", KINDS)
def test_roundtrip_and_tree_matches_init(kind):
    sd, meta = _load(kind)
    config = config_from_state_dict(sd)
    assert expected_torch_shapes(config) == {k: tuple(v.shape) for k, v in sd.items()}
    assert {k: tuple(v[0]) for k, v in meta["arrays"].items() if k.startswith("hypernet/")} == {
        f"hypernet/{k}": tuple(v.shape) for k, v in sd.items()}
    params = torch_to_flax(sd, config)
    back = flax_to_torch(params, config)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    # the mapped tree has exactly the structure and shapes the Flax module creates
    assert _shapes(params) == _shapes(jax.eval_shape(lambda k: init_params(config, k), jax.random.PRNGKey(0)))
    # conversions: Linear weights transposed, EinMix bias squeezed, scalers [1, L, r, 1] -> [L, r]
    p = "aggregator.perceiver.encoder.layers.0.self_attn.q_proj.weight"
    np.testing.assert_array_equal(params["perceiver"]["encoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"],
                                  sd[p].T)
    np.testing.assert_array_equal(params["head"]["layers_0"]["mix1"]["bias"], sd["layers.0.layers.1.bias"][0, :, 0, 0])
    np.testing.assert_array_equal(params["head"]["scaler_B"]["down_proj"], sd["scaler_B.down_proj"][0, :, :, 0])
    np.testing.assert_array_equal(params["head"]["head"]["kernel"][:, 0], sd["head.weight"])


def test_one_error_names_every_problem():
    sd, _ = _load("per_layer_activations")
    config = config_from_state_dict(sd)
    bad = dict(sd)
    del bad["bias_A.down_proj"]
    del bad["aggregator.perceiver.decoder.layernorm.weight"]
    bad["head.weight"] = bad["head.weight"][:, :, :10]
    bad["aggregator.perceiver.encoder.layers.1.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError) as e:
        torch_to_flax(bad, config)
    msg = str(e.value)
    assert "4 problem(s)" in msg
    for key in ("missing: bias_A.down_proj", "missing: aggregator.perceiver.decoder.layernorm.weight",
                "shape mismatch: head.weight is [3, 12, 10], expected [3, 12, 144]",
                "unexpected: aggregator.perceiver.encoder.layers.1.mlp.up_proj.weight"):
        assert key in msg, key
    params = torch_to_flax(sd, config)
    params["head"]["scaler_A"]["down_proj"] = np.zeros((3, 5), np.float32)
    params["head"]["extra"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"(?s)2 problem\(s\).*shape mismatch: head/scaler_A/down_proj.*"
                                         r"unexpected: head/extra"):
        flax_to_torch(params, config)


def test_compile_prefix_and_pickled_objects_are_handled():
    sd, _ = _load("early_exit")
    config = config_from_state_dict(sd)
    wrapped = {f"_orig_mod.{k}": v for k, v in sd.items()}
    wrapped.update(base_model_name_or_path="d2l/tiny_gemma2", hypernet_config=object(), ctx_encoder_args=object())
    a, b = torch_to_flax(wrapped, config), torch_to_flax(sd, config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert config_from_state_dict(wrapped) == config


@pytest.mark.parametrize("variant", ["gemma_main", "gemma_niah", "multi_module_legacy"])
def test_config_inference_from_shapes(variant):
    kw = dict(feature_size=2304, n_layers=26, r=8, d_in={"down_proj": 9216}, d_out={"down_proj": 2304})
    if variant == "gemma_niah":
        kw.update(ctx_encoder_type="early_exit", n_latent_queries=208, num_blocks=8)
    elif variant == "multi_module_legacy":
        kw = dict(feature_size=40, n_layers=2, r=3, d_in={"up_proj": 16, "down_proj": 24},
                  d_out={"up_proj": 24, "down_proj": 16}, latent_size=8, n_latent_queries=5, num_blocks=2,
                  num_self_attn_per_block=1, num_pre_head_layers=4, n_heads=4, head_dim=8, num_key_value_heads=2)
    config = D2LHypernetConfig.create(**kw)
    sd = _fake_state_dict(config)
    heads = {} if variant != "multi_module_legacy" else dict(n_heads=4, head_dim=8)
    assert config_from_state_dict(sd, **heads) == config
    if variant == "multi_module_legacy":
        assert sd["head.weight"].shape == (2, 2, 8, 40)  # [L, M, d, d_lora] with several modules
        assert "aggregator.perceiver.encoder.layers.1.input_context_layernorm.weight" not in sd  # self-attn layer
        rng = np.random.default_rng(0)
        real = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in sd.items()}
        params = torch_to_flax(real, config)
        assert _shapes(params) == _shapes(jax.eval_shape(lambda k: init_params(config, k), jax.random.PRNGKey(0)))
        back = flax_to_torch(params, config)
        for k in real:
            np.testing.assert_array_equal(back[k], real[k], err_msg=k)
    if variant == "gemma_main":
        assert sd["head.weight"].shape == (26, 512, 11520)
        assert sd["layers.0.layers.1.bias"].shape == (1, 26, 1, 1, 2048)
        assert sd["scaler_A.down_proj"].shape == (1, 26, 8, 1)
