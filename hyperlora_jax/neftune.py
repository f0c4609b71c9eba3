"""NEFTune (Jain et al. 2023): uniform noise on a language model's input embeddings during fine-tuning."""
import math

import jax
import jax.numpy as jnp


def neftune_noise(x, rng, alpha: float):
    """x [B, T, H] + U(-alpha/sqrt(T*H), +alpha/sqrt(T*H)) drawn in float32 and cast to x's dtype, with T the
    (padded) sequence length and H the hidden size; alpha <= 0 returns x itself."""
    if alpha <= 0:
        return x
    mag = alpha / math.sqrt(x.shape[-2] * x.shape[-1])
    return x + jax.random.uniform(rng, x.shape, jnp.float32, -mag, mag).astype(x.dtype)
