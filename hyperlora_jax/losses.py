"""Token-level losses and reductions shared by every method and evaluator (one implementation each).

Conventions: logits [B, T, V] (any float dtype; the softmax is taken in float32), integer targets [B, T],
float masks [B, T] (1 = counted). "next-token" functions use position t's logits to predict token t+1 and the
loss_mask convention of the data pipeline (mask[t] = 1 iff token t+1 is a target).
"""
import jax
import jax.numpy as jnp


def log_softmax32(logits):
    """log-softmax over the vocabulary [..., V], taken in float32 whatever the logits' dtype."""
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def pick(logp, ids):
    """logp [..., V] at token ids [..., k] -> [..., k] (the one vocabulary gather of the project's losses)."""
    return jnp.take_along_axis(logp, ids.astype(jnp.int32), axis=-1)


def token_logprobs(logits, targets):
    """log p(targets) [B, T] from logits [B, T, V] (float32 log-softmax) and target ids [B, T]."""
    return pick(log_softmax32(logits), targets[..., None])[..., 0]


def token_ce(logits, targets, label_smoothing: float = 0.0):
    """Per-token cross-entropy [B, T]; with label_smoothing eps, torch's (1 - eps) * nll + eps * mean_v(-log p_v)."""
    logp = log_softmax32(logits)
    nll = -pick(logp, targets[..., None])[..., 0]
    if label_smoothing:
        return (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    return nll


def next_token_ce(logits, tokens, label_smoothing: float = 0.0):
    """Per-position next-token cross-entropy [B, T-1]: logits [B, T, V] at t scored against tokens [B, T] at t+1."""
    return token_ce(logits[:, :-1], tokens[:, 1:], label_smoothing)


def next_token_row_ce(logits, tokens, loss_mask, label_smoothing: float = 0.0):
    """(loss, n_tokens): next_token_ce (torch-style label smoothing) averaged by row_mean over the loss positions
    (loss_mask [B, T], position t predicts token t+1: its last column is ignored), and their count. The SFT loss of
    T2L and of the LoRA bank. logits [B, T, V], tokens [B, T]."""
    m = loss_mask[:, :-1].astype(jnp.float32)
    return row_mean(next_token_ce(logits, tokens, label_smoothing), m), m.sum()


def token_mean(values, mask):
    """Mean of values [B, T] over all positions with mask [B, T] = 1 (0 when none): (mean, count)."""
    count = mask.sum()
    return (values * mask).sum() / jnp.maximum(count, 1.0), count


def row_mean(values, mask):
    """Mean over each row's masked positions, then over rows that have any. values / mask [B, T] -> scalar."""
    tok = mask.sum(axis=1)
    row = (values * mask).sum(axis=1) / jnp.maximum(tok, 1.0)
    has = (tok > 0).astype(jnp.float32)
    return (row * has).sum() / jnp.maximum(has.sum(), 1.0)


def teacher_top_k(teacher_logits, k: int):
    """(probabilities, ids) [B, R, k] of the teacher's k most likely tokens (float32 softmax, no gradient, not
    renormalised) from teacher_logits [B, R, V]."""
    t = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32), axis=-1)
    return jax.lax.top_k(t, k)


def top_k_ce(student_logits, top_p, top_i):
    """Per-position CE [B, R] of student_logits [B, R, V] against the teacher's top-k (top_p, top_i [B, R, k]):
    - sum_j top_p[j] * log_softmax(student)[top_i[j]] (D2L's unrenormalised top-k KD)."""
    return -(top_p * pick(log_softmax32(student_logits), top_i)).sum(-1)


def kd_loss(student_logits, teacher_logits, valid, top_k: int):
    """D2L KD loss: top_k_ce against teacher_top_k, averaged by row_mean over valid [B, R] response positions."""
    top_p, top_i = teacher_top_k(teacher_logits, top_k)
    return row_mean(top_k_ce(student_logits, top_p, top_i), valid.astype(jnp.float32))


def adapter_l1(adapter) -> jax.Array:
    """Mean over the adapter's modules of mean|A| + mean|B| (scalar)."""
    parts = [jnp.abs(adapter.A[m]).mean() + jnp.abs(adapter.B[m]).mean() for m in adapter.modules]
    return sum(parts) / len(parts)


def adapter_l2(adapter) -> jax.Array:
    """Sum over the adapter's modules of mean(A^2) + mean(B^2), in float32 (scalar)."""
    return sum(jnp.mean(jnp.square(adapter.A[m].astype(jnp.float32))) +
               jnp.mean(jnp.square(adapter.B[m].astype(jnp.float32))) for m in adapter.A)
