"""Optimizer: AdamW with the references' weight-decay exclusions, warmup + cosine / linear / constant schedules,
global-norm clipping. Gradient accumulation happens in the train step (a scan over micro-batches)."""
from __future__ import annotations

import re

import jax
import optax

from hyperlora_jax.sharding import path_str

# Parameters never decayed (as the references' HF Trainer does: biases and every norm weight; also embeddings
# of learned positions/latents and scalers, which the references keep out of decay via their LayerNorm/bias naming).
NO_DECAY = re.compile(r"(bias|norm|layernorm|LayerNorm|ln_|scale$|embedding$)")


def learning_rate_schedule(cfg) -> optax.Schedule:
    """cfg: learning_rate, warmup_steps, num_train_steps, schedule in {'cosine', 'linear', 'constant'}."""
    peak, warm, total = cfg.learning_rate, int(cfg.warmup_steps), int(cfg.num_train_steps)
    decay = max(total - warm, 1)
    kind = cfg.get("schedule", "cosine")
    if kind == "cosine":
        main = optax.cosine_decay_schedule(peak, decay, alpha=cfg.get("end_lr_factor", 0.0))
    elif kind == "linear":
        main = optax.linear_schedule(peak, peak * cfg.get("end_lr_factor", 0.0), decay)
    elif kind == "constant":
        main = optax.constant_schedule(peak)
    else:
        raise ValueError(f"unknown schedule {kind!r} (cosine, linear, constant)")
    if warm <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), main], [warm])


def decay_mask(params):
    return jax.tree_util.tree_map_with_path(lambda p, x: not NO_DECAY.search(path_str(p)) and x.ndim > 1, params)


def make_optimizer(cfg, decay_mask_fn=None) -> optax.GradientTransformation:
    """decay_mask_fn: params -> pytree of bools (True = decayed); a method's own exclusions, default ``decay_mask``."""
    parts = []
    if cfg.get("max_grad_norm", 0.0):
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.get("adam_b1", 0.9), b2=cfg.get("adam_b2", 0.999),
                             eps=cfg.get("adam_eps", 1e-8), weight_decay=cfg.get("weight_decay", 0.0),
                             mask=decay_mask_fn or decay_mask))
    return optax.chain(*parts)
