"""Using adapters from the command line: ``generate`` / ``score`` check the adapter's recorded base model against
--model (and use it when --model is absent), ``score --chat``, generation limits, and ``internalize`` /
``generate_lora`` never overwriting their own inputs. Each bad input: one ``error:`` line, exit status 2, nothing
written. Fixtures: tiny random llamas (tests/hf_tiny.py), the converted golden D2L run and T2L run_L."""
import json
import os
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from hf_tiny import copy_tokenizer, make_tiny
from hyperlora_jax.cli import common as cli, convert, generate, generate_lora, internalize, score
from hyperlora_jax.lora import Adapter
from hyperlora_jax.io.peft_io import export_peft

DATA = pathlib.Path(__file__).parent.parent / "data"
D2L_RUN, D2L_MODEL = DATA / "d2l" / "run_per_layer_activations", DATA / "d2l" / "tiny_gemma2"
T2L = DATA / "t2l"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Base A, a copy of A, a copy of A named 'some-model', a different base B, and an adapter made for A."""
    root = tmp_path_factory.mktemp("use")
    a = make_tiny("llama", str(root / "A"))
    copy_tokenizer(a)
    b = make_tiny("llama", str(root / "B"), seed=1, num_hidden_layers=2)
    copy_tokenizer(b)
    a_copy = shutil.copytree(a, root / "A_copy")
    named = shutil.copytree(a, root / "hub" / "some-model")
    rng = np.random.default_rng(0)
    ad = Adapter({"q_proj": jnp.asarray(rng.normal(0, 0.1, (3, 1, 2, 64)), jnp.float32)},
                 {"q_proj": jnp.asarray(rng.normal(0, 0.1, (3, 1, 2, 64)), jnp.float32)},
                 jnp.asarray([2.0], jnp.float32))
    lora = export_peft(ad, str(root / "lora_A"), base_model=a)
    hub_lora = export_peft(ad, str(root / "lora_hub"), base_model="org/some-model")
    return {"A": a, "B": b, "A_copy": str(a_copy), "named": str(named), "lora": lora, "hub_lora": hub_lora}


def _run(main, args, capsys):
    rc = cli.run(main, args, exit=False)
    out = capsys.readouterr()
    return rc, out.out, out.err.strip()


def _error(main, args, capsys) -> str:
    rc, out, err = _run(main, args, capsys)
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, (rc, err)
    return err


# ============================================================================================ base model check
def test_generate_and_score_use_and_check_the_recorded_base(models, capsys):
    from transformers import AutoTokenizer
    m = models
    tok = AutoTokenizer.from_pretrained(m["A"])
    rc, out, _ = _run(generate.main, ["--lora", m["lora"], "--prompt", "Hi", "--max-new-tokens", "3"], capsys)
    assert rc == 0 and json.loads(out.splitlines()[-1])["prompt_tokens"] == tok("Hi")["input_ids"]
    without = json.loads(out.splitlines()[-1])
    rc, out, _ = _run(generate.main, ["--model", m["A_copy"], "--lora", m["lora"], "--prompt", "Hi",
                                      "--max-new-tokens", "3"], capsys)
    assert rc == 0 and json.loads(out.splitlines()[-1]) == without  # a copy of the same model is the same base
    for main, extra in ((generate.main, []), (score.main, ["--continuation", " there"])):
        err = _error(main, ["--model", m["B"], "--lora", m["lora"], "--prompt", "Hi", *extra], capsys)
        assert f"--lora {m['lora']!r} was made for the base model {m['A']!r}, not --model {m['B']!r}" in err
    # a recorded hub name: no local directory to fall back on; a --model of that name is accepted
    err = _error(score.main, ["--lora", m["hub_lora"], "--prompt", "Hi", "--continuation", " x"], capsys)
    assert "was made for the base model 'org/some-model', which is not a local directory here; pass --model" in err
    err = _error(generate.main, ["--model", m["A"], "--lora", m["hub_lora"], "--prompt", "Hi"], capsys)
    assert "not --model" in err
    rc, out, _ = _run(score.main, ["--model", m["named"], "--lora", m["hub_lora"], "--prompt", "Hi",
                                   "--continuation", " x"], capsys)
    assert rc == 0 and json.loads(out.splitlines()[-1])["tokens"]


def test_score_chat_matches_generation_score(models, capsys):
    from transformers import AutoTokenizer

    from hyperlora_jax.eval.answering import chat_ids
    from hyperlora_jax.generation import score as score_fn
    from hyperlora_jax.io.hf_load import load_model
    from hyperlora_jax.io.peft_io import import_peft
    m = models
    rc, out, _ = _run(score.main, ["--lora", m["lora"], "--prompt", "Say hi", "--chat", "--continuation",
                                   " hello"], capsys)
    assert rc == 0
    got = json.loads(out.splitlines()[-1])
    tok = AutoTokenizer.from_pretrained(m["A"])
    cfg, params = load_model(m["A"])
    prompt = chat_ids(tok, "Say hi")
    cont = tok(" hello", add_special_tokens=False)["input_ids"]
    assert prompt != tok("Say hi")["input_ids"] and got["tokens"] == cont
    want = score_fn(params, cfg, [prompt], [cont], adapter=import_peft(m["lora"], cfg))[0]
    np.testing.assert_allclose(got["logprobs"], want, atol=1e-5)
    rc, out, _ = _run(score.main, ["--lora", m["lora"], "--prompt", "Say hi", "--continuation", " hello"], capsys)
    assert rc == 0 and abs(json.loads(out.splitlines()[-1])["sum"] - got["sum"]) > 1e-3  # the template matters
    err = _error(score.main, ["--model", m["A"], "--prompt-ids", "1,2", "--continuation-ids", "3", "--chat"],
                 capsys)
    assert "--chat applies to --prompt text, not to --prompt-ids" in err


# ============================================================================================ limits
@pytest.mark.parametrize("flags,msg", [
    (["--max-new-tokens", "300"], "plus --max-new-tokens 300 exceeds the model's window of 256 tokens "
                                  "(max_position_embeddings): at most"),
    (["--max-new-tokens", "1000000000"], "exceeds the model's window of 256 tokens"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["--temperature", "nan"], "--temperature must be a finite number >= 0 (0 = greedy), got nan"),
    (["--temperature", "inf"], "--temperature must be a finite number >= 0 (0 = greedy), got inf"),
    (["--temperature", "-0.5"], "--temperature must be a finite number >= 0 (0 = greedy), got -0.5"),
    (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["--top-p", "nan"], "--top-p must be in (0, 1], got nan"),
])
def test_generation_limits(models, flags, msg, capsys):
    assert msg in _error(generate.main, ["--model", models["A"], "--prompt", "Hi", *flags], capsys)


def test_prompt_longer_than_the_window(models, capsys):
    long = " ".join(["word"] * 400)
    err = _error(generate.main, ["--model", models["A"], "--prompt", long, "--max-new-tokens", "1"], capsys)
    assert "the prompt is" in err and "the model's window is 256" in err
    err = _error(score.main, ["--model", models["A"], "--prompt", "Hi", "--continuation", long], capsys)
    assert "the prompt plus the continuation is" in err


def test_library_generate_rejects_bad_sampling(models):
    from hyperlora_jax.generation import generate as gen
    from hyperlora_jax.io.hf_load import load_model
    cfg, params = load_model(models["A"])
    for kw, msg in ((dict(temperature=float("nan")), "temperature must be a finite number"),
                    (dict(top_p=0.0), "top_p must be in (0, 1]")):
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
            gen(params, cfg, [[1, 2]], max_new_tokens=2, **kw)


# ============================================================================================ inputs are safe
def _tree(d):
    d = pathlib.Path(d)
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_internalize_never_overwrites_its_inputs(tmp_path, capsys):
    d2l = tmp_path / "ckpts" / "d2l"
    assert convert.main(["d2l", str(D2L_RUN / "checkpoint-1"), str(d2l)]) == 0
    docs = tmp_path / "docs"
    docs.mkdir()
    doc = docs / "doc.txt"
    doc.write_text("The observatory was built in 1911 on Mount Ellery. " * 4, encoding="utf-8")
    model = tmp_path / "model"
    shutil.copytree(D2L_MODEL, model)
    before = {p: _tree(p) for p in (d2l, docs, model)}
    capsys.readouterr()
    for out, msg in ((d2l, "is the D2L checkpoint itself"), (tmp_path / "ckpts", "contains the D2L checkpoint"),
                     (docs, "contains the document"), (model, "is the base model directory itself"),
                     (tmp_path, "contains the D2L checkpoint")):
        err = _error(internalize._main, ["--d2l", str(d2l), "--document", str(doc), "--out", str(out), "--model",
                                         str(model), "--overwrite"], capsys)
        assert msg in err, err
    assert {p: _tree(p) for p in (d2l, docs, model)} == before
    # the chunk length cannot exceed the base model's window (no recorded chunk length here)
    err = _error(internalize._main, ["--d2l", str(d2l), "--document", str(doc), "--out", str(tmp_path / "a"),
                                     "--model", str(model), "--chunk-tokens", "100000"], capsys)
    assert "--chunk-tokens 100000 is more than this hypernetwork reads in one chunk" in err
    assert not (tmp_path / "a").exists()


def test_generate_lora_never_overwrites_its_inputs(tmp_path, capsys):
    t2l = tmp_path / "ckpts" / "t2l"
    assert convert.main(["t2l", str(T2L / "run_L"), str(t2l)]) == 0
    enc, base = tmp_path / "enc", tmp_path / "base"
    shutil.copytree(T2L / "tiny_gte_bert", enc)
    shutil.copytree(T2L / "base_model_llama", base)
    before = {p: _tree(p) for p in (t2l, enc, base)}
    capsys.readouterr()
    for out, msg in ((t2l, "is the T2L checkpoint itself"), (tmp_path / "ckpts", "contains the T2L checkpoint"),
                     (enc, "is the encoder directory itself"), (base, "is the base model directory itself"),
                     (tmp_path, "contains the T2L checkpoint")):
        err = _error(generate_lora._main, ["--t2l", str(t2l), "--description", "reverse the word", "--out",
                                           str(out), "--encoder", str(enc), "--model", str(base), "--overwrite"],
                     capsys)
        assert msg in err, err
    assert {p: _tree(p) for p in (t2l, enc, base)} == before
    # the recorded paths (no --encoder/--model) are checked too
    recorded = json.loads((t2l / "config.json").read_text())
    recorded.update(model_dir=str(base), emb_model=str(enc))
    (t2l / "config.json").write_text(json.dumps(recorded))
    err = _error(generate_lora._main, ["--t2l", str(t2l), "--description", "reverse", "--out", str(base),
                                       "--overwrite"], capsys)
    assert "is the base model directory itself" in err
    assert _tree(base) == before[base]
