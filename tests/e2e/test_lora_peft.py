"""LoRA injection against PEFT (float32): all seven projections, rsLoRA, per-example adapters, round trips, merge.

Tolerances: logits vs PEFT max|Δ| ≤ 1e-5 · max|logit| (float32; the rsLoRA llama case has |logit| up to 18 and
differs by 1.04e-4 with transformers 5.25 / peft 0.21); PEFT round trips ≤ 1e-5.
"""
import json
import os

import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch

from hf_tiny import load_torch, make_tiny, torch_logits
from hyperlora_jax.io.hf_load import load_model
from hyperlora_jax.lora import LORA_MODULES, Adapter, stack_adapters
from hyperlora_jax.model import forward
from hyperlora_jax.io.peft_io import AdapterError, export_peft, import_peft, merge_adapter

REL_TOL = 1e-5


def assert_logits_close(ours, theirs):
    """max |ours - theirs| <= REL_TOL * max |theirs| (float32 logits of magnitude ~1-20)."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert np.abs(ours - theirs).max() <= REL_TOL * np.abs(theirs).max()


def make_peft(model_dir, out_dir, seed, r=4, alpha=8, rslora=False, modules=LORA_MODULES):
    torch.manual_seed(seed)
    model = peft.get_peft_model(load_torch(model_dir), peft.LoraConfig(
        r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=list(modules), init_lora_weights=False,
        lora_dropout=0.0))
    with torch.no_grad():  # make B clearly non-zero and of moderate size
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p) * 0.2)
    model.eval().save_pretrained(out_dir)
    return out_dir


def peft_logits(model_dir, adapter_dir, ids):
    model = peft.PeftModel.from_pretrained(load_torch(model_dir), adapter_dir).eval()
    return torch_logits(model, ids)


@pytest.fixture(scope="module", params=["llama", "gemma2", "qwen3"])
def setup(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model_dir = make_tiny(request.param, str(root / "model"))
    cfg, params = load_model(model_dir)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(1, 20))
    return root, model_dir, cfg, params, ids


@pytest.mark.parametrize("rslora", [False, True])
def test_all_seven_projections_match_peft(setup, rslora):
    root, model_dir, cfg, params, ids = setup
    adir = make_peft(model_dir, str(root / f"peft_rs{rslora}"), seed=1, rslora=rslora)
    adapter = import_peft(adir, cfg)
    assert set(adapter.modules) == set(LORA_MODULES)
    want_scale = 8 / np.sqrt(4) if rslora else 8 / 4
    assert np.isclose(float(adapter.scale[0]), want_scale)
    ours = np.asarray(forward(params, cfg, jnp.asarray(ids), adapter=adapter)["logits"])
    theirs = peft_logits(model_dir, adir, ids)
    base = torch_logits(load_torch(model_dir), ids)
    assert np.abs(theirs - base).max() > 1e-2  # the adapter really changes the output
    assert_logits_close(ours, theirs)


def test_batch_of_different_adapters(setup):
    """Each row of one batch carries its own adapter (different ranks and module sets)."""
    root, model_dir, cfg, params, ids = setup
    dirs = [make_peft(model_dir, str(root / "mix0"), seed=2, r=4, modules=("q_proj", "v_proj", "down_proj")),
            make_peft(model_dir, str(root / "mix1"), seed=3, r=2, alpha=3, modules=LORA_MODULES),
            make_peft(model_dir, str(root / "mix2"), seed=4, r=6, rslora=True, modules=("o_proj", "up_proj"))]
    adapter = stack_adapters([import_peft(d, cfg) for d in dirs])
    rows = np.random.default_rng(5).integers(0, cfg.vocab_size, size=(3, 16))
    ours = np.asarray(forward(params, cfg, jnp.asarray(rows), adapter=adapter)["logits"])
    for i, d in enumerate(dirs):
        assert_logits_close(ours[i], peft_logits(model_dir, d, rows[i:i + 1])[0])


def test_round_trips(setup, tmp_path):
    root, model_dir, cfg, params, ids = setup
    adir = make_peft(model_dir, str(root / "rt"), seed=6, r=4, alpha=16, rslora=True)
    adapter = import_peft(adir, cfg)
    out = export_peft(adapter, str(tmp_path / "exported"), base_model=model_dir)
    cfg_json = json.load(open(os.path.join(out, "adapter_config.json")))
    assert cfg_json["use_rslora"] is False and np.isclose(cfg_json["lora_alpha"] / cfg_json["r"], 16 / 2)
    # PEFT loads our export and computes the same logits as from the original adapter
    assert np.abs(peft_logits(model_dir, out, ids) - peft_logits(model_dir, adir, ids)).max() <= 1e-5
    # and importing our export gives the same logits here
    again = import_peft(out, cfg)
    a = np.asarray(forward(params, cfg, jnp.asarray(ids), adapter=adapter)["logits"])
    b = np.asarray(forward(params, cfg, jnp.asarray(ids), adapter=again)["logits"])
    assert np.abs(a - b).max() <= 1e-5


def test_merge_equals_adapter(setup):
    root, model_dir, cfg, params, ids = setup
    adapter = import_peft(make_peft(model_dir, str(root / "merge"), seed=7), cfg)
    merged = merge_adapter(params, cfg, adapter)
    a = np.asarray(forward(params, cfg, jnp.asarray(ids), adapter=adapter)["logits"])
    b = np.asarray(forward(merged, cfg, jnp.asarray(ids))["logits"])
    assert_logits_close(a, b)


def test_adapter_that_does_not_fit(setup, tmp_path):
    root, model_dir, cfg, params, ids = setup
    other = make_tiny("llama", str(tmp_path / "wide"), hidden_size=32, num_attention_heads=2,
                      num_key_value_heads=1)
    adir = make_peft(other, str(tmp_path / "wide_peft"), seed=8)
    with pytest.raises(AdapterError, match="does not fit.*q_proj.lora_A.weight has shape"):
        import_peft(adir, cfg)
    bad = Adapter({"q_proj": jnp.zeros((cfg.num_layers, 1, 2, 7))}, {"q_proj": jnp.zeros((cfg.num_layers, 1, 2, 64))},
                  jnp.ones((1,)))
    with pytest.raises(ValueError, match="q_proj: A is"):
        forward(params, cfg, jnp.asarray(ids), adapter=bad)


def test_export_refuses_non_empty_dir(setup, tmp_path):
    root, model_dir, cfg, params, ids = setup
    adapter = import_peft(make_peft(model_dir, str(root / "exists"), seed=9), cfg)
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_peft(adapter, str(target))
    export_peft(adapter, str(target), overwrite=True)
    assert sorted(os.listdir(target)) == ["adapter_config.json", "adapter_model.safetensors"]
