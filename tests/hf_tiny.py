"""Tiny random Hugging Face models for parity tests: built with transformers, saved with save_pretrained."""
import os

import numpy as np
import torch
import transformers

DATA = os.path.join(os.path.dirname(__file__), "data")

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6)

FAMILIES = {
    "llama": (transformers.LlamaConfig, {}),
    "llama3_rope": (transformers.LlamaConfig, dict(rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32))),
    "mistral": (transformers.MistralConfig, dict(sliding_window=None)),
    "qwen3": (transformers.Qwen3Config, dict(tie_word_embeddings=True)),
    "gemma2": (transformers.Gemma2Config, dict(sliding_window=8, query_pre_attn_scalar=24,
                                               attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
}


def make_tiny(family: str, out_dir: str, seed: int = 0, **overrides) -> str:
    """Builds a random tiny model of ``family`` (norm weights perturbed away from init) and saves it."""
    cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = cls(**{**BASE, **extra, **overrides})
    cfg._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (0.0 if family == "gemma2" else 1.0))
            elif "embed" in name or "lm_head" in name:
                p.copy_(torch.randn_like(p) * 0.5)
            else:
                p.copy_(torch.randn_like(p) * 0.15)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def load_torch(model_dir: str):
    return transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager").eval()


def torch_logits(model, ids, attention_mask=None, position_ids=None) -> np.ndarray:
    with torch.no_grad():
        kw = {}
        if attention_mask is not None:
            kw["attention_mask"] = torch.tensor(np.asarray(attention_mask))
        if position_ids is not None:
            kw["position_ids"] = torch.tensor(np.asarray(position_ids))
        return model(torch.tensor(np.asarray(ids)), **kw).logits.float().numpy()


def copy_tokenizer(out_dir: str):
    """Copies the tiny chat-templated tokenizer of tests/data/tokenizer into a model directory."""
    import shutil
    src = os.path.join(DATA, "tokenizer")
    for f in os.listdir(src):
        shutil.copy(os.path.join(src, f), os.path.join(out_dir, f))
