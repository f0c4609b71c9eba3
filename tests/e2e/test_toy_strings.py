"""The T2L toy world (string tasks): task functions, the description splits, the shipped string base and LoRAs, and
``configs/t2l.py:toy`` end to end (2 steps, tiny evaluation) into a well-formed WORKDIR/eval/results.json."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperlora_jax.toy import string_tasks as st
from repo_configs import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(name: str, preset: str):
    return get_config(name, preset)

# ============================================================================================ tasks and splits
@pytest.mark.parametrize("task, word, answer", [
    ("copy", "hello", "hello"), ("reverse", "hello", "olleh"), ("sort", "dcab", "abcd"), ("double", "cat", "cat cat"),
    ("first_letter", "cat", "c"), ("length", "banana", "6"), ("spaced", "abc", "a b c"), ("caesar", "xyz", "yza"),
    ("mirror", "abc", "abccba"), ("dedupe", "banana", "ban"), ("drop_vowels", "banana", "bnn"),
    ("vowel_star", "banana", "b*n*n*"), ("parens", "cat", "(cat)"), ("exclaim", "cat", "cat!"),
    ("ing", "walk", "walking"), ("hashtag", "cat", "#cat"), ("plural", "cat", "cats"), ("half", "abcde", "abc"),
    ("half", "abcd", "ab"), ("dotcom", "cat", "cat.com"), ("leet", "toast", "70457"), ("hello", "cat", "hello cat"),
    ("upper", "cat", "CAT"), ("upper_reverse", "abc", "CBA"), ("upper_leet", "toast", "70457"),
    ("upper_hashtag", "cat", "#CAT"), ("upper_half", "abcde", "ABC")])
def test_task_functions(task, word, answer):
    assert st.apply_task(task, word) == answer


def test_task_and_description_splits():
    assert len(st.TASK_NAMES) == 40 and len(set(st.TASK_NAMES)) == 40
    assert len(st.HELDOUT_TASKS) == 6 and set(st.HELDOUT_TASKS) <= set(st.TASK_NAMES)
    assert set(st.TRAIN_TASKS) | set(st.HELDOUT_TASKS) == set(st.TASK_NAMES)
    assert not set(st.TRAIN_TASKS) & set(st.HELDOUT_TASKS)
    all_descs = [d for t in st.TASK_NAMES for d in st.DESCRIPTIONS[t]]
    assert len(all_descs) == len(set(all_descs))            # no description shared between tasks
    for t in st.TASK_NAMES:
        assert len(set(st.DESCRIPTIONS[t])) >= 10
        train, held = set(st.train_descriptions(t)), set(st.heldout_descriptions(t))
        assert held and not train & held
        assert train | held == set(st.DESCRIPTIONS[t])
    assert all(not st.train_descriptions(t) for t in st.HELDOUT_TASKS)


def test_tasks_factor_into_plain_and_capitals():
    plain = set(st.PLAIN_TASKS)
    assert len(plain) == 21
    for t in st.TASK_NAMES:
        if t.startswith("upper_"):
            x = t[len("upper_"):]
            assert x in plain and st.apply_task(t, "hello") == st.apply_task(x, "hello").upper()
            assert st.task_tag(t) == "U" + st.task_tag(x)
            for k, (d, dx) in enumerate(zip(st.DESCRIPTIONS[t], st.DESCRIPTIONS[x])):
                assert dx[1:] in d and d == st.CAPS_CLAUSES[k].format(D=dx, d=dx[0].lower() + dx[1:])
    assert all(t.startswith("upper_") for t in st.HELDOUT_TASKS)
    assert st.task_tag("upper") == "U" + st.task_tag("copy") and st.task_tag("reverse") == "01:"
    assert len({st.task_tag(t) for t in st.TASK_NAMES}) == 40
    with pytest.raises(ValueError, match="unknown string task"):
        st.task_tag("nope")


def test_words_are_deterministic_and_valid():
    words = [st.make_word(3, i) for i in range(200)]
    assert words == [st.make_word(3, i) for i in range(200)]
    for w in words:
        assert st.MIN_LEN <= len(w) <= st.MAX_LEN and w.isalpha() and w.islower()
        assert any(c in st.VOWELS for c in w) and any(c not in st.VOWELS for c in w)
    for t in st.TASK_NAMES:                                   # every task has a non-empty answer
        assert all(st.apply_task(t, w) for w in words[:20])


def test_bad_input_raises_value_error():
    from hyperlora_jax.toy.eval_strings import eval_items
    with pytest.raises(ValueError, match="unknown string task 'nope'"):
        st.apply_task("nope", "abc")
    with pytest.raises(ValueError, match="lowercase letters"):
        st.apply_task("reverse", "ABC")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        eval_items("test", 1, 0)
    with pytest.raises(ValueError, match="n_per_description"):
        eval_items("heldout_tasks", 0, 0)
    with pytest.raises(ValueError, match="unknown string task"):
        st.oracle_lora_dir("nope")
    with pytest.raises(ValueError, match="unknown preset"):
        _config("toy_strings_lora", "nope")


def test_eval_items_cover_the_split():
    from hyperlora_jax.toy.eval_strings import eval_items
    train = eval_items("train_tasks_heldout_descriptions", 2, 7)
    held = eval_items("heldout_tasks", 1, 7)
    assert len(train) == 2 * st.N_HELDOUT_DESCRIPTIONS * len(st.TRAIN_TASKS)
    assert len(held) == sum(len(st.DESCRIPTIONS[t]) for t in st.HELDOUT_TASKS)
    assert {it.task for it in held} == set(st.HELDOUT_TASKS)
    for it in train:
        assert it.description in st.heldout_descriptions(it.task)
        assert it.description not in st.train_descriptions(it.task)
        assert st.apply_task(it.task, it.word) == it.answer


# ============================================================================================ shipped assets
def _answer_scores(params, cfg, tok, pairs, adapter, fwd):
    """(mean log-prob per answer token, fraction of examples whose every answer token is the argmax), teacher
    forced, user turn = the bare word."""
    from hyperlora_jax.methods.t2l import ChatFormatter
    fmt = ChatFormatter(tok, 24, system_turn=False)
    rows = [fmt(w, a) for w, a in pairs]
    tokens = jnp.asarray(np.stack([r["tokens"] for r in rows]))
    seg = jnp.asarray(np.stack([r["segment_ids"] for r in rows]))
    mask = np.stack([r["loss_mask"] for r in rows])[:, :-1]
    pos = jnp.maximum(jnp.cumsum(seg, axis=1) - 1, 0)
    logits = fwd(params, tokens, pos, seg, adapter)
    logp = np.asarray(jax.nn.log_softmax(logits[:, :-1], axis=-1))
    nxt = np.asarray(tokens[:, 1:])
    lp = np.take_along_axis(logp, nxt[..., None], axis=-1)[..., 0]
    right = (logp.argmax(-1) == nxt) | (mask == 0)
    return float((lp * mask).sum() / mask.sum()), float(right.all(axis=1).mean())


def test_shipped_assets_load_and_oracle_beats_base():
    from transformers import AutoTokenizer

    from hyperlora_jax.io.hf_load import load_model
    from hyperlora_jax.lora import stack_adapters
    from hyperlora_jax.model import forward
    from hyperlora_jax.io.peft_io import import_peft

    base = st.strings_base_dir()
    cfg, params = load_model(base)
    tok = AutoTokenizer.from_pretrained(base)
    for t in st.TASK_NAMES:
        assert os.path.isfile(os.path.join(st.oracle_lora_dir(t), "adapter_model.safetensors"))
    multi = import_peft(st.multitask_lora_dir(), cfg)
    assert multi.rank == st.LORA_RANK and set(multi.A) == set(st.LORA_TARGET_MODULES)
    task = "reverse"
    pairs = [st.example(task, 4321, i) for i in range(8)]
    oracle = stack_adapters([import_peft(st.oracle_lora_dir(task), cfg)] * len(pairs))
    fwd = jax.jit(lambda p, t, q, s, a: forward(p, cfg, t, positions=q, segment_ids=s, adapter=a)["logits"])
    lp_o, acc_o = _answer_scores(params, cfg, tok, pairs, oracle, fwd)
    lp_b, acc_b = _answer_scores(params, cfg, tok, pairs, oracle.zeros_like(len(pairs)), fwd)
    assert lp_o > lp_b + 0.5, (lp_o, lp_b)
    assert acc_o >= 0.75 and acc_o > acc_b, (acc_o, acc_b)


# ============================================================================================ end to end
def test_t2l_toy_preset_two_steps_writes_results(tmp_path, capsys):
    from hyperlora_jax.toy.eval_strings import METHODS, SPLITS
    from hyperlora_jax.train import run
    c = _config("t2l", "toy")
    assert c.data.source == "toy_strings" and c.eval.oracle_dir and c.eval.multitask_dir
    c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 2, 1, 0
    c.async_checkpoints = False
    c.eval.n_per_description = 1
    c.eval.methods = ("base", "oracle_lora", "t2l")      # the multi-task LoRA's long prompts: one more compile
    run(c, str(tmp_path))
    rows = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {(r["method"], r["split"]) for r in rows} == {(m, s) for m in c.eval.methods for s in SPLITS}
    n = {"train_tasks_heldout_descriptions": len(st.TRAIN_TASKS) * st.N_HELDOUT_DESCRIPTIONS,
         "heldout_tasks": sum(len(st.DESCRIPTIONS[t]) for t in st.HELDOUT_TASKS)}
    for r in rows:
        assert set(r) == {"method", "split", "accuracy", "n"} and r["method"] in METHODS
        assert r["n"] == n[r["split"]] and 0.0 <= r["accuracy"] <= 1.0
    oracle = {r["split"]: r["accuracy"] for r in rows if r["method"] == "oracle_lora"}
    base = {r["split"]: r["accuracy"] for r in rows if r["method"] == "base"}
    assert all(oracle[s] > base[s] for s in SPLITS)
    assert "| oracle_lora |" in capsys.readouterr().out


def test_base_pretraining_source_rows():
    """configs/toy_base.py:strings' data: the tagged or bare word in the user turn, loss on answer + end token."""
    import ml_collections
    from transformers import AutoTokenizer

    from hyperlora_jax.toy.string_sources import lm_toy_strings
    c = _config("toy_base", "strings")
    tok = AutoTokenizer.from_pretrained(st.strings_base_dir())
    example, _ = lm_toy_strings(None, ml_collections.ConfigDict(dict(c.data, tokenizer=st.strings_base_dir())), 3)
    tagged = 0
    for i in range(60):
        row = example(i)
        n = int(row["segment_ids"].sum())
        assert row["tokens"].shape == (c.data.seq_len,) and row["tokens"][n - 1] == tok.eos_token_id
        text = tok.decode(row["tokens"][:n])
        target = tok.decode(row["tokens"][1:][row["loss_mask"][:-1] > 0])
        rng = np.random.default_rng([3, i, 5])
        task = st.TASK_NAMES[int(rng.integers(len(st.TASK_NAMES)))]
        word, answer = st.example(task, 3, i)
        assert target == answer + tok.eos_token
        tagged += (st.task_tag(task) + word) in text
    assert 15 < tagged < 45                                  # data.tag_prob 0.5


def test_toy_source_rejects_unknown_task_set():
    import ml_collections

    from hyperlora_jax.toy.string_sources import t2l_toy_strings
    with pytest.raises(ValueError, match="data.tasks must be 'train' or 'all'"):
        t2l_toy_strings(None, ml_collections.ConfigDict({"tasks": "heldout"}), 0)
