"""The embedded default model: a tiny random llama with a character-level chat tokenizer, built by the project.

Nothing is downloaded: the weights come from a fixed seed and the tokenizer is assembled with the ``tokenizers``
library. The directory is a normal Hugging Face layout (config.json, model.safetensors, tokenizer files), built once
into ``$HYPERLORA_JAX_HOME`` (default ``~/.cache/hyperlora_jax``) and written atomically.
"""
from __future__ import annotations

import json
import os
import string

import jax

NAME = "tiny-random-llama-v2"
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|user|>", "<|assistant|>", "<|eot_id|>", "<pad>", "<unk>",
            "<|system|>"]
# A compact chat template (one special token per role) so that the toy world's native window is mostly document.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% if m['content'] %}<|system|>{{ m['content'] }}<|eot_id|>{% endif %}"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}<|eot_id|>"
    "{% else %}<|assistant|>{{ m['content'] }}<|eot_id|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def home() -> str:
    return os.environ.get("HYPERLORA_JAX_HOME", os.path.join(os.path.expanduser("~"), ".cache", "hyperlora_jax"))


def build_char_tokenizer(out_dir: str, extra_chars: str = "") -> int:
    """Writes a character-level tokenizer (special tokens, then printable ASCII) with a chat template.

    Returns the vocabulary size.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(string.printable + extra_chars))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True))
    tok.add_special_tokens(SPECIALS)
    tok.decoder = decoders.Fuse()
    from tokenizers import processors
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
        special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=4096)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return len(vocab)


def tiny_hf_config(vocab_size: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 4,
            "pad_token_id": 5, "torch_dtype": "float32"}


def ensure_tiny_model(root: str | None = None) -> str:
    """Path of the embedded tiny model directory, building it on first use."""
    from hyperlora_jax.io.hf_load import save_pretrained
    from hyperlora_jax.model import init_params
    from hyperlora_jax.config import ModelConfig

    path = os.path.join(root or home(), NAME)
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    import tempfile
    staging = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".tok-")
    vocab_size = build_char_tokenizer(staging)
    hf = tiny_hf_config(vocab_size)
    params = init_params(ModelConfig.from_hf_dict(hf), jax.random.PRNGKey(0))

    def copy_tokenizer(tmp):
        import shutil
        for f in os.listdir(staging):
            shutil.copy(os.path.join(staging, f), os.path.join(tmp, f))
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": 0, "eos_token_id": 4, "pad_token_id": 5}, f)

    try:
        save_pretrained(params, hf, path, extra_files=[("tokenizer", copy_tokenizer)])
    except OSError:
        if not os.path.isfile(os.path.join(path, "model.safetensors")):  # not a concurrent builder's win
            raise
    finally:
        import shutil
        shutil.rmtree(staging, ignore_errors=True)
    return path
