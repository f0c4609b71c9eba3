"""Device meshes and shardings from one logical-axis rules table.

Parallelism is configured, not coded: the mesh has the axes ``data``, ``fsdp`` and ``tensor`` (sizes from the config,
one of them may be -1 = the rest), and every array is described by *logical* axes (``batch``, ``embed``, ``mlp``,
``heads``, ``vocab``, ``layers``, ...) that ``LOGICAL_RULES`` maps to mesh axes. A logical axis whose mesh axes do not
divide the dimension is left unsharded, so small tensors (norms, tiny test models) never fail to place.

Parameters get logical axes from ``PARAM_RULES``: (regex on the '/'-joined path, logical axes of the trailing dims).
Trainable trees without a matching rule fall back to FSDP on their largest divisible dimension.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

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

# (regex on the parameter path, logical axes of the last dims). Stacked layer params get "layers" in front.
PARAM_RULES: list[tuple[str, tuple[str, ...]]] = [
    (r"embed_tokens/embedding$", ("vocab", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"self_attn/(q_proj)/kernel$", ("embed", "heads")),
    (r"self_attn/(k_proj|v_proj)/kernel$", ("embed", "kv_heads")),
    (r"self_attn/o_proj/kernel$", ("heads", "embed")),
    (r"mlp/(gate_proj|up_proj)/kernel$", ("embed", "mlp")),
    (r"mlp/down_proj/kernel$", ("mlp", "embed")),
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


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> P:
    """PartitionSpec for an array of ``shape`` whose dims have the given logical names (None = replicated)."""
    used: set[str] = set()
    out = []
    for name, dim in zip(logical, shape):
        axes = tuple(a for a in LOGICAL_RULES.get(name, ()) if a not in used and mesh.shape[a] > 1) if name else ()
        size = math.prod(mesh.shape[a] for a in axes)
        if axes and dim % size == 0:
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        else:
            out.append(None)
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
