"""Decoder logits against transformers (PyTorch, float32). Tolerance: max |Δlogits| ≤ 1e-4."""
import numpy as np
import pytest
import jax.numpy as jnp

from hf_tiny import FAMILIES, load_torch, make_tiny, torch_logits
from hyperlora_jax.io.hf_load import load_model
from hyperlora_jax.model import forward

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory):
    d = make_tiny(request.param, str(tmp_path_factory.mktemp(request.param)))
    cfg, params = load_model(d)
    return request.param, cfg, params, load_torch(d)


def test_logits_match(tiny):
    family, cfg, params, ref = tiny
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, size=(2, 24))  # 24 > gemma2's sliding window of 8
    ours = np.asarray(forward(params, cfg, jnp.asarray(ids))["logits"])
    theirs = torch_logits(ref, ids)
    assert np.abs(ours - theirs).max() <= TOL, family


def test_left_padded_batch(tiny):
    family, cfg, params, ref = tiny
    rng = np.random.default_rng(1)
    ids = rng.integers(0, cfg.vocab_size, size=(3, 20))
    mask = np.ones_like(ids)
    mask[0, :7] = 0
    mask[2, :3] = 0
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    ours = np.asarray(forward(params, cfg, jnp.asarray(ids), positions=jnp.asarray(pos),
                              segment_ids=jnp.asarray(mask))["logits"])
    theirs = torch_logits(ref, ids, attention_mask=mask, position_ids=pos)
    valid = mask.astype(bool)
    assert np.abs(ours - theirs)[valid].max() <= TOL, family


def test_packed_batch(tiny):
    """Two sequences packed in one row (positions restart, attention stays in its segment) equal separate runs."""
    family, cfg, params, ref = tiny
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, cfg.vocab_size, 13), rng.integers(0, cfg.vocab_size, 9)
    ids = np.concatenate([a, b, [0, 0]])[None]
    seg = np.array([[1] * 13 + [2] * 9 + [0, 0]])
    pos = np.array([list(range(13)) + list(range(9)) + [0, 0]])
    ours = np.asarray(forward(params, cfg, jnp.asarray(ids), positions=jnp.asarray(pos),
                              segment_ids=jnp.asarray(seg))["logits"])[0]
    ref_a, ref_b = torch_logits(ref, a[None])[0], torch_logits(ref, b[None])[0]
    assert np.abs(ours[:13] - ref_a).max() <= TOL, family
    assert np.abs(ours[13:22] - ref_b).max() <= TOL, family
