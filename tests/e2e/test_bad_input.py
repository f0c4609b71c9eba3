"""Bad input: each a one-line error naming the problem."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hf_tiny import make_tiny
from hyperlora_jax.config import ConfigError, ModelConfig
from hyperlora_jax.io.hf_load import CheckpointError, load_model
from hyperlora_jax.io.safetensors_io import load_file, save_file


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny("llama", str(tmp_path_factory.mktemp("bad") / "m"))


def copy(model_dir, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(model_dir, d)
    return d


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="has no config.json"):
        load_model(str(tmp_path))


def test_unsupported_model_type(model_dir, tmp_path):
    d = copy(model_dir, tmp_path)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["model_type"] = "gpt2"
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ConfigError, match="unsupported model_type 'gpt2'"):
        load_model(d)


def test_unsupported_option():
    base = dict(model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=2)
    with pytest.raises(ConfigError, match="unsupported rope type 'yarn'"):
        ModelConfig.from_hf_dict({**base, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.raises(ConfigError, match="attention_bias"):
        ModelConfig.from_hf_dict({**base, "attention_bias": True})


def test_truncated_safetensors(model_dir, tmp_path):
    d = copy(model_dir, tmp_path)
    path = os.path.join(d, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(CheckpointError, match="truncated safetensors file"):
        load_model(d)


def test_wrong_shape_missing_and_unexpected_tensors_listed_together(model_dir, tmp_path):
    d = copy(model_dir, tmp_path)
    path = os.path.join(d, "model.safetensors")
    t = load_file(path)
    t["model.layers.1.mlp.up_proj.weight"] = np.zeros((7, 64), np.float32)
    del t["model.norm.weight"]
    t["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    save_file(t, path)
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    msg = str(e.value)
    assert "\n" not in msg
    assert "model.layers.1.mlp.up_proj.weight has shape [7, 64], expected [96, 64]" in msg
    assert "missing model.norm.weight" in msg and "unexpected model.layers.0.extra.weight" in msg


def _cli(*args, env_home=None):
    env = {**os.environ, "HYPERLORA_JAX_HOME": env_home or "/nonexistent"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_errors_are_one_line(model_dir, tmp_path):
    r = _cli("hyperlora_jax.cli.generate", "--model", str(tmp_path / "nope"), "--prompt", "hi")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    r = _cli("hyperlora_jax.cli.generate", "--model", model_dir, "--prompt", "   ")
    assert r.returncode == 2 and "--prompt is empty" in r.stderr
    r = _cli("hyperlora_jax.cli.score", "--model", model_dir, "--prompt-ids", "1,2", "--continuation-ids", "x")
    assert r.returncode == 2 and "--continuation-ids must be comma-separated integers" in r.stderr
