"""Device meshes and shardings from one logical-axis rules table.

Parallelism is configured, not coded: the mesh has the axes ``data``, ``fsdp`` and ``tensor`` (sizes from the config,
one of them may be -1 = the rest), and every array — parameter, activation or generated adapter — is described by
*logical* axes that ``LOGICAL_RULES`` maps to mesh axes:

  batch -> (data, fsdp)    embed -> fsdp    mlp, heads, kv_heads, vocab -> tensor
  seq, layers, rank, norm -> replicated

A logical axis takes the longest prefix of its mesh axes whose product divides the dimension and that no earlier
dimension of the same array already uses, so small tensors (norms, tiny test models) never fail to place. An
activation [batch, seq, embed] therefore shards its batch over (data, fsdp) and keeps embed whole (fsdp is taken),
while a weight [embed, mlp] shards embed over fsdp and mlp over tensor.

Parameters get logical axes from ``PARAM_RULES``: (regex on the '/'-joined path, logical axes of the trailing dims).
Trainable trees without a matching rule fall back to FSDP on their largest divisible dimension.
Activations and adapters are pinned with ``constrain(x, logical_axes)`` inside the model code; it is a
``with_sharding_constraint`` while a mesh of more than one device is active (``with_mesh(mesh)``, i.e.
``jax.set_mesh``) and a no-op otherwise. ``adapter_axes`` gives an ``Adapter``'s logical axes.
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from hyperlora_jax.lora import ATTN_MODULES, Adapter

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "vocab": ("tensor",),
    "layers": (),
    "rank": (),
    "seq": (),
    "norm": (),
}

# logical axes (d_in, d_out) of each projection: its kernel [d_in, d_out] and the last dim of its LoRA A / B
PROJECTION_AXES: dict[str, tuple[str, str]] = {
    "q_proj": ("embed", "heads"),
    "k_proj": ("embed", "kv_heads"),
    "v_proj": ("embed", "kv_heads"),
    "o_proj": ("heads", "embed"),
    "gate_proj": ("embed", "mlp"),
    "up_proj": ("embed", "mlp"),
    "down_proj": ("mlp", "embed"),
}

# (regex on the parameter path, logical axes of the last dims). Stacked layer params get "layers" in front.
PARAM_RULES: list[tuple[str, tuple[str, ...]]] = [
    (r"embed_tokens/embedding$", ("vocab", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    *[(rf"{'self_attn' if m in ATTN_MODULES else 'mlp'}/{m}/kernel$", axes) for m, axes in PROJECTION_AXES.items()],
    (r"(norm|layernorm)[^/]*/scale$", ("norm",)),
]


class MeshError(ValueError):
    """A mesh that cannot be built on the available devices."""


def mesh_shape(spec: Mapping[str, int], n_devices: int) -> tuple[int, ...]:
    """Resolves {'data': -1, 'fsdp': 2, 'tensor': 1} against ``n_devices``; MeshError if it does not fit."""
    unknown = set(spec) - set(MESH_AXES)
    if unknown:
        raise MeshError(f"unknown mesh axes {sorted(unknown)} (axes: {', '.join(MESH_AXES)})")
    sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive, at most one may be -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % fixed:
            raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide the {n_devices} devices")
        sizes[sizes.index(-1)] = n_devices // fixed
    if math.prod(sizes) != n_devices:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                        f"but {n_devices} are available")
    return tuple(sizes)


def make_mesh(spec: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(spec, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh) -> P:
    """PartitionSpec for an array of ``shape`` whose dims have the given logical names (None = replicated).

    Each dim takes the longest prefix of its rule's mesh axes (those of ``mesh`` with size > 1, not used by an
    earlier dim) whose product divides it. ``mesh``: a Mesh or AbstractMesh; axes it lacks count as size 1.
    Every name must be a key of ``LOGICAL_RULES`` (ValueError otherwise)."""
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {tuple(logical)} do not match an array of shape {tuple(shape)}")
    unknown = [n for n in logical if n is not None and n not in LOGICAL_RULES]
    if unknown:
        raise ValueError(f"unknown logical axes {unknown} (known: {', '.join(LOGICAL_RULES)})")
    sizes = dict(mesh.shape)
    used: set[str] = set()
    out = []
    for name, dim in zip(logical, shape):
        axes = tuple(a for a in LOGICAL_RULES[name] if a not in used and sizes.get(a, 1) > 1) if name else ()
        while axes and dim % math.prod(sizes[a] for a in axes):
            axes = axes[:-1]
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def param_logical_axes(path: str, ndim: int) -> tuple[str | None, ...] | None:
    for pattern, axes in PARAM_RULES:
        if re.search(pattern, path):
            lead = ("layers",) * (ndim - len(axes))
            return (lead + axes)[-ndim:] if ndim >= len(axes) else None
    return None


def fsdp_spec(shape: Sequence[int], mesh: Mesh) -> P:
    """FSDP fallback: shard the largest dimension divisible by the fsdp axis, replicate the rest."""
    n = mesh.shape["fsdp"]
    if n == 1 or not shape:
        return P()
    dims = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in dims:
        if shape[i] % n == 0 and shape[i] >= n:
            spec = [None] * len(shape)
            spec[i] = "fsdp"
            return P(*spec)
    return P()


def param_shardings(tree, mesh: Mesh):
    """NamedShardings for a parameter (or optimizer-state) tree, from PARAM_RULES with the FSDP fallback."""
    def one(path, x):
        shape = getattr(x, "shape", ())
        logical = param_logical_axes(path_str(path), len(shape))
        spec = logical_to_spec(logical, shape, mesh) if logical else fsdp_spec(shape, mesh)
        return NamedSharding(mesh, spec)
    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch arrays: leading axis over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's local rows into global arrays sharded over the batch axes."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in batch.items()}


# ----- activations and adapters -------------------------------------------------------------------------------

@contextlib.contextmanager
def with_mesh(mesh: Mesh):
    """Makes ``mesh`` the active mesh (``jax.set_mesh``) for the block: ``constrain`` then pins activations and
    adapters traced inside it. Enter it outside ``jax.jit`` (around the calls that trace)."""
    with jax.set_mesh(mesh):
        yield mesh


def axes_size(mesh, axes: Sequence[str]) -> int:
    """Number of shards over the mesh axes ``axes`` (axes the mesh lacks count as 1)."""
    sizes = dict(mesh.shape)
    return math.prod(sizes.get(a, 1) for a in axes)


def active_mesh():
    """The active mesh (an AbstractMesh) when it spans more than one device, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty or mesh.size == 1 else mesh


def constrain(x, logical_axes):
    """``jax.lax.with_sharding_constraint`` of ``x`` to its logical axes under the active mesh; ``x`` unchanged
    when no mesh (or a one-device mesh) is active.

    x: an array with ``logical_axes`` a sequence of names (None = replicated) of length ``x.ndim``, or a pytree with
    a matching pytree of ``PartitionSpec``s of logical names (e.g. ``adapter_axes``)."""
    mesh = active_mesh()
    if mesh is None:
        return x
    if not isinstance(logical_axes, P) and isinstance(logical_axes, (tuple, list)):
        logical_axes = P(*logical_axes)

    def one(a, axes):
        return jax.lax.with_sharding_constraint(a, logical_to_spec(tuple(axes), a.shape, mesh))
    return jax.tree_util.tree_map(one, x, logical_axes)


def adapter_axes(modules: Iterable[str]):
    """Logical axes of an ``Adapter`` (``lora.py`` layout) over ``modules`` (names, or the adapter's A dict):
    A[m] (layers, batch, rank, d_in axis of m), B[m] (layers, batch, rank, d_out axis of m), scale (batch,),
    as an ``Adapter`` of ``PartitionSpec``s of logical names. The batch axis shards like the activations'; the
    feature axes like the base projection's kernel (PROJECTION_AXES)."""
    modules = tuple(modules)
    unknown = [m for m in modules if m not in PROJECTION_AXES]
    if unknown:
        raise ValueError(f"adapter_axes: unknown modules {unknown} (known: {', '.join(PROJECTION_AXES)})")
    lead = ("layers", "batch", "rank")
    return Adapter(A={m: P(*lead, PROJECTION_AXES[m][0]) for m in modules},
                   B={m: P(*lead, PROJECTION_AXES[m][1]) for m in modules}, scale=P("batch"))
