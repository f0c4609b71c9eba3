"""The d2l training sources d2l_qa / niah: a prepared TFDS split → chunk slots + student (and kd teacher) rows."""
import json
import os

import numpy as np
import pytest

from conftest import DATA
from hf_tiny import copy_tokenizer, make_tiny
from repo_configs import config_module

WORDS = "alpha beta gamma delta omega river stone cloud maple cedar".split()


def _config_module():
    return config_module("d2l")

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(tiny chat model dir, tfds dir) with a d2l_qa dataset 't': text contexts with 1-3 QAs, self-generated
    (pre-tokenised) records, one document too long for the chunk budget and one QA too long for query_len."""
    from transformers import AutoTokenizer

    from hyperlora_jax.d2l.context import tokenize_document
    from hyperlora_jax.data import tfds as hd
    from hyperlora_jax.data.tokenize import ChatTokenizer
    root = tmp_path_factory.mktemp("d2l_sources")
    model = make_tiny("llama", str(root / "m"), vocab_size=256)
    copy_tokenizer(model)
    tok = AutoTokenizer.from_pretrained(os.path.join(DATA, "tokenizer"))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        doc = f"Doc {i}: " + " ".join(rng.choice(WORDS, int(rng.integers(2, 16))))
        nq = int(rng.integers(1, 4))
        rows.append({"context": doc, "prompts": [f"Word {j} of doc {i}?" for j in range(nq)],
                     "responses": [str(rng.choice(WORDS)) for _ in range(nq)]})
    rows.append({"context": "Too long: " + " ".join(["stone"] * 80), "prompts": ["Q?"], "responses": ["A"]})
    rows.append({"context": "Short doc.", "prompts": ["Long?", "Ok?"], "responses": ["word " * 60, "yes"]})
    d = root / "in"
    d.mkdir()
    with open(d / "text.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    chat = ChatTokenizer(tok)
    sg = []
    for i in range(4):
        qas = [chat.encode_qa(f"Self {i}.{j}?", f"gen {j}") for j in range(2)]
        sg.append({"ctx_ids": tokenize_document(tok, f"Self-generated document {i} about rivers."),
                   "input_ids": [ids.tolist() for ids, _ in qas],
                   "response_start_end": [[int(np.argmax(t)), len(t)] for _, t in qas]})
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(sg), d / "sg.parquet")
    cfg = hd.D2LQAConfig(name="t", inputs={"train": {"text": str(d / "text.jsonl"), "sg": str(d / "sg.parquet")},
                                           "validation": {"text": str(d / "text.jsonl")}})
    hd.data_source(hd.D2lQa(config=cfg, data_dir=str(root / "tfds")), "train")
    return model, str(root / "tfds")


def _config(world, kind="ce", **data):
    model, tfds_dir = world
    c = _config_module().get_config("gemma2_2b")
    c.model.update(dict(base_model=model, ctx_encoder_type="early_exit", layer_idx=1, r=2, latent_size=16,
                        n_latent_queries=4, num_blocks=1, n_heads=2, head_dim=8, num_kv_heads=1,
                        scaler_b_init=1.0))
    c.loss.update(dict(kind=kind, top_k=4))
    c.data.update(dict(tfds_dir=tfds_dir, tfds_name="d2l_qa/t", split="train", chunk_tokens=40, max_chunks=3,
                       chunk_probs=(0.5, 0.25, 0.25), query_len=64, max_response_tokens=16, teacher_len=0,
                       pack_docs=0))
    c.data.update(data)
    c.compute_dtype, c.batch_size, c.grad_accum_steps, c.num_train_steps = "float32", 4, 1, 3
    c.learning_rate, c.warmup_steps, c.schedule = 3e-3, 0, "constant"
    c.log_every_steps, c.checkpoint_every_steps = 1, 0
    return c


def _method(c):
    from hyperlora_jax.methods.d2l import D2LMethod
    from hyperlora_jax.sharding import make_mesh
    return D2LMethod(c, make_mesh(dict(c.mesh)))


def _full_context(m, ctx_ids, ctx_mask, k):
    """The templated context ids back from k chunk slots (the affixes re-added between chunks removed)."""
    pre, suf = len(m.affixes.prefix), len(m.affixes.suffix)
    chunks = [ctx_ids[j][ctx_mask[j] > 0] for j in range(k)]
    return np.concatenate([c[(pre if j else 0):len(c) - (suf if j < k - 1 else 0)] for j, c in enumerate(chunks)])


def _losses(workdir):
    return [json.loads(l)["loss"] for l in open(os.path.join(workdir, "metrics.jsonl")) if '"loss"' in l]


@pytest.mark.parametrize("kind,pack_docs", [("ce", 0), ("kd", 0), ("kd", 2)])
def test_trains_from_a_prepared_d2l_qa_split(world, tmp_path, kind, pack_docs):
    from hyperlora_jax.train import run
    c = _config(world, kind, pack_docs=pack_docs)
    out = run(c, str(tmp_path))
    losses = _losses(tmp_path)
    assert out["step"] == 3 and len(losses) == 3 and all(np.isfinite(losses)) and 0 < min(losses)
    if kind == "ce":  # deterministic on CPU; the random tiny base is far from its data, the first steps help
        assert losses[-1] < losses[0]
    else:  # batches differ in chunk counts and teachers: only sane (a top-4 CE of a 256-token random model)
        assert max(losses) < 30


def test_packed_batches_of_real_examples_have_the_padded_loss(world):
    """Real source examples (chunked documents, spliced KD teacher rows): packed 2 per row = padded, float32."""
    import jax

    from hyperlora_jax.data.iterators import stack
    from hyperlora_jax.methods.d2l_pack import example_lengths, assign_rows, pack, row_shapes
    c = _config(world, "kd", pack_docs=2)
    c.loss.neftune_alpha = 0.0  # NEFTune's noise depends on the row shapes
    m = _method(c)
    exs = [m.example(i) for i in range(4)]
    lens = [example_lengths(e) for e in exs]
    assert sum(len(x["chunks"]) for x in lens) > 4  # some document has several chunks
    packed = pack(exs, 2, row_shapes([lens], 2))
    order = [i for row in assign_rows(lens, 2) for i in row]
    params = m.init_trainable(jax.random.PRNGKey(0))
    loss = jax.jit(lambda b: m.loss(params, m.base_params, b, jax.random.PRNGKey(1))[0])
    lp, lu = float(loss(packed)), float(loss(stack([exs[i] for i in order])))
    assert abs(lp - lu) <= 2e-5 * max(1.0, abs(lu)), (lp, lu)
    with pytest.raises(ValueError, match="must be a multiple of data.pack_docs 3"):
        _method(_config(world, pack_docs=3))


def test_examples_chunks_skips_and_exact_resume(world):
    m = _method(_config(world))
    ex = m.example
    n = ex.n
    assert n == 16 and m.size is None  # 12 text + 4 self-generated records; the source shuffles per epoch
    exs = [ex(i) for i in range(3 * n)]
    nc = [int(e["n_chunks"]) for e in exs]
    assert set(nc) >= {1, 2} and max(nc) <= 3
    for e in exs:
        k = int(e["n_chunks"])
        assert e["ctx_mask"][:k].any(axis=1).all() and not e["ctx_mask"][k:].any()
        assert e["loss_mask"].sum() >= 1 and e["segment_ids"].sum() <= 64
        # the student's logits are computed only at student_idx: exactly loss_mask's positions
        v = e["resp_valid"] > 0
        assert e["student_idx"].shape == (16,) and not e["student_idx"][~v].any()
        np.testing.assert_array_equal(np.nonzero(e["loss_mask"])[0], e["student_idx"][v])
        assert e["ctx_ids"].shape == (3, 40 + len(m.affixes))
    s = ex.stats.summary()
    assert s["d2l/ctx_too_long"] >= 3 and s["tokenize/qa_too_long"] >= 1 and s["d2l/replaced_by_next_record"] >= 3
    # the over-long document is never trained on, and the over-long QA never either
    texts = [m.tok.decode(e["ctx_ids"][0][e["ctx_mask"][0] > 0]) for e in exs]
    assert not any("Too long" in t for t in texts)
    # several QAs of one context get visited across epochs
    q = {m.tok.decode(e["tokens"][e["segment_ids"] > 0]) for e in exs}
    assert sum("of doc" in t for t in q) > 10 and any("Self" in t for t in q)
    # a pure function of the stream position; a restored iterator yields exactly the remaining batches
    np.testing.assert_array_equal(ex(37)["tokens"], exs[37]["tokens"])
    it = m.data_iterator(0, 1)
    full = [next(it) for _ in range(5)]
    it2 = _method(_config(world)).data_iterator(0, 1)
    it2.set_state({"next_batch": 2, "seed": it.seed, "global_batch": it.global_batch})
    for a, b in zip([next(it2) for _ in range(3)], full[2:]):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("kind", ["ce", "kd"])
def test_responses_longer_than_max_response_tokens_are_skipped_and_counted(world, kind):
    r = min(int(_method(_config(world, kind)).example(i)["loss_mask"].sum()) for i in range(12))
    m = _method(_config(world, kind, max_response_tokens=r))
    exs = [m.example(i) for i in range(12)]
    assert all(0 < e["resp_valid"].sum() == e["loss_mask"].sum() <= r and e["student_idx"].shape == (r,)
               for e in exs)
    with pytest.raises(ValueError, match=r"no usable .*'d2l/response_too_long': \d+"):
        m = _method(_config(world, kind, max_response_tokens=r - 1))
        [m.example(i) for i in range(12)]


def test_kd_teacher_positions_line_up_with_the_student_response(world):
    m = _method(_config(world, "kd"))
    it = m.data_iterator(0, 1)
    seen_sg = seen_text = False
    for _ in range(6):
        b = next(it)
        for r in range(len(b["tokens"])):
            v = b["resp_valid"][r] > 0
            s, t = b["student_idx"][r][v], b["teacher_idx"][r][v]
            assert v.sum() == b["loss_mask"][r].sum() >= 1
            np.testing.assert_array_equal(b["tokens"][r][s + 1], b["teacher_tokens"][r][t + 1])
            np.testing.assert_array_equal(np.nonzero(b["loss_mask"][r])[0], s)  # the CE mask's positions
            # the teacher row starts with the whole templated document (the chunks without their re-added
            # affixes), generation-prompt suffix dropped, and ends with the student's question turn + response
            full = _full_context(m, b["ctx_ids"][r], b["ctx_mask"][r], int(b["n_chunks"][r]))
            suf = len(m.affixes.suffix)
            tt = b["teacher_tokens"][r][b["teacher_segment_ids"][r] > 0]
            np.testing.assert_array_equal(tt[:len(full) - suf], full[:len(full) - suf])
            teacher, query = m.tok.decode(tt), m.tok.decode(b["tokens"][r][b["segment_ids"][r] > 0])
            assert ("Self-generated" in teacher) == ("Self " in query)
            seen_sg |= "Self-generated" in teacher
            seen_text |= "Doc " in teacher
            assert t.min() > s.max() - 1  # the document sits before the question in the teacher row
    assert seen_sg and seen_text


def test_bad_data_config_is_one_clear_error(world, tmp_path):
    with pytest.raises(ValueError, match="needs data.tfds_dir"):
        _method(_config(world, tfds_dir=""))
    with pytest.raises(ValueError, match="does not exist"):
        _method(_config(world, tfds_dir=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match=r"no prepared dataset 'd2l_qa/other'.*d2l_qa/t"):
        _method(_config(world, tfds_name="d2l_qa/other"))
    with pytest.raises(ValueError, match="data.split 'test'.*Unknown split"):
        _method(_config(world, split="test"))
    with pytest.raises(ValueError, match="chunk_probs"):
        _method(_config(world, chunk_probs=(0.25,) * 4))
    with pytest.raises(ValueError, match="no usable"):  # every document is over one 29-token chunk
        _method(_config(world, chunk_tokens=29, max_chunks=1, chunk_probs=(1.0,))).example(0)


def test_published_presets_name_their_tfds_data():
    mod = _config_module()
    for p in ("gemma2_2b", "mistral_7b", "qwen3_4b"):
        d = mod.get_config(p).data
        assert d.source == "d2l_qa" and d.split == "train" and d.tfds_dir == ""
    for p in ("gemma2_2b", "mistral_7b", "qwen3_4b"):              # stage 2 = stage 1's model, chunked data
        s1, s2 = mod.get_config(p), mod.get_config(f"{p}_chunked")
        assert s2.model.to_dict() == s1.model.to_dict() and s2.init_from and not s1.init_from
        assert s2.data.chunk_tokens == 512 and s2.data.max_chunks == len(s2.data.chunk_probs) == 8
        assert abs(sum(s2.data.chunk_probs) - 1.0) < 1e-9
    d = mod.get_config("gemma2_2b_niah").data
    assert d.source == "niah" and d.tfds_name == "niah/reference" and d.split.startswith("train_32_128")


def test_niah_source_reads_a_prepared_niah_split(world, tmp_path):
    from hyperlora_jax.data import tfds as hd
    cfg = hd.NiahConfig(name="n", bins=((16, 64),), train_per_bin=12, val_per_bin=2, test_per_bin=2,
                        noise_block="Grass is green.", needle="Magic number is {magic_number}.",
                        prompt="What is the magic number?", tokens_per_block=4)
    hd.data_source(hd.Niah(config=cfg, data_dir=str(tmp_path)), "train_16_64")
    m = _method(_config(world, source="niah", tfds_dir=str(tmp_path), tfds_name="niah/n", split="train_16_64"))
    for i in range(4):
        e = m.example(i)
        q = m.tok.decode(e["tokens"][e["segment_ids"] > 0])
        answer = m.tok.decode(e["tokens"][1:][e["loss_mask"][:-1] > 0])
        assert "What is the magic number?" in q and answer[:4].isdigit() and len(answer.rstrip()) > 4
        assert f"Magic number is {answer[:4]}." in m.tok.decode(_full_context(m, e["ctx_ids"], e["ctx_mask"],
                                                                             int(e["n_chunks"])))
