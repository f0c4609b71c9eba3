"""T2L checkpoints: import of an official run directory, and the project's own format.

Official run directory (``train_outputs/sft/hyper_lora/<run>/`` of SakanaAI/text-to-lora):
  hypermod.pt          ``torch.save(hypermod.state_dict())``, read with :mod:`hyperlora_jax.io.torch_pickle` (no torch,
                       no pickled code executed).
  args.yaml            training arguments, read with :mod:`hyperlora_jax.io.safe_yaml` (``!!python/object/apply:``
                       tags yield their single argument; no Python object is built; size and alias expansion bounded).
  adapter_config.json  PEFT config of the training run: r, lora_alpha, and ``target_modules`` in the order of the
                       training process's Python set, which is the row order of ``layer_type_encoder``.

Module-type order: by default taken from ``adapter_config.json`` ``target_modules``. PEFT writes a *copy* of the
training set there, and for a few percent of hash seeds the copy iterates in a different order than the set the
training process used, so the file can be wrong; ``module_order=`` overrides it (row i of the type embedding is then
``module_order[i]``). Rows are never permuted: the config records the order.

Project format (a directory):
  config.json          {"format": "hyperlora_jax.t2l", "format_version": 1, "hypernet": T2LConfig fields,
                        "emb_model", "model_dir", "lora_alpha", "r", "target_modules", "source": {...},
                        optional "lora_scale": the scale convention the hypernetwork was trained with
                        ("rslora" | "alpha_over_r"; written by ``export``; absent = "rslora", the reference's),
                        "encoder_pooling", "system_turn"}
  params.safetensors   float32 parameters, keys = flattened Flax param paths joined with '/'.
Written through :mod:`hyperlora_jax.io.param_dir` (a temporary sibling directory renamed into place: never
half-written).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from hyperlora_jax.io import torch_pickle
from hyperlora_jax.io.safe_yaml import load_yaml
from hyperlora_jax.io.param_dir import CONFIG_FILE, PARAMS_FILE, check_param_shapes, load_param_dir, save_param_dir
from hyperlora_jax.t2l.hypernet import T2LConfig, param_shapes

FORMAT = "hyperlora_jax.t2l"
FORMAT_VERSION = 1

# Reference state-dict buffers that carry no trainable weight in SFT checkpoints.
_BUFFER_PREFIXES = ("AB_offset.", "mean_recon_target.", "std_recon_target.")


# --------------------------------------------------------------------------------------------------- key map
def torch_key_map(cfg: T2LConfig) -> dict[str, tuple[str, bool]]:
    """Reference state-dict key -> (Flax param path joined with '/', transpose?) for ``cfg``'s variant."""
    km: dict[str, tuple[str, bool]] = {}

    def linear(tk, fk):
        km[f"{tk}.weight"] = (f"{fk}/kernel", True)
        km[f"{tk}.bias"] = (f"{fk}/bias", False)

    def norm(tk, fk):
        km[f"{tk}.weight"] = (f"{fk}/scale", False)
        km[f"{tk}.bias"] = (f"{fk}/bias", False)

    linear("task_encoder.mlp.0", "task_encoder/linear")
    norm("task_encoder.mlp.1", "task_encoder/norm")
    km["layer_depth_encoder.0.weight"] = ("depth_emb/embedding", False)
    norm("layer_depth_encoder.1", "depth_norm")
    km["layer_type_encoder.0.weight"] = ("type_emb/embedding", False)
    norm("layer_type_encoder.1", "type_norm")
    linear("mixer.1", "mixer/fc1")
    linear("mixer.4", "mixer/fc2")
    for k in ("mlp1", "mlp2"):
        norm(f"{k}.mlp.0", f"{k}/norm")
        linear(f"{k}.mlp.1", f"{k}/fc1")
        linear(f"{k}.mlp.4", f"{k}/fc2")
    norm("mlp3.0", "mlp3/norm")
    linear("mlp3.1", "mlp3/fc1")
    linear("mlp3.4", "mlp3/fc2")
    for m in cfg.target_modules:
        linear(f"heads.{m}", f"heads/{m}")
    if cfg.variant in ("M", "S"):
        for m in cfg.target_modules:
            for p in ("A", "B"):
                km[f"out_emb.{m}.{p}"] = (f"out_emb/{m}/{p}", False)
        norm("out_emb_norm", "out_emb_norm")
    if cfg.variant == "S":
        km["pos_emb.0.weight"] = ("pos_emb/embedding", False)
        norm("pos_emb.1", "pos_norm")
    return km


def _flat_shapes(cfg: T2LConfig) -> dict[str, tuple[int, ...]]:
    return {"/".join(k): tuple(v.shape) for k, v in flatten_dict(param_shapes(cfg)).items()}


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], cfg: T2LConfig, *, source: str = "checkpoint"
                           ) -> dict:
    """Maps a reference ``HyperModulator`` state dict onto the Flax params of ``cfg``.

    Linear ``weight [out, in]`` -> ``kernel [in, out]``; LayerNorm ``weight/bias`` -> ``scale/bias``; embeddings and
    head bias (A block [r, in] then B block [r, out], row-major) unchanged. Raises one ValueError naming every
    missing key, unexpected key and shape mismatch.
    """
    km = torch_key_map(cfg)
    expected = _flat_shapes(cfg)
    assert set(p for p, _ in km.values()) == set(expected), "key map out of sync with the module"
    problems, flat = [], {}
    for tk, (fk, transpose) in km.items():
        if tk not in state_dict:
            problems.append(f"missing {tk} (expected shape {_torch_shape(expected[fk], transpose)})")
            continue
        a = np.asarray(state_dict[tk])
        want = _torch_shape(expected[fk], transpose)
        if tuple(a.shape) != want:
            problems.append(f"{tk}: shape {tuple(a.shape)}, expected {want}")
            continue
        if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
            problems.append(f"{tk}: dtype {a.dtype} is not floating point")
            continue
        a = a.astype(np.float32)
        flat[fk] = np.ascontiguousarray(a.T if transpose else a)
    for tk in state_dict:
        if tk not in km and not tk.startswith(_BUFFER_PREFIXES):
            problems.append(f"unexpected key {tk}")
    if problems:
        raise ValueError(f"{source} does not fit a T2L-{cfg.variant} hypernetwork "
                         f"(latent {cfg.latent_size}, head_in {cfg.head_in_size}, r {cfg.r}, "
                         f"modules {list(cfg.target_modules)}): " + "; ".join(problems))
    return unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in flat.items()})


def _torch_shape(flax_shape, transpose):
    return tuple(reversed(flax_shape)) if transpose else tuple(flax_shape)


# --------------------------------------------------------------------------------------------------- official run
def _variant(args: Mapping[str, Any], where: str) -> str:
    shared, autoreg = bool(args.get("shared_AB_head", False)), bool(args.get("autoreg_gen", False))
    learnable = bool(args.get("learnable_pos_emb", False))
    if not shared and not autoreg:
        return "L"
    if shared and not autoreg:
        return "M"
    if shared and autoreg and learnable:
        return "S"
    raise ValueError(f"{where}: unsupported T2L variant (shared_AB_head={shared}, autoreg_gen={autoreg}, "
                     f"learnable_pos_emb={learnable}); only L, M and S with learnable positions are ported")


def import_run(run_dir: str, *, module_order: Sequence[str] | None = None,
               features: Mapping[str, tuple[int, int]] | None = None) -> tuple[dict, T2LConfig, dict]:
    """Imports an official T2L run directory (``hypermod.pt`` + ``args.yaml`` + ``adapter_config.json``).

    run_dir:      the run directory, or a ``checkpoints/it_*`` directory (its ``args.yaml`` and
                  ``adapter_config.json`` are then taken from the run directory two levels up unless present beside).
    module_order: overrides the module-type order read from ``adapter_config.json`` (see the module docstring).
    features:     {module: (in, out)}; only needed when the state dict lacks the ``AB_offset`` buffers that record
                  them.

    Returns (params, cfg, meta) where meta has ``emb_model``, ``model_dir``, ``lora_alpha``, ``r``,
    ``target_modules`` and ``source``. Raises ValueError (one message naming every problem) for a checkpoint that
    does not fit, and :class:`hyperlora_jax.io.torch_pickle.UnsafeCheckpointError` for a pickle with foreign globals.
    """
    paths = {"hypermod.pt": os.path.join(run_dir, "hypermod.pt")}
    config_dir = run_dir
    # checkpoints/it_<step>/hypermod.pt keeps its configs in the run directory two levels up
    for cand in (run_dir, os.path.dirname(os.path.dirname(os.path.abspath(run_dir)))):
        if all(os.path.isfile(os.path.join(cand, n)) for n in ("args.yaml", "adapter_config.json")):
            config_dir = cand
            break
    for n in ("args.yaml", "adapter_config.json"):
        paths[n] = os.path.join(config_dir, n)
    missing = [n for n, p in paths.items() if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{run_dir}: not a T2L run directory (missing {', '.join(missing)})")
    args = load_yaml(paths["args.yaml"])
    if not isinstance(args, dict):
        raise ValueError(f"{paths['args.yaml']}: expected a mapping of training arguments")
    absent = [k for k in ("hypernet_latent_size", "head_in_size") if k not in args]
    if absent:
        raise ValueError(f"{paths['args.yaml']}: missing {', '.join(absent)}")
    with open(paths["adapter_config.json"], encoding="utf-8") as f:
        try:
            peft_cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{paths['adapter_config.json']}: not JSON ({e})") from None
    absent = [k for k in ("r", "lora_alpha") if k not in peft_cfg]
    if absent:
        raise ValueError(f"{paths['adapter_config.json']}: missing {', '.join(absent)}")

    variant = _variant(args, paths["args.yaml"])
    task = args.get("training_task", "sft")
    if task != "sft":
        raise ValueError(f"{paths['args.yaml']}: training_task={task!r}; only SFT checkpoints are supported "
                         f"(reconstruction checkpoints need the de-standardisation buffers)")
    order = list(module_order) if module_order is not None else list(peft_cfg.get("target_modules") or [])
    if not order:
        raise ValueError(f"{paths['adapter_config.json']}: no target_modules")
    arg_targets = args.get("target_modules")
    if arg_targets is not None and set(arg_targets) != set(order):
        raise ValueError(f"{run_dir}: module order {order} does not match args.yaml target_modules {arg_targets}")
    if set(peft_cfg.get("target_modules") or order) != set(order):
        raise ValueError(f"{run_dir}: module_order {order} is not a permutation of adapter_config.json "
                         f"target_modules {peft_cfg.get('target_modules')}")

    sd = torch_pickle.load(paths["hypermod.pt"])
    if not isinstance(sd, Mapping) or not all(isinstance(v, np.ndarray) for v in sd.values()):
        raise ValueError(f"{paths['hypermod.pt']}: expected a state dict of tensors")

    r = int(peft_cfg["r"])
    problems = []
    feats, n_layers = {}, None
    for m in order:
        a, b = sd.get(f"AB_offset.A.{m}"), sd.get(f"AB_offset.B.{m}")
        if features is not None and m in features:
            feats[m] = tuple(int(v) for v in features[m])
        elif a is not None and b is not None and a.ndim == 3 and b.ndim == 3:
            feats[m] = (int(a.shape[2]), int(b.shape[1]))
            n_layers = n_layers or int(a.shape[0])
            if a.shape[1] != r or b.shape[2] != r or a.shape[0] != b.shape[0]:
                problems.append(f"AB_offset.A.{m} {tuple(a.shape)} / AB_offset.B.{m} {tuple(b.shape)} do not fit "
                                f"r = {r}")
        else:
            problems.append(f"cannot infer in/out features of {m} (no AB_offset buffers); pass features=")
        for kind in ("A", "B"):
            off = sd.get(f"AB_offset.{kind}.{m}")
            if off is not None and np.any(np.asarray(off, np.float32) != 0):
                problems.append(f"AB_offset.{kind}.{m} is non-zero (MT-LoRA offsets are not supported)")
    depth = sd.get("layer_depth_encoder.0.weight")
    if n_layers is None and depth is not None and depth.ndim == 2:
        n_layers = int(depth.shape[0])
    enc = sd.get("task_encoder.mlp.0.weight")
    task_emb_size = int(enc.shape[1]) if enc is not None and enc.ndim == 2 else None
    for v, what in ((n_layers, "number of layers"), (task_emb_size, "task embedding size")):
        if v is None:
            problems.append(f"cannot infer the {what} from the state dict")
    if problems:
        raise ValueError(f"{paths['hypermod.pt']} does not fit a T2L hypernetwork: " + "; ".join(problems))

    cfg = T2LConfig(
        variant=variant, latent_size=int(args["hypernet_latent_size"]), head_in_size=int(args["head_in_size"]),
        task_emb_size=task_emb_size, r=r, lora_alpha=float(peft_cfg["lora_alpha"]), target_modules=tuple(order),
        in_features=tuple(feats[m][0] for m in order), out_features=tuple(feats[m][1] for m in order),
        n_layers=n_layers)
    params = params_from_state_dict(sd, cfg, source=paths["hypermod.pt"])
    meta = {
        "emb_model": args.get("emb_model"),
        "model_dir": args.get("model_dir"),
        "lora_alpha": cfg.lora_alpha,
        "r": cfg.r,
        "use_rslora": bool(peft_cfg.get("use_rslora", False)),
        "target_modules": list(cfg.target_modules),
        "source": {"kind": "text-to-lora run", "path": os.path.abspath(run_dir),
                   "module_order_from": "argument" if module_order is not None else "adapter_config.json",
                   "run_name": args.get("run_name")},
    }
    return params, cfg, meta


# --------------------------------------------------------------------------------------------------- own format
def save(dst: str, params, cfg: T2LConfig, meta: Mapping[str, Any] | None = None, *, overwrite: bool = False):
    """Writes ``dst/config.json`` + ``dst/params.safetensors`` atomically (:mod:`hyperlora_jax.io.param_dir`).

    An existing non-empty ``dst`` is refused unless ``overwrite``; an existing file at ``dst`` is always refused.
    """
    check_param_shapes(params, _flat_shapes(cfg), "params")
    meta = dict(meta or {})
    if meta.get("lora_scale") is not None:
        cfg.scale(meta["lora_scale"])  # validates the convention's name
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "hypernet": cfg.to_dict(),
        "emb_model": meta.pop("emb_model", None), "model_dir": meta.pop("model_dir", None),
        "lora_alpha": cfg.lora_alpha, "r": cfg.r, "target_modules": list(cfg.target_modules),
        "scales": {"rslora": cfg.scale("rslora"), "alpha_over_r": cfg.scale("alpha_over_r")},
    }
    for k in ("lora_alpha", "r", "target_modules"):
        meta.pop(k, None)
    config.update(meta)
    save_param_dir(os.path.abspath(dst), config, params, overwrite)


def load(path: str) -> tuple[dict, T2LConfig, dict]:
    """Reads a directory written by :func:`save`: returns (params, cfg, config dict)."""
    config, params = load_param_dir(path, FORMAT, FORMAT_VERSION,
                                    missing=f"{path}: no {CONFIG_FILE}; not a hyperlora_jax T2L checkpoint")
    cfg = T2LConfig.from_dict(config["hypernet"])
    if config.get("lora_scale") is not None:
        cfg.scale(config["lora_scale"])  # an unknown recorded convention is an error, not a silent default
    check_param_shapes(params, _flat_shapes(cfg), os.path.join(path, PARAMS_FILE))
    return params, cfg, config
