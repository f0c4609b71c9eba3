"""``python -m hyperlora_jax.cli.evaluate``: metrics and answer extraction, the toy D2L harness end to end through the
CLI (restored training checkpoint, every baseline, results schema, CD loss falling from its no-context start),
full vs middle-truncated context past the toy window, a converted official D2L checkpoint, the T2L benchmark on the
tiny T2L fixtures (log-likelihood) and its generation scoring with the references' answer extraction (generator
stubbed), and bad input (one line, exit status 2).

Fixtures: the shipped toy base, tests/data/eval (toy_qa.jsonl, t2l_bench.jsonl), tests/data/t2l (run_L, tiny BERT,
tiny llama), tests/data/d2l (golden reference run + tiny gemma2). Compiled programs are shared in-process, so the
CLI runs in-process (``evaluate.main``); one subprocess checks the real exit status.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA
from repo_configs import get_config
from hyperlora_jax.cli import evaluate
from hyperlora_jax.eval import metrics, records

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVAL = os.path.join(DATA, "eval")
D2L_CFG = os.path.join(REPO, "configs", "d2l.py")
T2L_CFG = os.path.join(REPO, "configs", "t2l.py")


# ============================================================================================ metrics
def test_squad_normalisation_f1_and_exact_match():
    assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert metrics.exact_match("the Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert metrics.exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0
    # pred 4 tokens, gold 2, 2 shared: P = 1/2, R = 1 → F1 = 2/3
    assert metrics.token_f1("Eiffel Tower in Paris", "the Eiffel Tower") == pytest.approx(2 / 3)
    # the article "a" is dropped → "b b"; vs "b b x": 2 shared, P = 1, R = 2/3 → 0.8 (max over golds; "b c" → 2/3)
    assert metrics.token_f1("a b b", ["b c", "b b x"]) == pytest.approx(0.8)
    assert metrics.token_f1("nothing shared", "tower") == 0.0
    assert metrics.token_f1("", "") == 1.0 and metrics.token_f1("", "x") == 0.0
    # bag of words, not sets: pred "x x y" vs gold "x y y": common = {x: 1, y: 1} → P = R = 2/3
    assert metrics.token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert metrics.exact_match("An apple", ["apple!", "pear"]) == 1.0  # articles and punctuation go


def test_rouge_l_lcs_and_stemming():
    assert metrics.lcs_length("abcbdab", "bdcaba") == 4
    # pred "the cat sat on mat" vs "the cat was on the mat": LCS = the cat on mat (4); P = 4/5, R = 4/6
    p, r = 4 / 5, 4 / 6
    assert metrics.rouge_l("the cat sat on mat", "The cat was on the mat.") == pytest.approx(2 * p * r / (p + r))
    assert metrics.rouge_l("running dogs", "runs dog") == 1.0            # stems: run dog / run dog
    assert metrics.rouge_l("running dogs", "runs dog", stem=False) == 0.0
    assert metrics.rouge_l("4821", ["0000", "4821"]) == 1.0 and metrics.rouge_l("", "x") == 0.0
    # order matters (LCS, not bag of words): "b a" vs "a b": LCS 1 → P = R = 1/2
    assert metrics.rouge_l("b a", "a b") == pytest.approx(0.5) and metrics.token_f1("b a", "a b") == 1.0
    for w, s in {"caresses": "caress", "ponies": "poni", "relational": "relat", "generalizations": "gener",
                 "hopping": "hop", "filing": "file", "adjustment": "adjust", "controll": "control"}.items():
        assert metrics.porter_stem(w) == s, w


def test_answer_extraction():
    assert metrics.extract_choice("  (B) because ...") == "b"
    assert metrics.extract_choice('"a."') == "a"
    assert metrics.extract_choice("2: the second", ["1", "2"]) == "2"
    assert metrics.extract_choice("???") is None
    assert metrics.extract_last_number("3 apples and 1,250.5 pears") == 1250.5
    assert metrics.number_match("so the answer is 42.", "42") == 1.0
    assert metrics.number_match("42 then 43", 42) == 0.0 and metrics.number_match("none", "1") == 0.0
    assert metrics.extract_yes_no("Well, false.") == "no" and metrics.extract_yes_no("Yes it is") == "yes"


def test_length_bins_and_sampling():
    assert [records.length_bin(x, [128, 512]) for x in (5, 128, 300, 512, 9999)] == \
        ["<128", "128-512", "128-512", ">=512", ">=512"]
    rows = list(range(10))
    s = records.sample(rows, 4, 42)
    assert len(s) == 4 and s == sorted(s) and records.sample(rows, 4, 42) == s and records.sample(rows, 0, 1) == rows


# ============================================================================================ D2L toy, end to end
@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A training workdir of configs/d2l.py:toy holding a step-0 checkpoint (seed 7), and its params."""
    from ml_collections import config_flags  # noqa: F401
    from hyperlora_jax import train
    cfg = _config(D2L_CFG, "toy")
    cfg.num_train_steps, cfg.seed, cfg.async_checkpoints = 0, 7, False
    cfg.eval.lengths = ()
    wd = str(tmp_path_factory.mktemp("d2l_train"))
    out = train.run(cfg, wd)
    import jax
    return wd, jax.device_get(out["state"]["params"])


def _config(path, preset):
    return get_config(path, preset)


def test_cli_toy_d2l_all_methods_from_training_checkpoint(trained_workdir, capsys):
    wd, params = trained_workdir
    rc = evaluate.main([f"--config={D2L_CFG}:toy", "--checkpoint", wd, "--n", "1", "--lengths", "64,256",
                        "--batch_size", "1", "--cd_steps", "40", "--cd_lr", "1e-2", "--max_new_tokens", "6"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rows = json.load(open(os.path.join(wd, "eval", "evaluate.json")))  # --workdir defaults to the training workdir
    assert isinstance(rows, list) and len(rows) == 6 * 2
    for r in rows:
        assert {"suite", "dataset", "method", "length", "exact_match", "rouge_l", "n", "wall_s"} <= set(r)
        assert r["suite"] == "niah" and r["dataset"] == "toy_niah" and r["n"] == 1 and r["wall_s"] >= 0
        assert 0.0 <= r["exact_match"] <= r["rouge_l"] + 1e-9 <= 1.0 + 1e-9
    by = {(r["method"], r["length"]): r for r in rows}
    assert {m for m, _ in by} == {"no_context", "in_context", "in_context_truncated", "d2l", "d2l_wrong_doc",
                                  "cd"}
    assert {L for _, L in by} == {64, 256}
    assert by[("d2l_wrong_doc", 64)]["other_doc_fraction"] == 0.0  # one example per bin: its own is the only one
    assert "step 0" in by[("d2l", 64)]["hypernet"] and by[("d2l", 64)]["adapt_s"] > 0
    # the toy base reads a 64-token sequence in context; without it there is nothing to answer from
    assert by[("in_context", 64)]["exact_match"] == 1.0 and by[("no_context", 64)]["exact_match"] == 0.0
    # the graded view agrees: the gold answer is far likelier with the document in context (nats / token)
    assert all(np.isfinite(r["answer_nll"]) and r["answer_nll"] >= 0 for r in rows)
    assert by[("in_context", 64)]["answer_nll"] + 1.0 < by[("no_context", 64)]["answer_nll"]
    assert "answer_nll: mean negative log-likelihood" in open(os.path.join(wd, "eval", "evaluate.md")).read()
    # truncation only past the native window (W = 128)
    assert by[("in_context_truncated", 64)]["truncated_fraction"] == 0.0
    assert by[("in_context_truncated", 256)]["truncated_fraction"] == 1.0
    # per-document distillation with the document-in-context teacher answers without the document
    cd = by[("cd", 64)]
    assert cd["exact_match"] == 1.0 and cd["cd_steps"] == 40 and cd["adapt_s"] > 0
    assert cd["cd_queries"] == "test question (oracle)"
    # the LoRA starts at B = 0, so cd_first_loss is the no-context student's loss on the teacher's answer
    assert cd["cd_final_loss"] < 0.5 * cd["cd_first_loss"], cd
    assert by[("cd", 256)]["cd_final_loss"] < 0.5 * by[("cd", 256)]["cd_first_loss"]
    md = open(os.path.join(wd, "eval", "evaluate.md")).read()
    assert "| in_context_truncated |" in md and "### niah / toy_niah" in md and md.strip() in out.out
    assert "| adapt s |" in md.splitlines()[2] and not [f for f in os.listdir(os.path.join(wd, "eval"))
                                                          if f.endswith(".tmp")]


def test_restored_params_are_the_checkpoint_and_random_init_is_labelled(trained_workdir, tmp_path, capsys):
    import jax
    from hyperlora_jax.eval import systems
    wd, params = trained_workdir
    cfg = _config(D2L_CFG, "toy")
    ckdir = os.path.join(wd, "checkpoints")  # --checkpoint may name the checkpoints/ directory itself
    restored = systems.load_d2l(cfg, ckdir)
    assert restored.method_name == "d2l" and restored.source == f"training checkpoint {ckdir} step 0"
    same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), restored.d2l.hyper_params, params)
    assert all(jax.tree_util.tree_leaves(same))
    # same shapes as the end-to-end run: the compiled programs are reused
    rc = evaluate.main([f"--config={D2L_CFG}:toy", "--workdir", str(tmp_path), "--n", "1", "--lengths", "64,256",
                        "--batch_size", "1", "--methods", "d2l", "--max_new_tokens", "6", "--name", "random"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "randomly initialised" in out.err
    rows = json.load(open(tmp_path / "eval" / "random.json"))
    assert [r["method"] for r in rows] == ["d2l (random init)"] * 2
    assert all("NOT trained" in r["note"] and r["hypernet"].startswith("random") for r in rows)
    assert "NOT trained" in open(tmp_path / "eval" / "random.md").read()


def test_in_context_full_beats_truncated_past_the_window(trained_workdir):
    """Two 256-token toy examples (twice the native window W = 128) whose needle sits in the middle of the document:
    the full prompt answers, the middle-truncated one has lost the needle; with a budget that fits, truncation is a
    no-op and the answers are the full prompt's."""
    from hyperlora_jax.eval import doc_eval, niah, systems
    from hyperlora_jax.eval.cd import CDOptions
    wd, _ = trained_workdir
    system = systems.load_d2l(_config(D2L_CFG, "toy"), wd)
    tok = system.tok
    ex = [e for e in niah.toy_examples(tok, [256], 5, 1234) if "magic number is " + e.answers[0] in
          e.document[60:-60]][:2]  # seed 1234: depths 0.37 and 0.48
    assert len(ex) == 2
    kw = dict(batch_size=1, max_new_tokens=6, cd=CDOptions())  # the shapes of the end-to-end run
    runs = doc_eval.run_methods(system, ex, ["in_context", "in_context_truncated"], **kw)
    rows = {r["method"]: r for r in doc_eval.score(system, "niah", "t", ex, runs, {256: [0, 1]},
                                                   ("exact_match", "rouge_l"))}
    assert rows["in_context"]["exact_match"] == 1.0
    assert rows["in_context_truncated"]["exact_match"] == 0.0 and rows["in_context_truncated"]["window"] == 128
    assert rows["in_context_truncated"]["truncated_fraction"] == 1.0
    wide = doc_eval.run_methods(system, ex, ["in_context_truncated"], truncate_to=400, warmup=True, **kw)
    assert wide["in_context_truncated"].predictions == runs["in_context"].predictions
    assert wide["in_context_truncated"].extra["timed_after_warmup"] is True
    assert wide["in_context_truncated"].per_example["truncated_fraction"] == [0.0, 0.0]


def test_qa_rows_and_cd_queries(tmp_path):
    from hyperlora_jax.eval import qa
    f = tmp_path / "dumps.jsonl"  # LongBench's "input"; SQuAD / DROP answer objects
    f.write_text('{"context": "c", "input": "q1", "answers": {"text": ["a", "b"], "answer_start": [0, 1]}}\n'
                 '{"context": "c", "question": "q2", "answers": {"spans": ["x"]}}\n')
    assert [(e.prompt, e.answers) for e in qa.file_examples(str(f), None, 0, "{question}")] == \
        [("q1", ("a", "b")), ("q2", ("x",))]
    f.write_text('{"context": "c", "answers": "a"}\n')
    with pytest.raises(records.EvalDataError, match="dumps.jsonl:1: missing field question"):
        qa.file_examples(str(f), None, 0)
    ex = qa.file_examples(os.path.join(EVAL, "toy_qa.jsonl"), None, 0)
    assert [e.answers for e in ex] == [("4821",), ("0375",), ("9164", "9 1 6 4")]
    assert ex[0].prompt.startswith("Answer the following question.") and ex[0].prompt.endswith("magic number?")
    assert ex[0].cd_queries is None and ex[2].cd_queries == tuple(qa.QA_TEMPLATE.format(question=q) for q in
                                                                  ("magic number?", "what is the magic number?"))
    assert len(qa.file_examples(os.path.join(EVAL, "toy_qa.jsonl"), 2, 0, "{question}")) == 2


def test_converted_official_d2l_checkpoint(tmp_path, capsys):
    from hyperlora_jax.cli import convert
    d2l_dir = DATA + "/d2l"
    dst = str(tmp_path / "d2l_conv")
    assert convert.main(["d2l", os.path.join(d2l_dir, "run_per_layer_activations", "checkpoint-1"), dst]) == 0
    capsys.readouterr()
    rc = evaluate.main([f"--config={D2L_CFG}:toy", "--checkpoint", dst,
                        f"--config.model.base_model={os.path.join(d2l_dir, 'tiny_gemma2')}", "--workdir",
                        str(tmp_path), "--suites", "qa", "--qa_file", os.path.join(EVAL, "toy_qa.jsonl"),
                        "--methods", "d2l", "--n", "2", "--max_new_tokens", "4", "--length_bins", "30"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rows = json.load(open(tmp_path / "eval" / "evaluate.json"))
    assert [(r["method"], r["length"]) for r in rows] == [("d2l", "all"), ("d2l", ">=30")]
    d2l = rows[0]
    assert d2l["hypernet"].startswith("converted checkpoint") and d2l["n"] == 2 and "note" not in d2l
    assert {"f1", "exact_match", "rouge_l", "adapt_s", "mean_chunks"} <= set(d2l)


# ============================================================================================ T2L benchmark
@pytest.fixture(scope="module")
def t2l_converted(tmp_path_factory):
    from hyperlora_jax.cli import convert
    dst = str(tmp_path_factory.mktemp("t2l") / "t2l_L")
    assert convert.main(["t2l", os.path.join(DATA, "t2l", "run_L"), dst]) == 0
    return dst


def test_t2l_bench_tiny_fixtures(t2l_converted, tmp_path, capsys):
    bench = os.path.join(EVAL, "t2l_bench.jsonl")
    rc = evaluate.main([f"--config={T2L_CFG}:tiny", "--checkpoint", t2l_converted, "--bench_file", bench,
                        "--workdir", str(tmp_path), "--max_new_tokens", "4", "--batch_size", "8"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rows = json.load(open(tmp_path / "eval" / "evaluate.json"))
    by = {r["method"]: r for r in rows}
    assert set(by) == {"base", "description_in_prompt", "t2l"}
    for r in rows:
        assert r["suite"] == "t2l_bench" and r["dataset"] == "t2l_bench" and r["n"] == 5 and r["length"] is None
        assert 0.0 <= r["accuracy"] <= 1.0 and r["mc_mode"] == "loglik"
        assert round(r["accuracy"] * 5) == pytest.approx(r["accuracy"] * 5)
    assert by["t2l"]["adapters"] == 4 and by["t2l"]["scale"] == "rslora"

    # batched log-likelihood decisions (pairs of different rows and adapters mixed in one batch, padded) equal
    # row-by-row scoring with that row's own adapter
    from hyperlora_jax.eval import answering, t2l_bench
    from hyperlora_jax.eval.systems import load_t2l
    system = load_t2l(_config(T2L_CFG, "tiny"), t2l_converted)
    rows = [r for r in t2l_bench.load_rows(bench, None, 0) if "choices" in r]
    descs = list(dict.fromkeys(r["description"] for r in rows))
    adapter = system.adapters(descs)
    idx = [descs.index(r["description"]) for r in rows]
    prompts = [answering.chat_ids(system.tok, r["prompt"], system.system_turn) for r in rows]
    got, got_norm = t2l_bench._loglik(system, prompts, rows, adapter, idx, batch_size=8)
    for k, r in enumerate(rows):
        one, one_norm = t2l_bench._loglik(system, [prompts[k]], [r], adapter.take([idx[k]]), [0],
                                          batch_size=8)
        assert (one[0], one_norm[0]) == (got[k], got_norm[k])


def test_t2l_bench_generation_scoring_uses_the_reference_extraction(monkeypatch, tmp_path):
    """mc_mode=generate and free-form rows are scored from the generated text by the references' extraction:
    choice label prefix (after stripping :`'"(.) ), last number (GSM8K), first yes/no word (BoolQ), else exact match.
    The generator is stubbed, so the expected accuracy is known exactly; list descriptions expand rows."""
    from types import SimpleNamespace
    from hyperlora_jax.eval import answering, t2l_bench
    f = tmp_path / "b.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"description": ["d1", "d2"], "prompt": "q1", "choices": ["x", "y", "z"], "answer": 1},
        {"description": "d1", "prompt": "q2", "choices": ["x", "y"], "answer": "a", "prefill": "Answer:"},
        {"description": "d1", "prompt": "q3", "answer": "1,250", "answer_type": "number"},
        {"description": "d1", "prompt": "q4", "answer": "True", "answer_type": "yes_no"},
        {"description": "d1", "prompt": "q5", "answer": ["The Cat", "dog"]}]) + "\n")
    rows = t2l_bench.load_rows(str(f), None, 0)
    assert [(r["description"], r["prompt"]) for r in rows][:2] == [("d1", "q1"), ("d2", "q1")] and len(rows) == 6
    texts = {"q1": ["(B) because", "c"], "q2": [" 'a.' "], "q3": ["so 3 then 1,250 apples"],
             "q4": ["Well, yes: it is"], "q5": ["the cat."]}
    served = []

    def fake_generate(params, cfg, tok, prompts, **kw):
        out = []
        for p in prompts:
            served.append(p)
            out.append(texts[p[0]].pop(0))
        return out
    monkeypatch.setattr(answering, "generate_texts", fake_generate)
    monkeypatch.setattr(t2l_bench, "prompt_ids", lambda system, row, m: [row["prompt"], row.get("prefill")])
    system = SimpleNamespace(base_params=None, base_cfg=None, tok=None, dtype=None, method_name="t2l", source="x")
    [row] = t2l_bench.evaluate(system, rows, "b", ["base"], batch_size=4, max_new_tokens=8, mc_mode="generate")
    # q1: "b" right with d1, "c" wrong with d2; q2 "a" right; q3 last number 1250 right; q4 yes = True right; q5 right
    assert row["accuracy"] == pytest.approx(5 / 6) and row["n"] == 6 and row["questions"] == 5
    assert row["mc_mode"] == "generate" and "accuracy_norm" not in row
    assert ["q2", "Answer:"] in served
    with pytest.raises(ValueError, match="unknown multiple-choice mode"):
        t2l_bench.evaluate(system, rows, "b", ["base"], batch_size=4, max_new_tokens=8, mc_mode="sample")


# ============================================================================================ bad input
def test_unknown_dataset_file_exit_2_one_line(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "hyperlora_jax.cli.evaluate", f"--config={D2L_CFG}:toy", "--workdir",
                        str(tmp_path), "--qa_file", str(tmp_path / "nope.jsonl")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: evaluation data file {str(tmp_path / 'nope.jsonl')!r} "
                                             "does not exist"]


def test_checkpoint_of_another_model_and_bad_rows(trained_workdir, t2l_converted, tmp_path, capsys):
    wd, _ = trained_workdir
    rc = evaluate.main([f"--config={D2L_CFG}:toy", "--config.model.r=4", "--checkpoint", wd, "--workdir",
                        str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "different model" in err[0] and "this run has 4" in err[0]
    rc = evaluate.main([f"--config={D2L_CFG}:toy", "--checkpoint", t2l_converted, "--workdir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: --checkpoint {t2l_converted!r} is a T2L checkpoint but the config's method "
                               "is d2l"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "x", "question": "q"}\n')
    with pytest.raises(records.EvalDataError, match=r"bad.jsonl:1: missing field\(s\) answers"):
        from hyperlora_jax.eval import qa
        qa.file_examples(str(bad), None, 0)
    bad.write_text('{"description": "d", "prompt": "p", "choices": ["x", "y"], "answer": "z"}\n')
    from hyperlora_jax.eval import t2l_bench
    with pytest.raises(records.EvalDataError, match="neither a choice index"):
        t2l_bench.load_rows(str(bad), None, 0)
    assert evaluate.main(["--help"]) == 0 and "--truncate_to" in capsys.readouterr().out
    rc = evaluate.main([f"--config={D2L_CFG}:toy", "--workdir", str(tmp_path), "--config.nope=1"])
    assert rc == 2 and "unknown config key" in capsys.readouterr().err
    for flag, val, msg in (("--truncate_to", "1", "--truncate_to must be a token count of at least 2"),
                           ("--n", "0", "--batch_size and --n must be at least 1")):
        rc = evaluate.main([f"--config={D2L_CFG}:toy", "--workdir", str(tmp_path), flag, val])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and msg in err[0], err


def test_d2l_wrong_doc_control_uses_the_next_examples_document(trained_workdir):
    """The control answers example i with the adapter of example i + 1's document (cyclically): with one shared
    question, its predictions are d2l's rotated by one, and every example got another document."""
    import dataclasses

    from hyperlora_jax.eval import doc_eval, niah, systems
    from hyperlora_jax.eval.cd import CDOptions
    wd, _ = trained_workdir
    system = systems.load_d2l(_config(D2L_CFG, "toy"), wd)
    ex = niah.toy_examples(system.tok, [64], 3, 1234)
    ex = [dataclasses.replace(e, prompt=ex[0].prompt) for e in ex]
    assert len({e.document for e in ex}) == 3
    runs = doc_eval.run_methods(system, ex, ["d2l", "d2l_wrong_doc"], batch_size=1, max_new_tokens=6,
                                cd=CDOptions())
    right, wrong = runs["d2l"].predictions, runs["d2l_wrong_doc"].predictions
    assert wrong == right[1:] + right[:1]
    assert runs["d2l_wrong_doc"].per_example["other_doc_fraction"] == [1.0] * 3
    rows = doc_eval.score(system, "niah", "t", ex, runs, {64: [0, 1, 2]}, ("exact_match",))
    assert [r["method"] for r in rows] == ["d2l", "d2l_wrong_doc"]
