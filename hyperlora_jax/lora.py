"""LoRA adapters as data: the ``Adapter`` pytree and the one LoRA contraction of the project.

An adapter is *data*, not a parameter: the base model takes it as an argument, one adapter per batch row.

Layout (the project's canonical one):
  A[module]: [L, B, R, d_in]    rows of PEFT's ``lora_A.weight`` ([R, d_in]), stacked over layers L and batch B.
  B[module]: [L, B, R, d_out]   PEFT's ``lora_B.weight`` is [d_out, R]: this is its transpose.
  scale:     [B] float32        multiplies the LoRA delta: y = x W + scale * (x A^T) B.

``module`` is one of ``LORA_MODULES``. A module absent from the dicts carries no adapter. Different examples of a
batch may have different ranks only through zero padding to a common R (zero rows contribute nothing).

Conventions of the two methods (applied when an adapter is built, never inside the model):
  T2L: scale = alpha / sqrt(r) (rsLoRA, as trained) or alpha / r (as the published vLLM evaluations applied it).
  D2L: scale = alpha = 2 * r**1.5, applied directly.
"""
from __future__ import annotations

from typing import Mapping

import flax.struct
import jax
import jax.numpy as jnp

ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
LORA_MODULES = ATTN_MODULES + MLP_MODULES


@flax.struct.dataclass
class Adapter:
    """Per-example LoRA adapters for every layer. See the module docstring for the layout."""

    A: Mapping[str, jax.Array]
    B: Mapping[str, jax.Array]
    scale: jax.Array

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(m for m in LORA_MODULES if m in self.A)

    @property
    def batch_size(self) -> int:
        return int(self.scale.shape[0])

    @property
    def rank(self) -> int:
        return int(next(iter(self.A.values())).shape[2])

    def layer(self, i) -> "Adapter":
        """The adapter of layer ``i``: A [B, R, d_in], B [B, R, d_out] per module."""
        return Adapter({m: a[i] for m, a in self.A.items()}, {m: b[i] for m, b in self.B.items()}, self.scale)

    def take(self, idx) -> "Adapter":
        """Batch rows ``idx`` (in that order, repeats allowed; each in [0, batch_size)): idx [N] int (a sequence,
        NumPy or JAX array, also traced) -> A [L, N, R, d_in], B [L, N, R, d_out], scale [N]."""
        ix = jnp.asarray(idx, jnp.int32)
        return Adapter({m: jnp.take(a, ix, axis=1) for m, a in self.A.items()},
                       {m: jnp.take(b, ix, axis=1) for m, b in self.B.items()}, jnp.take(self.scale, ix))

    def zeros_like(self, batch_size: int | None = None) -> "Adapter":
        """An all-zero adapter (exactly the base model) with this one's modules, layers, rank and dtypes and
        ``batch_size`` rows (default: as many as this one): A [L, N, R, d_in], B [L, N, R, d_out], scale [N] = 0.
        It runs through the same compiled program as adapters of that shape."""
        n = self.batch_size if batch_size is None else int(batch_size)
        return Adapter({m: jnp.zeros((a.shape[0], n) + a.shape[2:], a.dtype) for m, a in self.A.items()},
                       {m: jnp.zeros((b.shape[0], n) + b.shape[2:], b.dtype) for m, b in self.B.items()},
                       jnp.zeros((n,), jnp.float32))

    def astype(self, dtype) -> "Adapter":
        return Adapter({m: a.astype(dtype) for m, a in self.A.items()},
                       {m: b.astype(dtype) for m, b in self.B.items()}, self.scale)


def check_adapter(adapter: Adapter, shapes: Mapping[str, tuple[int, int]], num_layers: int, batch: int | None = None):
    """Raises ValueError naming every module whose A/B do not fit ``shapes`` {module: (d_in, d_out)}."""
    problems = []
    for m in set(adapter.A) | set(adapter.B):
        if m not in shapes:
            problems.append(f"{m}: not a LoRA target of this model (targets: {', '.join(shapes)})")
            continue
        if m not in adapter.A or m not in adapter.B:
            problems.append(f"{m}: needs both A and B")
            continue
        a, b = adapter.A[m], adapter.B[m]
        d_in, d_out = shapes[m]
        if a.ndim != 4 or b.ndim != 4:
            problems.append(f"{m}: A and B must be [L, B, R, d], got A{tuple(a.shape)} B{tuple(b.shape)}")
            continue
        want_a = (num_layers, batch if batch is not None else a.shape[1], a.shape[2], d_in)
        want_b = (num_layers, a.shape[1], a.shape[2], d_out)
        if tuple(a.shape) != want_a:
            problems.append(f"{m}: A is {tuple(a.shape)}, expected {want_a} [L, B, R, d_in]")
        if tuple(b.shape) != want_b:
            problems.append(f"{m}: B is {tuple(b.shape)}, expected {want_b} [L, B, R, d_out]")
    if batch is not None and adapter.scale.shape != (batch,):
        problems.append(f"scale is {tuple(adapter.scale.shape)}, expected ({batch},)")
    if problems:
        raise ValueError("adapter does not fit the model: " + "; ".join(sorted(problems)))


def lora_delta(x: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array) -> jax.Array:
    """The LoRA term ``scale * (x A^T) B`` for one layer, one adapter per batch row.

    x: [B, T, d_in]; a: [B, R, d_in]; b: [B, R, d_out]; scale: [B]. Returns [B, T, d_out] in x's dtype.
    Two batched contractions; never a per-example dense [d_in, d_out] or a per-token [T, R, d] tensor.
    """
    h = jnp.einsum("btd,brd->btr", x, a.astype(x.dtype))
    h = h * scale.astype(x.dtype)[:, None, None]
    return jnp.einsum("btr,bro->bto", h, b.astype(x.dtype))


def stack_adapters(adapters: "list[Adapter]") -> Adapter:
    """Concatenates adapters along the batch axis. Ranks are zero-padded to the largest; a module that some
    adapters lack is zero-filled for them (zero rows add nothing)."""
    if not adapters:
        raise ValueError("stack_adapters needs at least one adapter")
    modules = [m for m in LORA_MODULES if any(m in a.A for a in adapters)]
    rank = max(a.rank for a in adapters)
    out_a, out_b = {}, {}
    for m in modules:
        ref = next(a for a in adapters if m in a.A)
        n_layers, d_in, d_out = ref.A[m].shape[0], ref.A[m].shape[3], ref.B[m].shape[3]
        parts_a, parts_b = [], []
        for ad in adapters:
            n = ad.batch_size
            if m in ad.A:
                pad = ((0, 0), (0, 0), (0, rank - ad.A[m].shape[2]), (0, 0))
                parts_a.append(jnp.pad(ad.A[m], pad))
                parts_b.append(jnp.pad(ad.B[m], pad))
            else:
                parts_a.append(jnp.zeros((n_layers, n, rank, d_in), ref.A[m].dtype))
                parts_b.append(jnp.zeros((n_layers, n, rank, d_out), ref.B[m].dtype))
        out_a[m], out_b[m] = jnp.concatenate(parts_a, axis=1), jnp.concatenate(parts_b, axis=1)
    return Adapter(out_a, out_b, jnp.concatenate([jnp.asarray(a.scale, jnp.float32) for a in adapters]))
