"""Plain causal-LM training of a decoder (method 'lm'): the trainer's simplest plug-in.

Presets (``--config=configs/lm.py:PRESET``):
  tiny   a 2-layer llama on the synthetic copy task; seconds per step on one CPU (used by the tests).
"""
import ml_collections


def get_config(preset: str = "tiny"):
    c = ml_collections.ConfigDict()
    c.method = "lm"
    c.seed = 0
    c.num_train_steps = 8
    c.batch_size = 8
    c.grad_accum_steps = 1
    c.learning_rate = 3e-3
    c.warmup_steps = 2
    c.schedule = "cosine"
    c.end_lr_factor = 0.0
    c.weight_decay = 0.01
    c.adam_b1, c.adam_b2, c.adam_eps = 0.9, 0.999, 1e-8
    c.max_grad_norm = 1.0
    c.compute_dtype = "float32"
    c.remat = "none"
    c.distributed = "none"
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.log_every_steps = 1
    c.checkpoint_every_steps = 4
    c.keep_checkpoints = 3
    c.async_checkpoints = True
    c.eval_every_steps = 0
    c.best_metric = ""
    c.best_mode = "min"
    c.step_delay_s = 0.0  # sleep after each step: only to give preemption tests a window
    c.model = ml_collections.ConfigDict()
    c.model.init_from = ""
    c.model.hf_config = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                         "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
    c.data = ml_collections.ConfigDict({"source": "copy", "seq_len": 24, "vocab_low": 3})
    if preset != "tiny":
        raise ValueError(f"unknown preset {preset!r} for configs/lm.py (tiny)")
    return c
