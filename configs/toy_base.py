"""Pretrains the toy base model (method 'lm') on toy NIAH with the haystack in context, within its native window.

  python -m hyperlora_jax.train --config=configs/toy_base.py --workdir=/tmp/toy_base

At the end the model is exported as a Hugging Face directory (WORKDIR/export, with the character-level tokenizer
of hyperlora_jax.tiny.build_char_tokenizer): that directory is the checkpoint shipped in hyperlora_jax/assets/toy_base.
"""
import ml_collections

from hyperlora_jax.config_defaults import trainer_defaults

WINDOW = 128  # the native window W (max_position_embeddings)


def get_config(preset: str = "default"):
    c = trainer_defaults()
    c.method = "lm"
    c.num_train_steps = 2000
    c.batch_size = 32
    c.learning_rate = 2e-3
    c.warmup_steps = 100
    c.weight_decay = 0.01
    c.log_every_steps = 25
    c.checkpoint_every_steps = 250
    c.model = ml_collections.ConfigDict()
    c.model.init_from = ""
    c.model.attention = "auto"  # auto (cudnn on GPU, splash on TPU, else xla) | xla | cudnn | splash
    c.model.export_dir = "export"
    c.model.hf_config = {"model_type": "llama", "vocab_size": 108, "hidden_size": 96, "intermediate_size": 256,
                         "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24,
                         "max_position_embeddings": WINDOW, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                         "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 4, "pad_token_id": 5}
    c.data = ml_collections.ConfigDict({"source": "toy_niah", "seq_len": WINDOW, "min_doc_len": 32,
                                        "max_doc_len": WINDOW - 24, "doc_loss_weight": 0.1, "tokenizer": ""})
    if preset == "smoke":
        c.num_train_steps, c.batch_size, c.log_every_steps, c.checkpoint_every_steps = 10, 8, 1, 5
    elif preset == "strings":
        return _strings(c)
    elif preset != "default":
        raise ValueError(f"unknown preset {preset!r} for configs/toy_base.py (default, smoke, strings)")
    return c


def _strings(c):
    """The string-task base (hyperlora_jax/assets/toy_strings_base): a 3-layer llama (hidden 96), same character
    tokenizer and chat template, pretrained on a mixture of all 40 toy string tasks (hyperlora_jax/toy/string_tasks.py)
    where the user turn is the bare word half of the time and ``task_tag(task) + word`` otherwise (``"07:"`` for
    plain task 7, ``"U07:"`` for its capitals version; hyperlora_jax/toy/string_sources.py). It has every skill,
    but given only a word it cannot know which one is wanted: that is the adapter's job (configs/toy_strings_lora.py,
    configs/t2l.py:toy).

    Reproduce the shipped checkpoint (then copy WORKDIR/export to hyperlora_jax/assets/toy_strings_base):
      python -m hyperlora_jax.train --config=configs/toy_base.py:strings --workdir=/tmp/sbase
    Measured: 3000 steps, 6 min 40 s on 2 CPU cores (shared with a benchmark), final loss ~0.33 (the bare-word half
    is ambiguous by construction). Greedy exact match on 16 fresh words per task: 98.0 % with the task tag (weakest:
    upper_dedupe 81 %, reverse / dedupe / drop_vowels 88 %; 33 tasks at 100 %), 4.8 % with the bare word."""
    c.num_train_steps = 3000
    c.batch_size = 64
    c.learning_rate = 2e-3
    c.warmup_steps = 100
    c.log_every_steps = 50
    c.checkpoint_every_steps = 500
    c.model.hf_config = dict(c.model.hf_config, max_position_embeddings=160)  # same architecture as the NIAH base
    c.data = ml_collections.ConfigDict({"source": "toy_strings", "seq_len": 28, "tag_prob": 0.5, "tokenizer": ""})
    return c
