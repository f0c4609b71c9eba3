"""PEFT interop: export an ``Adapter`` row to a PEFT directory, import one, merge one into the base weights.

PEFT layout: ``adapter_config.json`` + ``adapter_model.safetensors`` with keys
``base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_A.weight`` [R, d_in] and ``...lora_B.weight``
[d_out, R]. PEFT's scaling is ``lora_alpha / r`` (``lora_alpha / √r`` with ``use_rslora``); on export we write
``use_rslora: false`` and ``lora_alpha = scale · r`` so that PEFT (and vLLM) apply exactly our ``scale``.
"""
from __future__ import annotations

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.config import ModelConfig
from hyperlora_jax.lora import ATTN_MODULES, LORA_MODULES, Adapter, check_adapter
from hyperlora_jax.io.atomic import atomic_write_dir
from hyperlora_jax.io.safetensors_io import SafetensorsError, load_file, save_file

CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


class AdapterError(ValueError):
    """An adapter directory or tensor that does not fit."""


def _block(module: str) -> str:
    return "self_attn" if module in ATTN_MODULES else "mlp"


def adapter_tensors(adapter: Adapter, row: int = 0) -> dict[str, np.ndarray]:
    """PEFT tensors of batch row ``row`` (float32)."""
    out = {}
    for m in adapter.modules:
        a = np.asarray(jax.device_get(adapter.A[m][:, row]), np.float32)  # [L, R, d_in]
        b = np.asarray(jax.device_get(adapter.B[m][:, row]), np.float32)  # [L, R, d_out]
        for i in range(a.shape[0]):
            prefix = f"base_model.model.model.layers.{i}.{_block(m)}.{m}"
            out[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i])
            out[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
    return out


def peft_config(adapter: Adapter, row: int, base_model: str | None, extra: dict | None = None) -> dict:
    r = adapter.rank
    scale = float(np.asarray(jax.device_get(adapter.scale))[row])
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": scale * r,
           "use_rslora": False, "use_dora": False, "target_modules": list(adapter.modules), "lora_dropout": 0.0,
           "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
           "base_model_name_or_path": base_model, "modules_to_save": None, "layers_to_transform": None,
           "rank_pattern": {}, "alpha_pattern": {}, "revision": None}
    if extra:
        cfg["hyperlora_jax"] = extra
    return cfg


def _write_files(out_dir: str, tensors: dict, config: dict) -> None:
    with open(os.path.join(out_dir, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_file(tensors, os.path.join(out_dir, WEIGHTS_NAME), metadata={"format": "pt"})


def write_peft_files(adapter: Adapter, out_dir: str, *, row: int = 0, base_model: str | None = None,
                     metadata: dict | None = None) -> None:
    """Writes batch row ``row`` of ``adapter`` as the two PEFT files into the existing directory ``out_dir`` (not
    atomic by itself: :func:`export_peft`, or a caller's ``atomic_write_dir``, makes the directory appear whole).
    ``metadata`` is recorded under the ``hyperlora_jax`` key of adapter_config.json (e.g. which hypernetwork and
    scale convention made it)."""
    _write_files(out_dir, adapter_tensors(adapter, row), peft_config(adapter, row, base_model, metadata))


def export_peft(adapter: Adapter, out_dir: str, *, row: int = 0, base_model: str | None = None,
                metadata: dict | None = None, overwrite: bool = False) -> str:
    """Writes batch row ``row`` of ``adapter`` as a PEFT directory, atomically (files: :func:`write_peft_files`)."""
    tensors, config = adapter_tensors(adapter, row), peft_config(adapter, row, base_model, metadata)
    atomic_write_dir(out_dir, lambda tmp: _write_files(tmp, tensors, config), overwrite)
    return out_dir


def peft_scale(config: dict) -> float:
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, (int, float)):
        raise AdapterError(f"adapter_config.json needs a positive integer r and a numeric lora_alpha, got r={r!r}, "
                           f"lora_alpha={alpha!r}")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def import_peft(peft_dir: str, cfg: ModelConfig) -> Adapter:
    """Reads a PEFT LoRA directory into an ``Adapter`` of batch size 1 for the model ``cfg``.

    Layers the adapter does not cover get zero A/B. Unsupported PEFT features (DoRA, rank/alpha patterns,
    fan_in_fan_out, trained biases, modules_to_save) and tensors that do not fit the model are errors.
    """
    cpath, wpath = os.path.join(peft_dir, CONFIG_NAME), os.path.join(peft_dir, WEIGHTS_NAME)
    if not os.path.isfile(cpath):
        raise AdapterError(f"{peft_dir!r} has no {CONFIG_NAME}")
    if not os.path.isfile(wpath):
        raise AdapterError(f"{peft_dir!r} has no {WEIGHTS_NAME}")
    with open(cpath, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise AdapterError(f"{cpath} is not valid JSON: {e}") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{peft_dir!r}: peft_type {config.get('peft_type')!r} is not LORA")
    for opt, ok in (("use_dora", False), ("fan_in_fan_out", False), ("rank_pattern", {}), ("alpha_pattern", {}),
                    ("modules_to_save", None)):
        if config.get(opt) not in (ok, None) and config.get(opt) != ok:
            raise AdapterError(f"{peft_dir!r}: unsupported PEFT option {opt}={config.get(opt)!r}")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{peft_dir!r}: unsupported PEFT option bias={config.get('bias')!r}")
    scale = peft_scale(config)
    r = config["r"]
    try:
        tensors = load_file(wpath)
    except SafetensorsError as e:
        raise AdapterError(str(e)) from None
    shapes = cfg.projection_shapes()
    problems, found = [], {}
    for key, value in tensors.items():
        k = key.replace(".lora_A.default.weight", ".lora_A.weight").replace(".lora_B.default.weight", ".lora_B.weight")
        mt = _KEY.match(k)
        if not mt or mt.group(3) not in LORA_MODULES or _block(mt.group(3)) != mt.group(2):
            problems.append(f"unexpected tensor {key}")
            continue
        layer, module, which = int(mt.group(1)), mt.group(3), mt.group(4)
        d_in, d_out = shapes[module]
        want = (r, d_in) if which == "A" else (d_out, r)
        if layer >= cfg.num_layers:
            problems.append(f"{key}: layer {layer} but the model has {cfg.num_layers} layers")
        elif tuple(value.shape) != want:
            problems.append(f"{key} has shape {list(value.shape)}, expected {list(want)}")
        else:
            found[(layer, module, which)] = np.asarray(value, np.float32)
    for (layer, module, which) in list(found):
        other = "B" if which == "A" else "A"
        if (layer, module, other) not in found:
            problems.append(f"layer {layer} {module}: lora_{which} without lora_{other}")
    if problems:
        raise AdapterError(f"adapter {peft_dir!r} does not fit the {cfg.model_type} model: " + "; ".join(problems))
    if not found:
        raise AdapterError(f"adapter {peft_dir!r} holds no LoRA tensors")
    modules = [m for m in LORA_MODULES if any(k[1] == m for k in found)]
    A, B = {}, {}
    for m in modules:
        d_in, d_out = shapes[m]
        a = np.zeros((cfg.num_layers, 1, r, d_in), np.float32)
        b = np.zeros((cfg.num_layers, 1, r, d_out), np.float32)
        for (layer, module, which), v in found.items():
            if module == m and which == "A":
                a[layer, 0] = v
            elif module == m:
                b[layer, 0] = v.T
        A[m], B[m] = jnp.asarray(a), jnp.asarray(b)
    return Adapter(A, B, jnp.asarray([scale], jnp.float32))


def merge_adapter(params, cfg: ModelConfig, adapter: Adapter, row: int = 0):
    """Base parameters with batch row ``row`` of ``adapter`` merged in: kernel += scale · Aᵀ B per layer."""
    check_adapter(adapter, cfg.projection_shapes(), cfg.num_layers)
    scale = adapter.scale[row]
    layers = dict(params["layers"])
    for m in adapter.modules:
        block = dict(layers[_block(m)])
        kernel = block[m]["kernel"]
        delta = jnp.einsum("lri,lro->lio", adapter.A[m][:, row].astype(jnp.float32),
                           adapter.B[m][:, row].astype(jnp.float32)) * scale
        block[m] = {**block[m], "kernel": (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)}
        layers[_block(m)] = block
    return {**params, "layers": layers}
