"""The local TFDS builders (niah, d2l_qa, t2l_tasks) build offline from small samples and read back without TF."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DATA
from hyperlora_jax.data import tfds as hd
from hyperlora_jax.data.tfds.niah import block_range, depth_position

TOK = os.path.join(DATA, "tokenizer")


def test_niah_builds_with_target_tokenizer(tmp_path):
    cfg = hd.NiahConfig(name="t", tokenizer_dir=TOK, bins=((40, 120), (120, 200), (200, 260)), train_max_hi=200,
                        train_per_bin=40, val_per_bin=20, test_per_bin=10, seed=3, noise_block="Sky is blue.",
                        needle="Magic number is {magic_number}.", prompt="What is the magic number?")
    b = hd.Niah(config=cfg, data_dir=str(tmp_path))
    tr = hd.data_source(b, "train_40_120")
    assert set(b.info.splits) == {"train_40_120", "validation_40_120", "test_40_120", "train_120_200",
                                  "validation_120_200", "test_120_200", "validation_200_260", "test_200_260"}
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(TOK)
    lengths = b.info.metadata["lengths"]
    ks = block_range(lengths, 40, 120)
    assert len(tr) == len(ks) * (40 // len(ks))
    depth = np.zeros(10, int)
    for i in range(len(tr)):
        ex = tr[i]
        n = len(tok(ex["context"])["input_ids"])
        assert 40 <= n < 120 and ex["num_blocks"] in ks
        blocks = ex["context"].split("\n")
        assert len(blocks) == ex["num_blocks"] and blocks[ex["needle_index"]] == f"Magic number is {ex['response']}."
        assert len(ex["response"]) == 4 and ex["prompt"] == "What is the magic number?"
        depth[ex["depth_bin"]] += 1
    assert depth.max() - depth.min() <= len(ks)  # spread evenly over the depth bins
    assert len(hd.data_source(b, "validation_200_260")) == 20
    # deterministic from the seed; readable from the files alone
    again = hd.load_built("niah/t", str(tmp_path), "train_40_120")
    assert [again[i]["context"] for i in range(5)] == [tr[i]["context"] for i in range(5)]


def test_niah_depth_bins():
    rng = np.random.default_rng(0)
    for k in (1, 3, 10, 37):
        for b in range(10):
            for _ in range(5):
                at = depth_position(k, b, rng)
                assert 0 <= at < k
                if k >= 10:
                    assert np.floor(k * b / 10) <= at <= np.ceil(k * (b + 1) / 10) - 1


def _jsonl(path, rows, extra=""):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write(extra)


def test_d2l_qa_builds_compact_from_local_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _jsonl(d / "squad.jsonl", [
        {"context": "Paris is in France.", "question": "Where is Paris?", "answers": {"text": ["France"]}},
        {"context": "Paris is in France.", "question": "What is in France?", "answers": {"text": ["Paris", "x"]}},
        {"context": "   ", "question": "Empty?", "answers": {"text": ["yes"]}},
        {"context": "Rome is old.", "question": "Is it?", "answers": {"text": []}},
        {"context": 7, "question": "Non text?", "answers": {"text": ["no"]}},
    ], extra="{not json\n")
    with open(d / "squad_orig.json", "w") as f:
        json.dump({"data": [{"title": "t", "paragraphs": [{"context": "Oslo is cold.", "qas": [
            {"question": "Is Oslo cold?", "answers": [{"text": "yes", "answer_start": 0}]},
            {"question": "No answer", "answers": []}]}]}]}, f)
    _jsonl(d / "drop.jsonl", [{"passage": "Ten apples.", "question": "How many?", "answers_spans": {"spans": ["10"]}}])
    _jsonl(d / "ropes.jsonl", [{"background": "B.", "situation": "S.", "question": "Q?",
                                 "answers": {"text": ["A"]}}])
    pq.write_table(pa.Table.from_pylist([{"context": "C1", "prompts": ["p1", "p2"], "responses": ["r1", None]}]),
                   d / "compact.parquet")
    k = 4
    sg = [{"ctx_ids": [1, 2, 3], "input_ids": [[1, 5, 6, 7], [1, 8, 9]], "response_start_end": [[2, 4], [1, 3]],
           "logprobs_vals": [np.full((2, k), -1.0).tolist(), np.full((2, k), -2.0).tolist()],
           "logprobs_indices": [np.ones((2, k), int).tolist(), np.ones((2, k), int).tolist()]},
          {"ctx_ids": [], "input_ids": [[1]], "response_start_end": [[0, 1]],
           "logprobs_vals": [[[0.0] * k]], "logprobs_indices": [[[0] * k]]}]
    pq.write_table(pa.Table.from_pylist(sg), d / "sg_0000.parquet")
    cfg = hd.D2LQAConfig(name="local", top_k=k, inputs={
        "train": {"squad": [str(d / "squad.jsonl"), str(d / "squad_orig.json")], "drop": str(d / "drop.jsonl"),
                  "ropes": str(d / "ropes.jsonl"), "compact": str(d / "compact.parquet"),
                  "self_gen": str(d / "sg_*.parquet"), "absent": str(d / "released/*.parquet")}})
    b = hd.D2lQa(config=cfg, data_dir=str(tmp_path / "out"))
    src = hd.data_source(b, "train")
    recs = {r["context"] or "SG": r for r in (src[i] for i in range(len(src)))}
    assert set(recs) == {"Paris is in France.", "Oslo is cold.", "Ten apples.", "B.\nS.", "C1", "SG"}
    paris = recs["Paris is in France."]
    assert paris["prompts"] == ["Where is Paris?", "What is in France?"] and paris["responses"] == ["France", "Paris"]
    assert recs["C1"]["responses"] == ["r1"] and recs["B.\nS."]["responses"] == ["A"]
    g = recs["SG"]
    np.testing.assert_array_equal(g["ctx_ids"], [1, 2, 3])
    np.testing.assert_array_equal(g["qa_lens"], [4, 3])
    assert g["logprobs_vals"].shape == (4, k) and g["response_start_end"].tolist() == [[2, 4], [1, 3]]
    skipped = b.info.metadata["skipped"]["train"]
    assert skipped == {"squad/empty_context": 1, "squad/missing_answer": 2, "squad/non_text": 1,
                       "squad/malformed": 1, "compact/missing_answer": 1, "self_gen/empty_context": 1}
    reread = hd.load_built("d2l_qa/local", str(tmp_path / "out"), "train")
    assert len(reread) == len(src)


def test_mocked_hub_source_runs_through_the_pipeline(tmp_path):
    """A config pointing at the released data (not on this machine) is exercised with tfds' mock data."""
    import tensorflow_datasets as tfds
    from hyperlora_jax.data.packing import PackConfig, PackedIterator
    from hyperlora_jax.data.tokenize import D2LTokenizeConfig, D2LTokenizer
    cfg = hd.D2LQAConfig(name="released", inputs={"train": {"self_gen": "/nonexistent/self_gen/*.parquet"}})
    with tfds.testing.mock_data(num_examples=6):
        src = hd.DecodedSource(hd.D2lQa(config=cfg, data_dir=str(tmp_path)).as_data_source(split="train"))
        it = PackedIterator(src, len(src), D2LTokenizer(TOK, D2LTokenizeConfig(max_ctx_len=2048, max_qas_len=512)),
                            PackConfig(seq_len=512, ctx_len=2048), 2, num_epochs=1)
        batches = list(it)  # random records: bad ones are counted, nothing crashes
    assert it.stats["pack/examples"] == 6
    s = it.stats.summary()
    assert s.get("tokenize/samples", 0) + sum(v for k, v in s.items() if k.startswith("tokenize/")
                                              and k not in ("tokenize/samples", "tokenize/qas")) >= 6, s
    assert all(b["tokens"].shape == (2, 512) for b in batches)


def test_t2l_tasks_builds_from_local_tasks(tmp_path):
    root = tmp_path / "tasks"
    root.mkdir()
    with open(root / "task001_sni.json", "w") as f:
        json.dump({"Definition": ["Reverse the word."], "descriptions": ["reverse words", "flip a word"],
                   "Instances": [{"input": f"w{i}", "output": [f"{i}w"]} for i in range(5)]
                   + [{"input": "bad", "output": []}, {"input": 3, "output": ["x"]}]}, f)
    lol = root / "lol_002"
    lol.mkdir()
    with open(lol / "metadata.yaml", "w") as f:
        f.write("descriptions:\n  - add numbers\n  - sum two integers\n  - arithmetic\n")
    prompt = ("Definition: Add the numbers.\n\nPositive Example 1 -\nInput: 1 1\nOutput: 2\n\n"
              "Now complete the following example -\nInput: {x}\nOutput:")
    _jsonl(lol / "train.jsonl", [{"input": prompt.format(x=f"{i} {i}"), "output": [str(2 * i)]} for i in range(10)]
           + [{"input": prompt.format(x="1 2"), "output": ["3", "three"]}, {"input": "no markers", "output": ["1"]}])
    cfg = hd.T2LTasksConfig(name="local", tasks_dir=str(root), max_per_task=20, val_tasks=("lol_002",),
                            val_fraction=0.2)
    b = hd.T2lTasks(config=cfg, data_dir=str(tmp_path / "out"))
    train, val = hd.data_source(b, "train"), hd.data_source(b, "validation")
    md = b.info.metadata
    assert md["tasks"] == ["lol_002", "task001_sni"]
    assert md["descriptions"]["lol_002"] == ["add numbers", "sum two integers", "arithmetic"]
    assert len(md["descriptions"]["task001_sni"]) == 2
    rows = [train[i] for i in range(len(train))]
    assert len(train) == 5 + 9 and len(val) == 2
    lol_rows = sorted((r for r in rows if r["task"] == "lol_002"), key=lambda r: r["problem"])
    assert lol_rows[0]["task_def"] == "Add the numbers. Please complete the task without any explanation."
    assert lol_rows[0]["problem"] == "0 0" and lol_rows[0]["answer"] == "0" and lol_rows[0]["task_index"] == 0
    multi = [r for r in rows + [val[i] for i in range(len(val))] if r["answer"] == "3, three"]
    assert multi and multi[0]["task_def"].endswith("comma-separated list of possible completions.")
    sni = [r for r in rows if r["task"] == "task001_sni"]
    assert sni[0]["task_def"].startswith("Reverse the word.") and sni[0]["task_index"] == 1
    assert md["skipped"]["train"] == {"task001_sni/missing_answer": 1, "task001_sni/non_text": 1,
                                      "lol_002/unparsable_input": 1}
