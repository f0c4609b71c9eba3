"""losses.py and model.segment_positions against direct torch / numpy computations."""
import jax.numpy as jnp
import numpy as np
import torch

from hyperlora_jax import losses
from hyperlora_jax.model import segment_positions

rng = np.random.default_rng(0)
LOGITS = rng.normal(size=(2, 5, 7)).astype(np.float32)
TOK = rng.integers(0, 7, size=(2, 5))
MASK = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], np.float32)


def test_token_ce_label_smoothing_matches_torch():
    for eps in (0.0, 0.1):
        want = torch.nn.functional.cross_entropy(torch.tensor(LOGITS).reshape(-1, 7), torch.tensor(TOK).reshape(-1),
                                                 reduction="none", label_smoothing=eps).reshape(2, 5).numpy()
        np.testing.assert_allclose(np.asarray(losses.token_ce(LOGITS, TOK, eps)), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(losses.next_token_ce(LOGITS, TOK)),
                               np.asarray(losses.token_ce(LOGITS[:, :-1], TOK[:, 1:])), rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(losses.token_logprobs(LOGITS, TOK)),
                               -np.asarray(losses.token_ce(LOGITS, TOK)), rtol=0, atol=0)


def test_log_softmax32_and_pick_match_torch():
    """float32 log-softmax of bf16 logits (torch on the same bf16 values cast to float32), then the id gather: 1e-6."""
    bf = jnp.asarray(LOGITS, jnp.bfloat16)
    got = losses.log_softmax32(bf)
    assert got.dtype == jnp.float32
    want = torch.log_softmax(torch.tensor(np.asarray(bf.astype(jnp.float32))), -1).numpy()
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    ids = rng.integers(0, 7, size=(2, 5, 3))
    np.testing.assert_array_equal(np.asarray(losses.pick(got, ids)), np.take_along_axis(np.asarray(got), ids, -1))


def test_next_token_row_ce_matches_torch():
    """Per-example mean of torch's label-smoothed CE over the loss positions (loss_mask[t] = 1: token t+1 is a
    target), then the mean over examples that have any; float32, 1e-6."""
    loss_mask = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 1], [0, 1, 0, 0, 0]], np.float32)  # row 1: only the unused
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)                                 # last column -> no loss
    tok = rng.integers(0, 7, size=(3, 5))
    for eps in (0.0, 0.1):
        per_row = []
        for b in range(3):
            t = np.nonzero(loss_mask[b, :-1])[0]
            if len(t):
                per_row.append(torch.nn.functional.cross_entropy(torch.tensor(logits[b, t]), torch.tensor(tok[b, t + 1]),
                                                                 label_smoothing=eps).item())
        loss, n = losses.next_token_row_ce(logits, tok, loss_mask, eps)
        np.testing.assert_allclose(float(loss), np.mean(per_row), rtol=1e-6, atol=1e-6)
        assert float(n) == 4


def test_reductions():
    v = rng.normal(size=(2, 5)).astype(np.float32)
    mean, count = losses.token_mean(v, MASK)
    np.testing.assert_allclose(float(mean), (v * MASK).sum() / 3, rtol=1e-6)
    assert float(count) == 3
    np.testing.assert_allclose(float(losses.row_mean(v, MASK)), (v[0] * MASK[0]).sum() / 3, rtol=1e-6)


def test_top_k_kd_matches_numpy():
    teacher = rng.normal(size=(2, 5, 7)).astype(np.float32)
    p = np.exp(teacher - teacher.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    ls = torch.log_softmax(torch.tensor(LOGITS), -1).numpy()
    idx = np.argsort(-p, axis=-1)[..., :3]
    ce = -(np.take_along_axis(p, idx, -1) * np.take_along_axis(ls, idx, -1)).sum(-1)
    want = (ce[0] * MASK[0]).sum() / 3
    np.testing.assert_allclose(float(losses.kd_loss(LOGITS, teacher, MASK, 3)), want, rtol=1e-5)


def test_segment_positions_packed_and_masks():
    seg = np.array([[1, 1, 2, 2, 2, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    want = np.array([[0, 1, 0, 1, 2, 2], [0, 0, 0, 1, 2, 3], [0, 1, 2, 2, 2, 2]])
    np.testing.assert_array_equal(np.asarray(segment_positions(seg)), want)
    m = seg[1:]
    np.testing.assert_array_equal(np.asarray(segment_positions(m)), np.maximum(np.cumsum(m, axis=1) - 1, 0))
