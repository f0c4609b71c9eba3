"""T2L task-description embeddings (hyperlora_jax.encoders.task_embedding) against the golden fixtures
(tiny_gte_bert, CLS pooling) and sentence-transformers all-MiniLM-L6-v2 (mean pooling)."""
import json
import math
import os
import shutil
import warnings

import numpy as np
import pytest

from hyperlora_jax.packaged import minilm_dir
from hyperlora_jax.encoders.task_embedding import (
    TaskDescriptionEncoder,
    add_full_stop,
    normalize_task_embedding,
    pool_hidden_states,
    resolve_pooling,
)

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "t2l")
TINY_GTE = os.path.join(DATA, "tiny_gte_bert")


@pytest.fixture(scope="module")
def gold():
    with open(os.path.join(DATA, "text_to_lora.json")) as f:
        meta = json.load(f)
    return meta, np.load(os.path.join(DATA, "text_to_lora.npz"))


@pytest.fixture(scope="module")
def enc():
    return TaskDescriptionEncoder.from_pretrained(TINY_GTE)


def test_add_full_stop():
    assert add_full_stop("Translate into French") == "Translate into French."
    assert add_full_stop("  Classify the review.  ") == "Classify the review."
    assert add_full_stop("reply with 42") == "reply with 42"
    assert add_full_stop("Is it true?") == "Is it true?"
    assert add_full_stop("\tSummarise (briefly)\n") == "Summarise (briefly)"
    assert add_full_stop("Résumé en français é") == "Résumé en français é."
    with pytest.raises(ValueError, match="empty"):
        add_full_stop("   ")
    with pytest.raises(TypeError):
        add_full_stop(None)


def test_golden_formatting_and_tokens(enc, gold):
    meta, g = gold
    assert enc.pooling == "cls" and enc.max_length == 64 and enc.embedding_dim == 32
    assert enc.format(meta["descriptions"]) == meta["formatted_descriptions"]
    for i, text in enumerate(meta["descriptions"]):
        tok = enc.tokenize([text])
        n = g[f"desc{i}/input_ids"].shape[1]
        np.testing.assert_array_equal(tok["input_ids"][:, :n], g[f"desc{i}/input_ids"])
        np.testing.assert_array_equal(tok["attention_mask"][:, :n], g[f"desc{i}/attention_mask"])
        np.testing.assert_array_equal(tok["token_type_ids"][:, :n], g[f"desc{i}/token_type_ids"])
        assert not tok["attention_mask"][:, n:].any() and (tok["input_ids"][:, n:] == 0).all()
    tok = enc.tokenize(meta["descriptions"])
    assert tok["input_ids"].shape == (3, 32)  # 22 tokens -> bucket 32
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(tok[k][:, :22], g[f"batch/{k}"])


def test_golden_hidden_states_pooling_and_task_emb(enc, gold):
    meta, g = gold
    # the stored right-padded batch, through the encoder's jitted forward
    h = enc.last_hidden_state(g["batch/input_ids"], g["batch/attention_mask"], g["batch/token_type_ids"])
    cls = np.asarray(pool_hidden_states(h, g["batch/attention_mask"], "cls"))
    for i in range(3):
        p = f"desc{i}/"
        n = g[p + "input_ids"].shape[1]
        np.testing.assert_allclose(h[i, :n], g[p + "last_hidden_state"][0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(cls[i], g[p + "cls_pooled"][0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.asarray(normalize_task_embedding(g[p + "cls_pooled"])), g[p + "task_emb"],
                                   atol=1e-6, rtol=0)
    # end to end from raw text: one batched call, and one description at a time
    emb = enc.embed_descriptions(meta["descriptions"])
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, g["batch/task_emb"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), math.sqrt(32), rtol=1e-6)
    for i in range(3):
        np.testing.assert_allclose(emb[i], g[f"desc{i}/task_emb"][0], atol=1e-5, rtol=0)
    # a single description alone (a str is accepted as a batch of one): (1, 16) bucket
    np.testing.assert_allclose(enc.embed_descriptions(meta["descriptions"][0]), g["desc0/task_emb"], atol=1e-5, rtol=0)
    # from the stored ids, padded further to the same (4, 32) bucket (no new compile; padding is inert)
    padded = {k: np.pad(g[f"batch/{k}"], ((0, 0), (0, 10))) for k in ("input_ids", "attention_mask", "token_type_ids")}
    np.testing.assert_allclose(enc.embed_tokens(**padded), g["batch/task_emb"], atol=1e-5, rtol=0)


def test_buckets_limit_recompiles_and_chunking(gold):
    meta, g = gold
    e = TaskDescriptionEncoder.from_pretrained(TINY_GTE, batch_size=2)
    out = e.embed_descriptions(meta["descriptions"])  # chunks of 2 and 1 -> buckets (2, 16) and (1, 32)
    np.testing.assert_allclose(out, g["batch/task_emb"], atol=1e-5, rtol=0)
    n = e.trace_count
    e.embed_descriptions(["Translate the given sentence", "Classify the movie review"])  # same (2, 16) bucket
    e.embed_descriptions(["Answer the arithmetic word problem and reply with the number 7"])  # (1, 32)
    assert e.trace_count == n
    assert e.embed_descriptions([]).shape == (0, 32)


def test_bad_inputs(enc):
    with pytest.raises(ValueError, match="task description 1 is empty"):
        enc.embed_descriptions(["Translate into French", "", "Classify"])
    with pytest.raises(ValueError, match="task description 0 is empty"):
        enc.embed_descriptions([" \n\t "])
    with pytest.raises(TypeError, match="task description 1 must be a str"):
        enc.embed_descriptions(["ok", 3])
    with pytest.raises(ValueError, match="pooling"):
        TaskDescriptionEncoder.from_pretrained(TINY_GTE, pooling="max")
    with pytest.raises(ValueError, match="exceeds the encoder window 64"):
        TaskDescriptionEncoder.from_pretrained(TINY_GTE, max_length=100)


def test_long_description_is_truncated_with_warning(enc):
    long_text = "translate the given english sentence into french " * 12
    full = enc.tokenizer(add_full_stop(long_text))["input_ids"]
    assert len(full) > 64
    dropped = len(full) - 64
    with pytest.warns(UserWarning, match=f"task description 1 is {len(full)} tokens long.*{dropped} tokens dropped"):
        emb = enc.embed_descriptions(["Classify the review", long_text])
    ref = enc.tokenizer(add_full_stop(long_text), truncation=True, max_length=64, return_tensors="np")
    assert ref["input_ids"].shape == (1, 64)
    short = enc.tokenize(["Classify the review"], pad_to=64)
    expected = enc.embed_tokens(*(np.concatenate([short[k], ref[k]])
                                  for k in ("input_ids", "attention_mask", "token_type_ids")))
    np.testing.assert_allclose(emb, expected, atol=1e-6, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for descriptions that fit
        enc.embed_descriptions(["Classify the review"])


def test_pooling_resolution(tmp_path):
    assert resolve_pooling(TINY_GTE) == "cls"  # the reference's rule: "gte" in the name
    d = tmp_path / "tiny_bert"
    shutil.copytree(TINY_GTE, d)
    with pytest.raises(ValueError, match="pass pooling='cls' or pooling='mean'"):
        resolve_pooling(d)
    assert resolve_pooling(d, "mean") == "mean"
    (d / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling",
                                                 "type": "sentence_transformers.models.Pooling"}]))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True,
                                                             "pooling_mode_cls_token": False}))
    assert resolve_pooling(d) == "mean"
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="unsupported sentence-transformers pooling"):
        resolve_pooling(d)
    sfr = tmp_path / "SFR-Embedding-2_R"
    sfr.mkdir()
    with pytest.raises(NotImplementedError, match="SFR"):
        resolve_pooling(sfr)


def test_mean_pooling_ignores_padding():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    got = np.asarray(pool_hidden_states(h, mask, "mean"))
    np.testing.assert_allclose(got[0], h[0, :3].mean(0), atol=1e-6)
    np.testing.assert_allclose(got[1], h[1].mean(0), atol=1e-6)
    z = np.asarray(normalize_task_embedding(np.zeros((1, 4), np.float32)))
    assert np.all(z == 0)  # eps keeps the zero vector finite


def test_bfloat16_encoder_close_to_float32(enc, gold):
    meta, g = gold
    e16 = TaskDescriptionEncoder.from_pretrained(TINY_GTE, dtype="bfloat16")
    out = e16.embed_descriptions(meta["descriptions"])
    assert out.dtype == np.float32
    cos = np.sum(out * g["batch/task_emb"], axis=1) / 32.0
    assert np.all(cos > 0.99), cos


def test_all_minilm_l6_v2_mean_pooled_embedding():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = minilm_dir()
    e = TaskDescriptionEncoder.from_pretrained(path)
    assert e.pooling == "mean" and e.max_length == 256 and e.embedding_dim == 384
    texts = ["Translate the given English sentence into French",
             "  Classify the sentiment of the movie review as positive or negative.  ",
             "Answer the arithmetic word problem and reply with the number 42",
             "Summarise"]
    emb = e.embed_descriptions(texts)
    # sentence-transformers' computation (Transformer -> Pooling(mean) -> Normalize), in torch, then x sqrt(d)
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tok(e.format(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    ref = (torch.nn.functional.normalize(pooled, p=2, dim=1) * math.sqrt(384)).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), math.sqrt(384), rtol=1e-5)
