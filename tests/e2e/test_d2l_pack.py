"""Packed D2L batches (methods/d2l_pack.py): same loss and gradients as the padded layout on the same examples."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hyperlora_jax.config import ModelConfig
from hyperlora_jax.d2l.hypernet import D2LHypernetConfig
from hyperlora_jax.d2l.perceiver import Perceiver, PerceiverConfig
from hyperlora_jax.data.iterators import stack
from hyperlora_jax.methods.d2l import D2LMethod
from hyperlora_jax.methods.d2l_pack import (PackedBatchIterator, example_lengths, assign_rows, bucket, pack,
                                            random_example, row_shapes)
from hyperlora_jax.model import init_params as init_base

ATOL = 2e-5  # float32, CPU: packed and padded rows sum attention / norms in a different order
BASE = dict(model_type="llama", vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=2,
            num_kv_heads=1, head_dim=16, max_position_embeddings=256)
HYPER = dict(latent_size=16, n_latent_queries=4, num_blocks=2, n_heads=2, head_dim=8, num_key_value_heads=1)
MAX_CHUNKS, CHUNK_LEN, QUERY_LEN, R = 2, 24, 20, 6


def _method(encoder, kind):
    bc = ModelConfig(**BASE)
    shapes = bc.projection_shapes()
    hc = D2LHypernetConfig.create(feature_size=bc.hidden_size, n_layers=bc.num_layers, r=2,
                                  d_in={"down_proj": shapes["down_proj"][0]},
                                  d_out={"down_proj": shapes["down_proj"][1]}, ctx_encoder_type=encoder, **HYPER)
    cfg = ml_collections.ConfigDict(dict(
        model=dict(chunk_group=1, remat_chunks=False), loss=dict(kind=kind, top_k=4, l1_coef=0.1, neftune_alpha=0.0),
        data=dict(max_chunks=MAX_CHUNKS), remat="none", compute_dtype="float32"))
    base = init_base(bc, jax.random.PRNGKey(0))
    m = D2LMethod.without_data(cfg, bc, hc, base, layer_idx=2 if encoder == "early_exit" else None)
    hyper = m.init_trainable(jax.random.PRNGKey(1))
    # scaler_B = 1 and a non-zero bias_B: the generated and the bias LoRA both reach the loss and the gradients
    head = dict(hyper["head"])
    head["scaler_B"] = {k: jnp.ones_like(v) for k, v in head["scaler_B"].items()}
    head["bias_B"] = {k: 0.05 * jax.random.normal(jax.random.PRNGKey(2), v.shape) for k, v in head["bias_B"].items()}
    return m, base, {**hyper, "head": head}


def _examples(n, kd, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, MAX_CHUNKS + 1))
        chunks = [int(x) for x in rng.integers(3, CHUNK_LEN + 1, k)]
        resp = int(rng.integers(1, R + 1))
        qa = int(rng.integers(resp + 2, QUERY_LEN + 1))
        out.append(random_example(rng, BASE["vocab_size"], chunks, qa, resp, max_chunks=MAX_CHUNKS,
                                  chunk_len=CHUNK_LEN, query_len=QUERY_LEN, max_response=R,
                                  teacher_len=MAX_CHUNKS * CHUNK_LEN + QUERY_LEN if kd else 0))
    return out


def _loss_and_grads(m, base, hyper, batch):
    batch = jax.tree_util.tree_map(jnp.asarray, batch)
    (loss, aux), g = jax.jit(jax.value_and_grad(lambda p: m.loss(p, base, batch, jax.random.PRNGKey(3)),
                                                has_aux=True))(hyper)
    return float(loss), aux, g


@pytest.mark.parametrize("encoder,kind", [("per_layer_activations", "kd"), ("early_exit", "ce")])
def test_packed_batch_has_the_padded_loss_and_gradients(encoder, kind):
    m, base, hyper = _method(encoder, kind)
    exs = _examples(6, kind == "kd")
    shapes = row_shapes([[example_lengths(e) for e in exs]], 3)
    packed = pack(exs, 3, shapes)
    assert packed["ctx_tokens"].shape[0] == 2 and packed["ctx_tokens"].shape[1] < 3 * MAX_CHUNKS * CHUNK_LEN
    # the packed row holds every chunk token once
    assert int((packed["ctx_segment_ids"] > 0).sum()) == sum(int(e["ctx_mask"].sum()) for e in exs)
    # packing reorders documents into rows; the padded reference gets them in the packed order
    order = [i for row in assign_rows([example_lengths(e) for e in exs], 3) for i in row]
    loss_p, aux_p, g_p = _loss_and_grads(m, base, hyper, packed)
    loss_u, aux_u, g_u = _loss_and_grads(m, base, hyper, stack([exs[i] for i in order]))
    assert abs(loss_p - loss_u) <= ATOL * max(1.0, abs(loss_u)), (loss_p, loss_u)
    assert abs(float(aux_p["l1"]) - float(aux_u["l1"])) <= ATOL
    assert float(aux_p["task_loss"]) > 0.1
    flat_p, flat_u = jax.tree_util.tree_leaves(g_p), jax.tree_util.tree_leaves(g_u)
    gmax = max(float(jnp.abs(x).max()) for x in flat_u)
    assert gmax > 1e-4  # the gradients are not all zero
    for a, b in zip(flat_p, flat_u):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=ATOL * max(1.0, gmax), rtol=1e-4)


def test_packed_perceiver_rows_equal_each_segment_alone():
    c = PerceiverConfig(input_size=12, hidden_size=16, n_latents=3, n_output_queries=5, num_blocks=2, n_heads=2,
                        head_dim=8, num_key_value_heads=1)
    rng = np.random.default_rng(0)
    lens = [5, 9, 4]
    x = jnp.asarray(rng.normal(size=(1, 24, 12)), jnp.float32)
    seg = np.zeros((1, 24), np.int32)
    seg[0, :18] = np.repeat([1, 2, 3], lens)
    model = Perceiver(c)
    params = model.init(jax.random.PRNGKey(0), x, jnp.ones((1, 24)))["params"]
    out = model.apply({"params": params}, x, jnp.asarray(seg), 4)  # 4 slots, the last one empty
    assert out.shape == (1, 4, 5, 16)
    start = 0
    for s, n in enumerate(lens):
        alone = model.apply({"params": params}, x[:, start:start + n], jnp.ones((1, n)))
        np.testing.assert_allclose(np.asarray(out[0, s]), np.asarray(alone[0]), atol=1e-5)
        start += n


def test_rows_are_balanced_and_shapes_come_from_every_host():
    lens = [{"chunks": [n], "qa": 10} for n in (100, 90, 80, 20, 10, 5, 60, 40)]
    rows = assign_rows(lens, 4)
    assert sorted(i for r in rows for i in r) == list(range(8)) and all(len(r) == 4 for r in rows)
    loads = [sum(lens[i]["chunks"][0] for i in r) for r in rows]
    assert max(loads) - min(loads) <= 20  # LPT: 200 / 205 instead of e.g. 290 / 115 in stream order
    other = [{"chunks": [300], "qa": 50}] + lens[1:]
    s = row_shapes([lens, other], 4)
    assert s["ctx_len"] >= 300 + 40 and s["query_len"] >= 50 and s["n_slots"] == 4
    assert bucket(300) == 320 and bucket(1) == 16 and bucket(4096) == 4096 and bucket(4097) == 4608


def test_iterator_gives_every_host_the_same_shapes_and_disjoint_examples():
    def source(i):
        rng = np.random.default_rng(i)
        n = int(rng.integers(3, CHUNK_LEN + 1))
        ex = random_example(rng, 50, [n], 8, 2, max_chunks=1, chunk_len=CHUNK_LEN, query_len=QUERY_LEN,
                            max_response=R)
        ex["ctx_ids"][0, 0] = 1000 + i  # tag
        return ex
    its = [PackedBatchIterator(source, None, 8, docs_per_row=2, seed=0, process_index=h, process_count=2)
           for h in range(2)]
    for _ in range(3):
        a, b = next(its[0]), next(its[1])
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
        tags = lambda x: set(int(t) for t in x["ctx_tokens"].reshape(-1) if t >= 1000)
        assert len(tags(a)) == 4 and len(tags(b)) == 4 and not tags(a) & tags(b)
    with pytest.raises(ValueError, match="pack_docs 3 must divide the per-host batch 4"):
        PackedBatchIterator(source, None, 8, docs_per_row=3, process_count=2)
