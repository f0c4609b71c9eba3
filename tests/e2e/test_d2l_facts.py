"""Generated fictional-fact documents (toy/fictional_facts.py), the d2l source ``fictional_facts`` and the
configs/d2l.py:smollm2 preset (smoke: a few KD steps on a tiny chat model standing in for SmolLM2)."""
import json

import numpy as np
import pytest

from hf_tiny import copy_tokenizer, make_tiny
from hyperlora_jax.toy.fictional_facts import FictionalFacts
from repo_configs import config_module


def _config_module():
    return config_module("d2l")

def test_records_are_deterministic_varied_and_answerable():
    world = FictionalFacts(500, seed=3, min_facts=2, max_facts=5)
    assert len(world) == 500 and world[17] == FictionalFacts(500, seed=3, min_facts=2, max_facts=5)[17]
    assert world[17] != FictionalFacts(500, seed=4, min_facts=2, max_facts=5)[17]
    recs = [world[i] for i in range(500)]
    assert len({r["context"] for r in recs}) == 500
    openings = {r["context"].split(" is ", 1)[1].split(".")[0] for r in recs}
    assert len(openings) > 4                      # towns (with their river), people, species, ships
    for r in recs:
        assert 2 <= len(r["prompts"]) == len(r["responses"]) <= 5
        assert len(set(r["prompts"])) == len(r["prompts"])
        for q, a in zip(r["prompts"], r["responses"]):
            assert a and a in r["context"] and q.endswith("?")
    answers = [a for r in recs for a in r["responses"]]
    assert len(set(answers)) > 600                # mostly invented names and numbers, not a small closed set


def test_bad_world_parameters():
    with pytest.raises(ValueError, match="number of documents must be >= 1"):
        FictionalFacts(0)
    with pytest.raises(ValueError, match="min_facts <= max_facts <= 7"):
        FictionalFacts(10, min_facts=5, max_facts=3)
    with pytest.raises(IndexError):
        FictionalFacts(10)[10]


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    d = make_tiny("llama", str(tmp_path_factory.mktemp("facts") / "m"), vocab_size=256)
    copy_tokenizer(d)
    return d


def _smoke_config(base_model):
    c = _config_module().get_config("smollm2")
    assert (c.data.source, c.loss.kind, c.model.ctx_encoder_type) == ("fictional_facts", "kd", "early_exit")
    c.model.update(dict(base_model=base_model, layer_idx=1, latent_size=16, n_latent_queries=4, num_blocks=1,
                        n_heads=2, head_dim=8, num_kv_heads=1))
    c.loss.top_k = 4
    c.data.update(dict(chunk_tokens=96, num_documents=64, max_facts=4, query_len=128, max_response_tokens=24,
                       max_entities=1, pack_docs=2))
    c.compute_dtype, c.batch_size, c.num_train_steps = "float32", 4, 3
    c.learning_rate, c.warmup_steps, c.schedule = 3e-3, 0, "constant"
    c.log_every_steps, c.checkpoint_every_steps = 1, 0
    return c


def test_source_builds_kd_examples(tiny_chat_model):
    """Student row: question + answer; teacher row: the document (stating the answer) + the same question and
    answer, its response positions predicting the same tokens; documents chunked 1..max_chunks, nothing skipped."""
    from hyperlora_jax.methods.d2l import D2LMethod
    from hyperlora_jax.sharding import make_mesh
    c = _smoke_config(tiny_chat_model)
    m = D2LMethod(c, make_mesh(dict(c.mesh)))
    chunk_counts = set()
    for i in range(12):
        ex = m.example(i)
        r = int(ex["resp_valid"].sum())
        s_tok = ex["tokens"][ex["student_idx"][:r] + 1]
        np.testing.assert_array_equal(s_tok, ex["teacher_tokens"][ex["teacher_idx"][:r] + 1])
        answer = m.tok.decode(s_tok, skip_special_tokens=True).strip()
        student = m.tok.decode(ex["tokens"][ex["segment_ids"] > 0])
        teacher = m.tok.decode(ex["teacher_tokens"][ex["teacher_segment_ids"] > 0])
        assert answer and student.count(answer) == 1 and teacher.count(answer) >= 2
        chunk_counts.add(int(ex["n_chunks"]))
    assert chunk_counts <= set(range(1, c.data.max_chunks + 1)) and len(chunk_counts) > 1
    assert not [k for k in m.example.stats.summary() if k.startswith("d2l/")]


def test_smollm2_preset_trains_a_few_kd_steps(tiny_chat_model, tmp_path):
    from hyperlora_jax.train import run
    c = _smoke_config(tiny_chat_model)
    out = run(c, str(tmp_path))
    losses = [json.loads(l)["loss"] for l in open(tmp_path / "metrics.jsonl") if '"loss"' in l]
    assert out["step"] == 3 and len(losses) == 3 and all(np.isfinite(losses)) and min(losses) > 0


def test_multi_entity_records():
    """max_entities > 1: paragraphs joined by blank lines, questions over all of them, answers stated in the text;
    max_entities == 1 keeps the single-entity records exactly."""
    single = FictionalFacts(50, seed=5)
    assert FictionalFacts(50, seed=5, min_entities=1, max_entities=1)[7] == single[7]
    world = FictionalFacts(50, seed=5, min_entities=2, max_entities=3)
    counts = set()
    for i in range(20):
        r = world[i]
        paras = r["context"].split("\n\n")
        counts.add(len(paras))
        assert len(r["prompts"]) == len(r["responses"]) >= 3 * len(paras)
        assert all(a in r["context"] for a in r["responses"])
    assert counts == {2, 3}
    with pytest.raises(ValueError, match="min_entities <= max_entities"):
        FictionalFacts(10, min_entities=3, max_entities=2)


def test_facts_eval_examples_bounded_by_length(tiny_chat_model):
    """facts suite documents stay within the requested token count, grow with it, and hold the answer."""
    from transformers import AutoTokenizer

    from hyperlora_jax.eval.facts import facts_examples
    tok = AutoTokenizer.from_pretrained(tiny_chat_model)
    ex = facts_examples(tok, [200, 800], 6, seed=3)
    assert [e.length for e in ex] == [200] * 6 + [800] * 6
    n_tok = [len(tok(e.document, add_special_tokens=False)["input_ids"]) for e in ex]
    assert all(n <= e.length for n, e in zip(n_tok, ex) if "\n\n" in e.document)
    assert np.mean(n_tok[6:]) > 2 * np.mean(n_tok[:6])
    assert all(e.answers[0] in e.document and e.prompt.endswith("?") for e in ex)
    assert facts_examples(tok, [200], 2, seed=3) == ex[:2]  # a pure function of (seed, length, index)


def test_contains_metric():
    from hyperlora_jax.eval.metrics import contains
    assert contains("It was founded in 1743.", ["1743"]) == 1.0
    assert contains("1743", ["17"]) == 0.0
    assert contains("The hull is painted Cobalt", ("cobalt",)) == 1.0
    assert contains("", ["x"]) == 0.0


def test_evaluate_facts_suite(tiny_chat_model, tmp_path):
    """The evaluate CLI's facts suite: rows per method x length with exact_match / f1 / contains and doc_tokens."""
    from hyperlora_jax.cli.evaluate import main
    rc = main(["--config=configs/d2l.py:smollm2", f"--config.model.base_model={tiny_chat_model}",
               "--config.model.layer_idx=1", "--config.model.latent_size=16", "--config.model.num_blocks=1",
               "--config.model.n_heads=2", "--config.model.head_dim=8", "--config.model.num_kv_heads=1",
               "--config.data.chunk_tokens=96", "--config.compute_dtype=float32", "--suites=facts",
               "--lengths=200,600", "--n=2", "--methods=no_context,in_context,d2l", "--max_new_tokens=3",
               f"--workdir={tmp_path}"])
    assert rc == 0
    rows = json.load(open(tmp_path / "eval" / "evaluate.json"))
    assert {(r["method"].split(" ")[0], r["length"]) for r in rows} == {
        (m, L) for m in ("no_context", "in_context", "d2l") for L in (200, 600)}
    for r in rows:
        assert r["suite"] == "facts" and r["n"] == 2 and 0 <= r["contains"] <= 1 and r["doc_tokens"] <= r["length"]


def test_closed_answers_world():
    """closed_answers=True: every answer is a closed-list word stated in its document, at most 3 facts per entity,
    all four entity kinds still occur; the default world keeps its invented names and numbers."""
    from hyperlora_jax.toy.fictional_facts import CLOSED_VALUES

    world = FictionalFacts(200, seed=2, min_facts=1, max_facts=7, closed_answers=True)
    openings = set()
    for i in range(200):
        r = world[i]
        assert 1 <= len(r["responses"]) <= 3
        assert all(a in CLOSED_VALUES and a in r["context"] for a in r["responses"])
        openings |= {k for k in ("a town", "an inventor", "a species", "a merchant ship") if k in r["context"]}
    assert len(openings) == 4
    default = FictionalFacts(50, seed=2)
    assert any(a not in CLOSED_VALUES for i in range(50) for a in default[i]["responses"])
