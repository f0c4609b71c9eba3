"""The d2l trainer plug-in: objective arithmetic against NumPy, and the toy preset end to end (few steps)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repo_configs import get_config
from hyperlora_jax.methods.d2l import kd_loss, per_doc_mean


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_kd_loss_is_ce_against_unrenormalised_teacher_top_k():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 7, 11)).astype(np.float32), rng.normal(size=(2, 9, 11)).astype(np.float32)
    s_idx, t_idx = np.array([[2, 3, 4], [1, 2, 0]]), np.array([[5, 6, 7], [3, 4, 0]])
    valid = np.array([[1, 1, 1], [1, 1, 0]])
    take = lambda x, i: jnp.take_along_axis(jnp.asarray(x), jnp.asarray(i)[:, :, None], axis=1)
    got = float(kd_loss(take(s, s_idx), take(t, t_idx), jnp.asarray(valid), 4))
    rows = []
    for b in range(2):
        vals = []
        for r in range(3):
            if not valid[b, r]:
                continue
            p = np.exp(_log_softmax(t[b, t_idx[b, r]]))
            top = np.argsort(-p)[:4]  # no renormalisation of the kept mass
            vals.append(-(p[top] * _log_softmax(s[b, s_idx[b, r]])[top]).sum())
        rows.append(np.mean(vals))
    assert abs(got - np.mean(rows)) < 1e-5


def test_per_doc_mean_weights_documents_equally():
    v = jnp.asarray([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0], [9.0, 9.0, 0.0, 0.0]])
    m = jnp.asarray([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], jnp.float32)
    assert float(per_doc_mean(v, m)) == 3.0  # (1 + 5) / 2; the third row has no response tokens


def _toy_config():
    return get_config("d2l", "toy")


def test_toy_preset_trains_and_writes_the_niah_table(tmp_path):
    from hyperlora_jax.train import run
    c = _toy_config()
    c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 8, 1, 0
    c.warmup_steps, c.schedule, c.learning_rate = 0, "constant", 3e-3
    c.eval.lengths, c.eval.n, c.eval.batch_size = (64, 256), 4, 4
    out = run(c, str(tmp_path))
    losses = [json.loads(l)["loss"] for l in open(tmp_path / "metrics.jsonl") if '"loss"' in l]
    assert len(losses) == 8 and np.mean(losses[-2:]) < losses[0]  # it learns the answer format first
    rows = json.load(open(tmp_path / "eval" / "results.json"))
    assert {(r["method"], r["length"]) for r in rows} == {(m, L) for m in ("no_context", "in_context", "d2l")
                                                           for L in (64, 256)}
    assert all(r["n"] == 4 and 0.0 <= r["accuracy"] <= 1.0 for r in rows)
    by = {(r["method"], r["length"]): r["accuracy"] for r in rows}
    assert by[("in_context", 64)] >= 0.75  # the shipped base reads the needle inside its window
    costs = json.load(open(tmp_path / "eval" / "costs.json"))
    assert costs[1]["chunks"] > costs[0]["chunks"] >= 1


def _toy_method(**data):
    from hyperlora_jax.methods.d2l import D2LMethod
    from hyperlora_jax.sharding import make_mesh
    c = _toy_config()
    c.data.update(data)
    return D2LMethod(c, make_mesh(dict(c.mesh)))


def test_toy_curriculum_starts_with_short_one_chunk_documents_then_mixes_chunk_counts():
    m = _toy_method(curriculum_examples=100, batch_chunk_count=False)
    early = [m.example(i) for i in range(0, 10)]
    assert all(int(e["n_chunks"]) == 1 for e in early)
    # the first documents are at most 40 characters plus the template: the needle (26) dominates
    assert max(int(e["ctx_mask"].sum()) for e in early) <= 40 + len(m.affixes)
    grow = [int(m.example(i)["ctx_mask"].sum()) for i in range(90, 100)]
    assert max(grow) > 40 + len(m.affixes)
    late = {int(m.example(i)["n_chunks"]) for i in range(100, 160)}
    assert late == {1, 2, 3, 4}
    # a pure function of the stream position
    np.testing.assert_array_equal(m.example(57)["ctx_ids"], m.example(57)["ctx_ids"])


def test_scaler_b_init_switches_the_generated_path_on_at_step_zero():
    m = _toy_method()
    p = m.init_trainable(jax.random.PRNGKey(0))
    assert all(float(jnp.min(v)) == 1.0 == float(jnp.max(v)) for v in p["head"]["scaler_B"].values())
    m.config.model.scaler_b_init = 0.0  # the reference's init
    p0 = m.init_trainable(jax.random.PRNGKey(0))
    assert all(float(jnp.abs(v).max()) == 0.0 for v in p0["head"]["scaler_B"].values())
    np.testing.assert_array_equal(p0["head"]["scaler_A"]["down_proj"], p["head"]["scaler_A"]["down_proj"])


def test_batch_chunk_count_gives_each_batch_one_chunk_count_and_only_its_slots():
    from hyperlora_jax.methods.d2l_data import collate
    m = _toy_method(batch_chunk_count=True, curriculum_examples=0)
    g = m.config.batch_size
    it = m.data_iterator(0, 1)
    counts = []
    for _ in range(12):
        b = next(it)
        n = set(b["n_chunks"].tolist())
        assert len(n) == 1  # one chunk count per batch
        assert b["ctx_ids"].shape[1] == b["ctx_mask"].shape[1] == n.pop()  # and only that many slots
        counts.append(b["ctx_ids"].shape[1])
    assert len(set(counts)) > 1  # the count varies between batches
    # the trimmed batch gives the same loss as the same documents in all max_chunks padded slots
    b = next(k for k, c in enumerate(counts) if c < m.config.data.max_chunks)
    exs = [m.example(i) for i in range(b * g, (b + 1) * g)]
    full, trimmed = collate(exs), collate(exs, trim_slots=True)
    assert full["ctx_ids"].shape[1] == m.config.data.max_chunks > trimmed["ctx_ids"].shape[1]
    p = m.init_trainable(jax.random.PRNGKey(0))
    lf = m.loss(p, m.frozen(), full, jax.random.PRNGKey(1))[0]
    lt = m.loss(p, m.frozen(), trimmed, jax.random.PRNGKey(1))[0]
    np.testing.assert_allclose(float(lt), float(lf), rtol=1e-5, atol=1e-6)


def test_batch_chunk_count_is_refused_by_sources_without_it():
    with pytest.raises(ValueError, match="batch_chunk_count is not supported by data source 'd2l_qa'"):
        _toy_method(batch_chunk_count=True, source="d2l_qa")
