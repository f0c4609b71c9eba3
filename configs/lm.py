"""Plain causal-LM training of a decoder (method 'lm'): the trainer's simplest plug-in.

Presets (``--config=configs/lm.py:PRESET``):
  tiny   a 2-layer llama on the synthetic copy task; well under a second per step on one CPU (used by the tests).
"""
import ml_collections

from hyperlora_jax.config_defaults import trainer_defaults


def get_config(preset: str = "tiny"):
    if preset != "tiny":
        raise ValueError(f"unknown preset {preset!r} for configs/lm.py (tiny)")
    c = trainer_defaults()
    c.method = "lm"
    c.num_train_steps = 8
    c.batch_size = 8
    c.learning_rate = 3e-3
    c.warmup_steps = 2
    c.weight_decay = 0.01
    c.log_every_steps = 1
    c.checkpoint_every_steps = 4
    c.model = ml_collections.ConfigDict()
    c.model.init_from = ""
    c.model.attention = "auto"  # auto (cudnn on GPU, splash on TPU, else xla) | xla | cudnn | splash
    c.model.export_dir = ""
    c.model.hf_config = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                         "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
    c.data = ml_collections.ConfigDict({"source": "copy", "seq_len": 24, "vocab_low": 3, "tokenizer": ""})
    return c
