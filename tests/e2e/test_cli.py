"""The generate and score CLIs end to end on a tiny model with a chat tokenizer (and the embedded default)."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from hf_tiny import copy_tokenizer, load_torch, make_tiny, torch_logits
from hyperlora_jax.generation import generate
from hyperlora_jax.io.hf_load import load_model
from test_lora_peft import make_peft, peft_logits


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = make_tiny("llama", str(tmp_path_factory.mktemp("cli") / "m"), vocab_size=256)
    copy_tokenizer(d)
    return d


def run(*args, home="/nonexistent"):
    env = {**os.environ, "HYPERLORA_JAX_HOME": home}
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()


def test_score_cli_matches_transformers_with_lora(model_dir, tmp_path):
    from transformers import AutoTokenizer
    lora = make_peft(model_dir, str(tmp_path / "lora"), seed=1)
    out = json.loads(run("hyperlora_jax.cli.score", "--model", model_dir, "--lora", lora, "--prompt", "The cat",
                         "--continuation", " sat down")[-1])
    tok = AutoTokenizer.from_pretrained(model_dir)
    p, c = tok("The cat")["input_ids"], tok(" sat down", add_special_tokens=False)["input_ids"]
    assert out["tokens"] == c
    import torch
    logits = peft_logits(model_dir, lora, np.array([p + c]))[0]
    logp = torch.log_softmax(torch.tensor(logits), -1).numpy()
    want = [logp[len(p) - 1 + j, t] for j, t in enumerate(c)]
    assert np.abs(np.array(out["logprobs"]) - want).max() <= 1e-4
    assert abs(out["sum"] - sum(out["logprobs"])) < 1e-6
    ids = json.loads(run("hyperlora_jax.cli.score", "--model", model_dir, "--lora", lora, "--prompt-ids",
                         ",".join(map(str, p)), "--continuation-ids", ",".join(map(str, c)))[-1])
    assert np.allclose(ids["logprobs"], out["logprobs"], atol=1e-6)


def test_generate_cli_chat(model_dir):
    from transformers import AutoTokenizer
    lines = run("hyperlora_jax.cli.generate", "--model", model_dir, "--prompt", "Say hi", "--chat",
                "--max-new-tokens", "8")
    last = json.loads(lines[-1])
    tok = AutoTokenizer.from_pretrained(model_dir)
    want_prompt = tok.apply_chat_template([{"role": "user", "content": "Say hi"}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
    assert last["prompt_tokens"] == list(want_prompt)
    cfg, params = load_model(model_dir)
    assert last["tokens"] == generate(params, cfg, [want_prompt], max_new_tokens=8,
                                      stop_tokens=sorted({*cfg.eos_token_ids, tok.eos_token_id}))[0]


def test_embedded_default(tmp_path):
    lines = run("hyperlora_jax.cli.generate", "--prompt", "Hello", "--max-new-tokens", "5", home=str(tmp_path))
    assert len(json.loads(lines[-1])["tokens"]) <= 5
    assert os.path.isfile(tmp_path / "tiny-random-llama-v2" / "model.safetensors")
