"""Tokenisation, packing, checkpointable per-host iteration and bad-row counting of the input pipeline."""
import os

import jax
import numpy as np
import pytest

from conftest import DATA
from hyperlora_jax.data.packing import PackConfig, PackedIterator, segment_nll
from hyperlora_jax.data.stats import DataStats
from hyperlora_jax.data.tokenize import ChatTokenizer, D2LTokenizeConfig, D2LTokenizer

TOK = os.path.join(DATA, "tokenizer")


@pytest.fixture(scope="module")
def chat():
    return ChatTokenizer(TOK)


def records(n, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    out = []
    for i in range(n):
        ctx = " ".join(rng.choice(words, rng.integers(3, 30)))
        nq = int(rng.integers(1, 4))
        out.append({"context": f"doc {i}: {ctx}", "prompts": [f"q{i}.{j}?" for j in range(nq)],
                    "responses": [" ".join(rng.choice(words, rng.integers(1, 4))) for _ in range(nq)]})
    return out


def test_templates_and_masks(chat):
    ids, target = chat.encode_qa("  Where?  ", "Here")
    assert chat.tok.decode(ids[target]) == "Here<|eot_id|>"
    assert chat.tok.decode(ids[~target]).endswith("Where?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    ctx = chat.tok.decode(chat.encode_context("  a doc "))
    assert ctx.startswith("<|begin_of_text|><|start_header_id|>system") and "a doc<|eot_id|>" in ctx
    assert ctx.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_context_overflow_chunked_or_truncated_and_counted(chat):
    rec = {"context": "word " * 80, "prompt": "q?", "response": "a"}
    full = chat.encode_context(rec["context"])
    calls = []

    def chunker(ids, rng):  # stand-in for hyperlora_jax.d2l.context's reference chunking
        calls.append(len(ids))
        return [ids[i:i + 100] for i in range(0, len(ids), 100)]
    stats = DataStats()
    mk = lambda chunk_len, ctx_len: D2LTokenizer(chat, D2LTokenizeConfig(
        max_ctx_len=ctx_len, max_chunk_len=chunk_len, ctx_overflow="chunk", chunker=chunker, max_qas_len=64))
    (s,) = mk(len(full), 1000)(rec, np.random.default_rng(0), stats)
    assert calls == [] and len(s.ctx_chunks) == 1  # within the limit: untouched
    (s,) = mk(len(full) - 1, 1000)(rec, np.random.default_rng(0), stats)
    assert calls == [len(full)] and len(s.ctx_chunks) == -(-len(full) // 100) and stats["tokenize/ctx_chunked"] == 1
    np.testing.assert_array_equal(np.concatenate(s.ctx_chunks), full)
    (s,) = mk(100, 250)(rec, np.random.default_rng(0), stats)  # chunks still over the row budget: trailing cut
    assert len(s.ctx_chunks) == 2 and stats["tokenize/ctx_chunks_truncated"] == 1
    (s,) = D2LTokenizer(chat, D2LTokenizeConfig(max_ctx_len=101, max_qas_len=64))(rec, None, stats)
    np.testing.assert_array_equal(s.ctx_chunks[0], np.concatenate([full[:50], full[-50:]]))  # reference middle cut
    (s,) = D2LTokenizer(chat, D2LTokenizeConfig(max_ctx_len=60, ctx_overflow="truncate_left",
                                                max_qas_len=64))(rec, None, stats)
    np.testing.assert_array_equal(s.ctx_chunks[0], full[-60:])
    assert stats["tokenize/ctx_truncated"] == 2
    with pytest.raises(ValueError):
        D2LTokenizer(chat, D2LTokenizeConfig(ctx_overflow="chunk"))


def test_bad_rows_are_counted_not_fatal(chat):
    good = records(3)
    bad = [{"context": "", "prompt": "q", "response": "a"}, {"context": "c", "prompt": "q", "response": None},
           {"context": None, "prompt": "q", "response": "a"}, {"context": "c", "prompt": 5, "response": "a"},
           {"context": "c", "prompts": ["q1", "q2"], "responses": ["   "]},
           {"context": "c", "prompt": "q", "response": "long " * 100},
           {"ctx_ids": [1, 2], "qa_ids": [1, 2, 3], "qa_lens": [5], "response_start_end": [[0, 1]]}]
    src = good + bad
    it = PackedIterator(src, len(src), D2LTokenizer(chat, D2LTokenizeConfig(max_ctx_len=512, max_qas_len=128)),
                        PackConfig(seq_len=128, ctx_len=512), 2, num_epochs=1, shuffle=False)
    rows = [r for b in it for r in b["qa_example"].reshape(-1) if r >= 0]
    s = it.stats.summary()
    assert s["tokenize/empty_context"] == 1 and s["tokenize/missing_answer"] == 3 and s["tokenize/non_text"] == 2
    assert s["tokenize/qa_too_long"] == 1 and s["tokenize/bad_token_record"] == 1
    assert sorted(set(rows)) == [0, 1, 2] and s["pack/examples"] == len(src)


@pytest.fixture(scope="module")
def tiny_model(chat):
    from hyperlora_jax.config import ModelConfig
    from hyperlora_jax.model import init_params
    from hyperlora_jax.tiny import tiny_hf_config
    cfg = ModelConfig.from_hf_dict(tiny_hf_config(len(chat.tok)))
    return cfg, init_params(cfg, jax.random.PRNGKey(0))


def _losses(it, cfg, params):
    from hyperlora_jax.model import forward
    out = {}
    fwd = jax.jit(lambda p, t, pos, seg: forward(p, cfg, t, positions=pos, segment_ids=seg)["logits"])
    for b in it:
        logits = fwd(params, b["tokens"], b["positions"], b["segment_ids"])
        loss, n = segment_nll(logits, b["tokens"], b["loss_mask"], b["segment_ids"], b["qa_example"].shape[1])
        for r in range(len(b["tokens"])):
            for s in range(b["qa_example"].shape[1]):
                if b["qa_doc"][r, s]:
                    key = (int(b["qa_example"][r, s]), int(n[r, s]))
                    out.setdefault(key, []).append(float(loss[r, s]))
    return out


def test_packed_and_unpacked_give_the_same_per_example_loss(chat, tiny_model):
    src = records(12, seed=1)
    tk = D2LTokenizer(chat, D2LTokenizeConfig(max_ctx_len=256, max_qas_len=64))
    mk = lambda packed: PackedIterator(src, len(src), tk, PackConfig(seq_len=192, ctx_len=1024, max_segments=8,
                                                                     max_ctx_segments=8, packed=packed),
                                       4, num_epochs=1, window=16)
    packed, unpacked = mk(True), mk(False)
    lp, lu = _losses(packed, *tiny_model), _losses(unpacked, *tiny_model)
    assert packed.stats["pack/rows"] < unpacked.stats["pack/rows"]  # packing actually packed
    assert sorted(lp) == sorted(lu) and {e for e, _ in lp} == set(range(len(src)))
    assert sum(len(v) for v in lp.values()) == sum(len(r["prompts"]) for r in src)
    for k in lp:
        np.testing.assert_allclose(sorted(lp[k]), sorted(lu[k]), atol=1e-5, rtol=0)


def _drain(it):
    return [{k: v.copy() for k, v in b.items()} for b in it]


def test_restored_iterator_yields_exactly_the_remaining_batches(chat):
    src = records(40, seed=2) + [{"context": "", "prompt": "q", "response": "a"}]
    tk = D2LTokenizer(chat, D2LTokenizeConfig(max_ctx_len=256, max_qas_len=64))
    mk = lambda: PackedIterator(src, len(src), tk, PackConfig(seq_len=128, ctx_len=512), 3, seed=5, window=8,
                                num_epochs=2)
    full = _drain(mk())
    for cut in (1, 4, len(full) - 1):
        it = mk()
        for _ in range(cut):
            next(it)
        state = it.get_state()
        resumed = mk()
        resumed.set_state(state)
        rest = _drain(resumed)
        assert len(rest) == len(full) - cut
        for a, b in zip(rest, full[cut:]):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
    # the counters continue where the saved run left them
    ref = mk()
    _drain(ref)
    it = mk()
    next(it)
    resumed = mk()
    resumed.set_state(it.get_state())
    _drain(resumed)
    assert resumed.stats.summary() == ref.stats.summary() and ref.stats["tokenize/empty_context"] == 2


def test_two_hosts_disjoint_and_covering(chat):
    src = records(30, seed=3)
    tk = D2LTokenizer(chat, D2LTokenizeConfig(max_ctx_len=256, max_qas_len=64, max_qas_per_sample=8))
    seen = []
    for p in range(2):
        it = PackedIterator(src, len(src), tk, PackConfig(seq_len=256, ctx_len=512), 2, seed=9, window=4,
                            process_index=p, process_count=2, num_epochs=1)
        seen.append({int(e) for b in it for e in b["qa_example"].reshape(-1) if e >= 0})
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(len(src)))
    # deterministic order from the seed; a different seed reorders
    a = PackedIterator(src, len(src), tk, PackConfig(seq_len=256, ctx_len=512), 2, seed=9, num_epochs=1)
    b = PackedIterator(src, len(src), tk, PackConfig(seq_len=256, ctx_len=512), 2, seed=10, num_epochs=1)
    assert a.local_examples(0, 30) != b.local_examples(0, 30)
    assert sorted(a.local_examples(0, 30)) == list(range(30))


def test_teacher_topk_aligned_with_predicting_position(chat):
    k = 3
    ids = [[0, 7, 8, 9, 10], [0, 11, 12]]
    rec = {"ctx_ids": np.array([0, 5, 6]), "qa_ids": np.concatenate(ids), "qa_lens": np.array([5, 3]),
           "response_start_end": np.array([[3, 5], [1, 3]]),
           "logprobs_vals": -np.arange(4 * k, dtype=np.float16).reshape(4, k),
           "logprobs_indices": np.arange(4 * k, dtype=np.int32).reshape(4, k)}
    it = PackedIterator([rec], 1, D2LTokenizer(chat, D2LTokenizeConfig(max_ctx_len=16, max_qas_len=8, top_k=k,
                                                                          max_qas_per_sample=2)),
                        PackConfig(seq_len=16, ctx_len=16, top_k=k), 1, num_epochs=1)
    b = next(it)
    np.testing.assert_array_equal(b["loss_mask"][0, :8], [0, 0, 1, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(b["topk_ids"][0, 2], [0, 1, 2])   # predicts token 3 (first response token)
    np.testing.assert_array_equal(b["topk_ids"][0, 6], [9, 10, 11])  # second QA, predicts its token 2
    np.testing.assert_array_equal(b["qa_doc"][0, :3], [1, 1, 0])
    np.testing.assert_array_equal(b["ctx_tokens"][0, :3], [0, 5, 6])


def test_template_without_generation_tags_masks_the_answer(tmp_path, chat):
    from hyperlora_jax.tiny import build_char_tokenizer
    build_char_tokenizer(str(tmp_path))
    plain = ChatTokenizer(str(tmp_path))
    assert not plain.has_generation_mask and chat.has_generation_mask
    for c in (plain, chat):
        ids, target = c.encode_qa("Q?", "Ans")
        assert c.tok.decode(ids[target]) == "Ans<|eot_id|>"


def test_reference_chunker_plugs_in(chat):
    from hyperlora_jax.data.tokenize import reference_chunker
    rec = {"context": "word " * 80, "prompt": "q?", "response": "a"}
    stats = DataStats()
    cfg = D2LTokenizeConfig(max_ctx_len=2048, max_chunk_len=64, ctx_overflow="chunk",
                            chunker=reference_chunker(chat, 64), max_qas_len=64)
    (s,) = D2LTokenizer(chat, cfg)(rec, np.random.default_rng(0), stats)
    full = chat.encode_context(rec["context"])
    assert len(s.ctx_chunks) > 1 and stats["tokenize/ctx_chunked"] == 1
    np.testing.assert_array_equal(s.ctx_chunks[0][:10], full[:10])
    np.testing.assert_array_equal(s.ctx_chunks[-1][-5:], full[-5:])
