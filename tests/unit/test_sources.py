"""The data-source registry (hyperlora_jax/data/sources.py): lookups, errors, sources built from a formatter alone."""
import ast
import pathlib

import ml_collections
import numpy as np
import pytest

from hyperlora_jax.data import sources

ROOT = pathlib.Path(__file__).resolve().parents[2] / "hyperlora_jax"


def test_each_kind_lists_its_sources():
    assert {"copy", "toy_niah", "toy_strings"} <= set(sources.source_names("lm"))
    assert {"in_memory", "toy_strings"} <= set(sources.source_names("t2l"))
    assert {"d2l_qa", "niah", "toy_niah", "fictional_facts"} <= set(sources.source_names("d2l"))
    assert sources.source_names("d2l") == sorted(sources.source_names("d2l"))


def test_unknown_name_is_one_error_listing_the_known_names():
    with pytest.raises(sources.UnknownSourceError) as e:
        sources.get_source("d2l", "no_such_source")
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    assert "'no_such_source'" in msg and all(n in msg for n in ("d2l_qa", "fictional_facts", "niah", "toy_niah"))
    with pytest.raises(ValueError, match="unknown data source kind 'nope'.*lm, t2l, d2l"):
        sources.get_source("nope", "copy")


def test_evaluators_are_looked_up_per_method_and_source():
    assert sources.get_evaluator("t2l", "toy_strings") is not None
    assert sources.get_evaluator("lora", "toy_strings") is not None
    assert sources.get_evaluator("d2l", "toy_niah") is not None
    assert sources.get_evaluator("t2l", "in_memory") is None


def test_lm_source_from_a_model_config():
    from hyperlora_jax.config import ModelConfig
    cfg = ModelConfig.from_hf_dict({"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
                                    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                    "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64})
    data = ml_collections.ConfigDict({"seq_len": 24, "vocab_low": 3})
    example, size = sources.get_source("lm", "copy")(cfg, data, 0)
    ex = example(5)
    assert size is None and ex["tokens"].shape == (24,) and ex["loss_mask"].sum() == 11
    np.testing.assert_array_equal(ex["tokens"], example(5)["tokens"])


@pytest.fixture(scope="module")
def toy_tok():
    from hyperlora_jax.d2l.context import load_tokenizer
    from hyperlora_jax.packaged import toy_base_dir
    return load_tokenizer(toy_base_dir())


def test_d2l_source_from_a_formatter(toy_tok):
    from hyperlora_jax.d2l.context import padded_chunk_len, template_affixes
    from hyperlora_jax.methods.d2l_data import D2LFormatter
    aff = template_affixes(toy_tok)
    fmt = D2LFormatter(tok=toy_tok, affixes=aff, chunk_len=padded_chunk_len(64, aff), vocab_size=toy_tok.vocab_size,
                       batch_size=4, loss_kind="ce")
    data = ml_collections.ConfigDict(dict(chunk_tokens=64, max_chunks=4, chunk_probs=(0.4, 0.2, 0.2, 0.2),
                                          query_len=48, min_doc_len=32))
    example, _ = sources.get_source("d2l", "toy_niah")(fmt, data, 0)
    ex = example(3)
    assert ex["ctx_ids"].shape == (4, fmt.chunk_len) and 1 <= int(ex["n_chunks"]) <= 4
    assert ex["tokens"].shape == (48,) and int(ex["resp_valid"].sum()) == int(ex["loss_mask"].sum()) > 0


def test_t2l_source_from_a_chat_formatter_or_none(toy_tok):
    from hyperlora_jax.methods.t2l import ChatFormatter
    data = ml_collections.ConfigDict({"tasks": {"up": {"descriptions": ["upper-case it"],
                                                       "examples": [["ab", "AB"]], "oracle_lora": "/x"}},
                                      "n_tasks_per_batch": 1})
    build = sources.get_source("t2l", "in_memory")
    sft = build(ChatFormatter(toy_tok, 32, system_turn=False), data, 0)
    row = sft.example(0)
    assert sft.task_names == ["up"] and sft.descriptions == ["upper-case it"]
    assert row["tokens"].shape == (32,) and row["loss_mask"].sum() > 0 and int(row["task_index"]) == 0
    recon = build(None, data, 0)  # reconstruction: task / description rows only
    assert set(recon.example(0)) == {"desc_index", "task_index"} and recon.oracle_dirs == ["/x"]


def test_methods_do_not_import_the_toy_package():
    for path in sorted((ROOT / "methods").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.startswith("hyperlora_jax.toy")], path.name
