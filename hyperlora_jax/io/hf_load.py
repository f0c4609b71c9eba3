"""Hugging Face checkpoint directories <-> the decoder's stacked parameter tree.

One name map (``param_map``) drives both directions: each entry pairs a parameter path with the HF tensor names
of every layer and a transform (HF ``Linear.weight`` is [out, in]; our kernels are [in, out]).

``load_model(dir)`` reads ``config.json`` and ``model.safetensors`` (or the shards listed in
``model.safetensors.index.json``) into float32 or bfloat16, optionally straight into given shardings (or those of a
mesh's rules table).
Missing, unexpected or mis-shaped tensors raise one ``CheckpointError`` that lists all of them.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.config import ModelConfig
from hyperlora_jax.model import init_params
from hyperlora_jax.io.atomic import atomic_write_dir
from hyperlora_jax.io.safetensors_io import SafetensorsError, SafetensorsFile, save_file


class CheckpointError(ValueError):
    """A checkpoint directory whose tensors do not build the model."""


def param_map(cfg: ModelConfig) -> list[tuple[tuple[str, ...], list[str], bool]]:
    """[(param path, HF tensor names (one per layer for stacked params), transpose?)]."""
    entries = [(("embed_tokens", "embedding"), ["model.embed_tokens.weight"], False),
               (("norm", "scale"), ["model.norm.weight"], False)]
    if not cfg.tie_word_embeddings:
        entries.append((("lm_head", "kernel"), ["lm_head.weight"], True))
    layer_keys: list[tuple[tuple[str, ...], str, bool]] = []
    for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
        layer_keys.append((("self_attn", m, "kernel"), f"self_attn.{m}.weight", True))
    for m in ("gate_proj", "up_proj", "down_proj"):
        layer_keys.append((("mlp", m, "kernel"), f"mlp.{m}.weight", True))
    norms = ["input_layernorm", "post_attention_layernorm"]
    if cfg.sandwich_norms:
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    layer_keys += [((n, "scale"), f"{n}.weight", False) for n in norms]
    if cfg.qk_norm:
        layer_keys += [(("self_attn", n, "scale"), f"self_attn.{n}.weight", False) for n in ("q_norm", "k_norm")]
    for path, suffix, transpose in layer_keys:
        entries.append((("layers",) + path, [f"model.layers.{i}.{suffix}" for i in range(cfg.num_layers)],
                        transpose))
    return entries


def abstract_params(cfg: ModelConfig):
    """ShapeDtypeStructs of the parameter tree, without allocating."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))


def _tree_get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _tree_set(tree: dict, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


class _TensorIndex:
    """Tensor name -> open safetensors file, over a single file or sharded checkpoint."""

    def __init__(self, model_dir: str):
        index_path = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map", {})
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(model_dir, "*.safetensors")))
            weight_map = None
        if not files:
            bins = glob.glob(os.path.join(model_dir, "*.bin"))
            hint = " (only PyTorch .bin files found: convert them to safetensors)" if bins else ""
            raise CheckpointError(f"{model_dir!r} holds no *.safetensors weights{hint}")
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, SafetensorsFile] = {}
        for name in files:
            path = os.path.join(model_dir, name)
            if not os.path.isfile(path):
                raise CheckpointError(f"{model_dir!r}: shard {name} listed in the index is missing")
            sf = SafetensorsFile(path)
            self.files[name] = sf
            for k in sf.keys():
                if weight_map is None or weight_map.get(k) == name:
                    self.where[k] = sf

    def shape(self, key):
        return self.where[key].shape(key)

    def get(self, key) -> np.ndarray:
        return self.where[key].get(key)


def load_params(model_dir: str, cfg: ModelConfig, dtype=jnp.float32, shardings=None):
    """Reads the weights of ``model_dir`` into the parameter tree of ``cfg``.

    dtype: float32 or bfloat16 (storage dtype of every parameter).
    shardings: optional pytree of ``jax.sharding.Sharding`` matching the parameter tree; each device then gets only
    its slice (built with ``jax.make_array_from_callback``).
    """
    index = _TensorIndex(model_dir)
    abstract = abstract_params(cfg)
    entries = param_map(cfg)
    problems: list[str] = []
    used: set[str] = set()
    for path, keys, transpose in entries:
        want = _tree_get(abstract, path).shape
        per_layer = want[1:] if path[0] == "layers" else want
        hf_shape = tuple(reversed(per_layer)) if transpose else tuple(per_layer)
        for k in keys:
            used.add(k)
            if k not in index.where:
                problems.append(f"missing {k}")
            elif tuple(index.shape(k)) != hf_shape:
                problems.append(f"{k} has shape {list(index.shape(k))}, expected {list(hf_shape)}")
    unexpected = sorted(k for k in index.where if k not in used and not _ignorable(k, cfg))
    problems += [f"unexpected {k}" for k in unexpected]
    if problems:
        raise CheckpointError(f"{model_dir!r} does not match the {cfg.model_type} config: " + "; ".join(problems))

    np_dtype = np.dtype(jnp.dtype(dtype))
    params: dict = {}
    for path, keys, transpose in entries:
        def build(keys=keys, transpose=transpose, stacked=path[0] == "layers"):
            mats = [index.get(k) for k in keys]
            mats = [m.T if transpose else m for m in mats]
            out = np.stack(mats) if stacked else mats[0]
            return np.asarray(out, dtype=np_dtype)

        if shardings is None:
            value = jnp.asarray(build())
        else:
            sharding, full = _tree_get(shardings, path), build()
            value = jax.make_array_from_callback(full.shape, sharding, lambda idx, full=full: full[idx])
        _tree_set(params, path, value)
    return params


def _ignorable(key: str, cfg: ModelConfig) -> bool:
    # tied checkpoints sometimes still carry a copy of the embeddings as lm_head; rotary caches of old saves
    return (key == "lm_head.weight" and cfg.tie_word_embeddings) or key.endswith("rotary_emb.inv_freq")


def load_model(model_dir: str, dtype=jnp.float32, shardings=None, mesh=None):
    """(ModelConfig, params) from a local Hugging Face directory.

    shardings: as ``load_params``; or mesh: a ``jax.sharding.Mesh`` whose parameter shardings
    (``sharding.param_shardings``, the rules table) each leaf is loaded straight into (no whole-model device copy).
    """
    cfg = ModelConfig.from_pretrained(model_dir)
    if mesh is not None:
        if shardings is not None:
            raise ValueError("load_model: pass shardings or mesh, not both")
        from hyperlora_jax.sharding import param_shardings
        shardings = param_shardings(abstract_params(cfg), mesh)
    try:
        return cfg, load_params(model_dir, cfg, dtype, shardings)
    except SafetensorsError as e:
        raise CheckpointError(str(e)) from None


def params_to_hf(params, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The parameter tree as HF tensor names -> numpy arrays ([out, in] linear weights)."""
    out = {}
    for path, keys, transpose in param_map(cfg):
        value = np.asarray(jax.device_get(_tree_get(params, path)))
        if path[0] == "layers":
            for i, k in enumerate(keys):
                out[k] = value[i].T if transpose else value[i]
        else:
            out[keys[0]] = value.T if transpose else value
    return out


def save_pretrained(params, hf_config: dict[str, Any], out_dir: str,
                    extra_files: Iterable[tuple[str, Callable[[str], None]]] = ()):
    """Writes ``config.json`` + ``model.safetensors`` (+ extra files written by callables) atomically
    (:func:`hyperlora_jax.io.atomic.atomic_write_dir`); an existing non-empty ``out_dir`` is refused
    (FileExistsError)."""
    cfg = ModelConfig.from_hf_dict(hf_config)

    def write(tmp):
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2)
        save_file({k: np.ascontiguousarray(v) for k, v in params_to_hf(params, cfg).items()},
                  os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        for _, writer in extra_files:
            writer(tmp)

    atomic_write_dir(out_dir, write)
