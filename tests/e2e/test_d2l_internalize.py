"""D2L context encoder and internalisation against the golden fixtures (float32).

Tolerances: encoder features 1e-5 at valid positions; combined A/B 1e-5; base-model logits with the combined
adapter (plain and scaled) 1e-4, through ``model.forward(..., adapter=...)``.
"""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperlora_jax.d2l.checkpoint_map import config_from_state_dict, torch_to_flax
from hyperlora_jax.d2l.ctx_encoder import encode_jit, kept_layers, truncate
from hyperlora_jax.d2l.internalize import internalize
from hyperlora_jax.io.hf_load import load_model
from hyperlora_jax.model import forward

DATA = pathlib.Path(__file__).parent.parent / "data" / "d2l"
KINDS = ["per_layer_activations", "early_exit"]


@pytest.fixture(scope="module")
def base():
    cfg, params = load_model(str(DATA / "tiny_gemma2"))
    return cfg, params


@pytest.fixture(scope="module", params=KINDS)
def setup(request, base):
    kind = request.param
    z = np.load(DATA / f"{kind}.npz")
    meta = json.loads((DATA / f"{kind}.json").read_text())
    sd = {k[len("hypernet/"):]: z[k] for k in z.files if k.startswith("hypernet/")}
    hcfg = config_from_state_dict(sd, ctx_encoder_type=kind)
    hparams = torch_to_flax(sd, hcfg)
    layer_idx = meta["layer_idx"] if kind == "early_exit" else None
    return kind, z, meta, hcfg, hparams, layer_idx


@functools.partial(jax.jit, static_argnames=("cfg",))
def _fwd(params, ids, adapter, cfg):
    return forward(params, cfg, ids, adapter=adapter)["logits"]


def _logits(base, ids, adapter):
    cfg, params = base
    return np.asarray(_fwd(params, jnp.asarray(ids), adapter, cfg=cfg))


def test_features_match_fixture(base, setup):
    kind, z, meta, _, _, layer_idx = setup
    cfg, params = base
    assert kept_layers(cfg, kind, layer_idx) == meta["ctx_encoder_kept_layers"] == 2
    f = np.asarray(encode_jit(params, cfg, z["ctx_ids"], z["ctx_attn_mask"], encoder_type=kind,
                              layer_idx=layer_idx))
    ref = z["features"]
    assert f.shape == ref.shape
    valid = z["ctx_attn_mask"].astype(bool)
    diff = np.abs(f - ref)
    diff = diff.transpose(0, 2, 1, 3)[valid] if f.ndim == 4 else diff[valid]
    assert diff.max() < 1e-5


def test_truncate_slices_layers(base):
    cfg, params = base
    tp, tc = truncate(params, cfg, 2)
    assert tc.num_layers == 2 and tc.layer_types == cfg.layer_types[:2]
    assert tp["layers"]["mlp"]["down_proj"]["kernel"].shape[0] == 2
    with pytest.raises(ValueError, match="layer_idx must be in"):
        kept_layers(cfg, "early_exit", 0)


@pytest.mark.parametrize("chunk_group", [1, 3])
def test_internalize_matches_fixture(base, setup, chunk_group):
    kind, z, meta, hcfg, hparams, layer_idx = setup
    if kind == "early_exit" and chunk_group == 3:
        pytest.skip("grouping (with a filler row: 4 chunks in groups of 3) is exercised once")
    cfg, params = base
    kw = dict(layer_idx=layer_idx, chunk_group=chunk_group)
    ad = internalize(hparams, hcfg, params, cfg, z["ctx_ids"], z["ctx_attn_mask"], z["n_ctx_chunks"], **kw)
    assert ad.rank == 8 and ad.batch_size == 2
    np.testing.assert_allclose(np.asarray(ad.scale), [meta["lora_alpha"]] * 2, rtol=1e-6)
    for x in ("A", "B"):
        got = np.swapaxes(np.asarray(getattr(ad, x)["down_proj"]), 0, 1)  # [n_docs, L, R, d]
        assert np.abs(got - z[f"combined/{x}/down_proj"]).max() < 1e-5
    assert np.abs(_logits(base, z["query_input_ids"], ad) - z["logits_lora"]).max() < 1e-4
    ads = internalize(hparams, hcfg, params, cfg, z["ctx_ids"], z["ctx_attn_mask"], z["n_ctx_chunks"],
                      chunk_scalers=z["chunk_scalers"], bias_scaler=float(z["bias_scaler"]), **kw)
    for x in ("A", "B"):
        got = np.swapaxes(np.asarray(getattr(ads, x)["down_proj"]), 0, 1)
        assert np.abs(got - z[f"combined_scaled/{x}/down_proj"]).max() < 1e-5
    assert np.abs(_logits(base, z["query_input_ids"], ads) - z["logits_lora_scaled"]).max() < 1e-4


def test_internalize_input_checks(base, setup):
    kind, z, meta, hcfg, hparams, layer_idx = setup
    cfg, params = base
    args = (hparams, hcfg, params, cfg, z["ctx_ids"], z["ctx_attn_mask"])
    with pytest.raises(ValueError, match="sum to the 4 chunk rows"):
        internalize(*args, [1, 2], layer_idx=layer_idx)
    with pytest.raises(ValueError, match="max_chunks=2"):
        internalize(*args, [1, 3], layer_idx=layer_idx, max_chunks=2)
    with pytest.raises(ValueError, match="do not match"):
        internalize(hparams, hcfg, params, cfg.replace(hidden_size=64), z["ctx_ids"], z["ctx_attn_mask"], [1, 3])


def test_adapter_from_chunks_traceable_and_differentiable(base, setup):
    """The traceable core (used by training) under jit + grad, traced n_ctx_chunks, filler-row padding (K=4, G=3)."""
    kind, z, meta, hcfg, hparams, layer_idx = setup
    if kind != "per_layer_activations":
        pytest.skip("exercised once")
    from hyperlora_jax.d2l.internalize import adapter_from_chunks
    cfg, params = base

    def f(hp, n):
        return adapter_from_chunks(hp, params, jnp.asarray(z["ctx_ids"]), jnp.asarray(z["ctx_attn_mask"]), n,
                                   hyper_cfg=hcfg, base_cfg=cfg, max_chunks=3, chunk_group=3)

    val, grads = jax.jit(jax.value_and_grad(lambda hp, n: jnp.sum(f(hp, n).B["down_proj"] ** 2)))(
        hparams, jnp.asarray(z["n_ctx_chunks"], jnp.int32))
    want = float(np.sum(z["combined/B/down_proj"].astype(np.float64) ** 2))
    assert abs(float(val) - want) < 1e-4 * max(1.0, want)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves) and any(np.abs(np.asarray(g)).max() > 0 for g in leaves)


def test_remat_chunks_same_gradients_less_memory(base, setup):
    """remat_chunks recomputes each chunk group's hypernetwork in the backward pass from the saved encoder
    features: the same value and gradients (float32, relative to the largest entry: 1e-5), smaller XLA temporaries."""
    kind, z, meta, hcfg, hparams, layer_idx = setup
    if kind != "per_layer_activations":
        pytest.skip("exercised once")
    from hyperlora_jax.d2l.internalize import adapter_from_chunks
    cfg, params = base
    ids, mask = jnp.asarray(z["ctx_ids"]), jnp.asarray(z["ctx_attn_mask"])
    n = jnp.asarray(z["n_ctx_chunks"], jnp.int32)

    def loss(hp, remat):
        ad = adapter_from_chunks(hp, params, ids, mask, n, hyper_cfg=hcfg, base_cfg=cfg, max_chunks=3,
                                 chunk_group=1, remat_chunks=remat)
        return jnp.sum(ad.B["down_proj"] ** 2) + jnp.sum(jnp.sin(ad.A["down_proj"]))

    fns = {r: jax.jit(jax.value_and_grad(functools.partial(loss, remat=r))) for r in (False, True)}
    (v0, g0), (v1, g1) = fns[False](hparams), fns[True](hparams)
    assert abs(float(v0) - float(v1)) <= 1e-6 * max(1.0, abs(float(v0)))
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-5 * max(np.abs(a).max(), 1e-12)
    temp = {r: f.lower(hparams).compile().memory_analysis().temp_size_in_bytes for r, f in fns.items()}
    assert temp[True] < temp[False]


def test_aggregator_computes_in_bfloat16_head_in_float32(base, setup):
    """bf16 features: the perceiver computes in bf16 (the reference's autocast of the aggregator), the head's
    LayerNorms return to float32; the LoRAs stay close to the float32 run (bf16's 8-bit mantissa through the
    perceiver's layers: within 8% of the largest entry and cosine > 0.998 on this random fixture)."""
    from hyperlora_jax.d2l.hypernet import hypernet_intermediates
    kind, z, meta, hcfg, hparams, layer_idx = setup
    cfg, params = base
    f32 = encode_jit(params, cfg, z["ctx_ids"], z["ctx_attn_mask"], encoder_type=kind, layer_idx=layer_idx)
    mask = jnp.asarray(z["ctx_attn_mask"])
    lo = hypernet_intermediates(hparams, hcfg, f32.astype(jnp.bfloat16), mask)
    hi = hypernet_intermediates(hparams, hcfg, f32, mask)
    assert lo["modality_projection"].dtype == lo["decoder_out"].dtype == jnp.bfloat16
    assert hi["modality_projection"].dtype == jnp.float32
    for m in hcfg.target_modules:
        assert lo[f"A/{m}"].dtype == jnp.float32
        for k in (f"A/{m}", f"B/{m}"):
            a, b = np.asarray(lo[k], np.float64).ravel(), np.asarray(hi[k], np.float64).ravel()
            assert np.abs(a - b).max() <= 8e-2 * np.abs(b).max()
            assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.998
