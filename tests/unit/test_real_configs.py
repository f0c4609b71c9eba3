"""The real config.json of four published base models build their parameter trees under jax.eval_shape."""
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from conftest import DATA
from hyperlora_jax.config import ModelConfig
from hyperlora_jax.io.hf_load import abstract_params

# Published parameter counts (embeddings counted once when tied).
REAL = {"gemma-2-2b": 2_614_341_888, "Mistral-7B-Instruct-v0.2": 7_241_732_096,
        "Llama-3.1-8B": 8_030_261_248, "Qwen3-4B": 4_022_468_096}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_config_builds_abstractly(name):
    with open(os.path.join(DATA, "configs", f"{name}.json")) as f:
        d = json.load(f)
    cfg = ModelConfig.from_hf_dict(d)
    tree = abstract_params(cfg)  # ShapeDtypeStructs only: nothing is allocated
    leaves = jax.tree_util.tree_leaves(tree)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    count = sum(int(np.prod(x.shape)) for x in leaves)
    assert count == REAL[name] == cfg.num_params()
    # independent check: transformers builds the same model on the meta device
    with torch.device("meta"):
        ref = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**d))
    assert count == sum(p.numel() for p in ref.parameters())


def test_family_fields():
    load = lambda n: ModelConfig.from_hf_dict(json.load(open(os.path.join(DATA, "configs", f"{n}.json"))))
    g, l, q, m = load("gemma-2-2b"), load("Llama-3.1-8B"), load("Qwen3-4B"), load("Mistral-7B-Instruct-v0.2")
    assert g.sandwich_norms and g.embed_scale and g.norm_weight_offset == 1.0 and g.sliding_window == 4096
    assert g.sliding_layers[:4] == (True, False, True, False) and g.attn_scale == 256 ** -0.5
    assert l.rope_type == "llama3" and l.rope_factor == 8.0 and l.rope_original_max_position == 8192
    assert q.qk_norm and q.tie_word_embeddings and q.head_dim == 128
    assert m.sliding_window is None and not any(m.sliding_layers) and m.rope_theta == 1e6
