"""D2L checkpoints: import of a reference ``checkpoint-N/`` directory, and the project's own format.

Reference checkpoint (spec D2L.md section 15; golden README 5.4):
  checkpoint-N/pytorch_model.bin  ``ModulatedPretrainedModel.state_dict()``: hypernetwork tensors plus the pickled
                                  ``base_model_name_or_path``, ``hypernet_config`` and ``ctx_encoder_args``; read with
                                  :mod:`hyperlora_jax.io.torch_pickle` (no torch, no pickled code run; any global off the
                                  D2L allow-list is refused).
  args.yaml                       beside pytorch_model.bin or one level up (optional); read with a safe loader
                                  (``!!python/object/apply:`` enum tags yield their value). Used for the chunk length
                                  (``max_ctx_chunk_len``; -1 = unset).

Project format (a :mod:`hyperlora_jax.io.param_dir` directory, written atomically):
  config.json         {"format": "hyperlora_jax.d2l", "format_version": 1,
                       "hypernet": D2LHypernetConfig fields (perceiver nested),
                       "base_model": base-model path or name, "ctx_encoder_type", "layer_idx" (early_exit; null for
                       per_layer_activations), "chunk_tokens" (nominal chunk length; null = the base model's
                       max_position_embeddings, as the reference defaults), "r", "lora_alpha" (applied directly),
                       "target_modules", "ctx_affixes" (null = derive from the tokenizer's chat template),
                       "source": provenance}
  params.safetensors  float32 hypernetwork parameters; keys = Flax param paths joined with '/'.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

import numpy as np
from flax.traverse_util import flatten_dict

from hyperlora_jax.io import torch_pickle
from hyperlora_jax.d2l.checkpoint_map import config_from_state_dict, expected_torch_shapes, torch_to_flax
from hyperlora_jax.d2l.hypernet import D2LHypernetConfig, init_params
from hyperlora_jax.d2l.perceiver import PerceiverConfig
from hyperlora_jax.io.param_dir import CONFIG_FILE, PARAMS_FILE, check_param_shapes, load_param_dir, save_param_dir

FORMAT = "hyperlora_jax.d2l"
FORMAT_VERSION = 1
TORCH_FILE = "pytorch_model.bin"


class D2LCheckpointError(ValueError):
    """A D2L checkpoint that cannot be imported or loaded (one message naming the problem)."""


@dataclasses.dataclass(frozen=True)
class D2LMeta:
    """What a D2L checkpoint records besides the hypernetwork: how to build its context and encoder."""

    base_model: Optional[str]
    ctx_encoder_type: str
    layer_idx: Optional[int] = None
    chunk_tokens: Optional[int] = None
    ctx_affixes: Optional[dict] = None
    source: dict = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- config (de)ser
def config_to_dict(cfg: D2LHypernetConfig) -> dict:
    d = dataclasses.asdict(cfg)
    for k in ("target_modules", "d_in", "d_out"):
        d[k] = list(d[k])
    return d


def config_from_dict(d: Mapping[str, Any]) -> D2LHypernetConfig:
    d = dict(d)
    try:
        perceiver = PerceiverConfig(**d.pop("perceiver"))
        return D2LHypernetConfig(perceiver=perceiver, **d)
    except (KeyError, TypeError) as e:
        raise D2LCheckpointError(f"invalid hypernet config: {e}") from None


def _flat_shapes(cfg: D2LHypernetConfig) -> dict:
    import jax

    tree = jax.eval_shape(lambda k: init_params(cfg, k), jax.random.PRNGKey(0))
    return {"/".join(k): tuple(v.shape) for k, v in flatten_dict(tree).items()}


# --------------------------------------------------------------------------------------------------- project format
def save(dst: str, params, cfg: D2LHypernetConfig, meta: D2LMeta, *, overwrite: bool = False) -> str:
    """Writes ``dst/config.json`` + ``dst/params.safetensors`` atomically (:mod:`hyperlora_jax.io.param_dir`). A
    non-empty ``dst`` is refused unless ``overwrite``."""
    check_param_shapes(params, _flat_shapes(cfg), "params", D2LCheckpointError)
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "hypernet": config_to_dict(cfg),
        "base_model": meta.base_model, "ctx_encoder_type": cfg.ctx_encoder_type,
        "layer_idx": meta.layer_idx if cfg.ctx_encoder_type == "early_exit" else None,
        "chunk_tokens": meta.chunk_tokens, "r": cfg.r, "lora_alpha": cfg.alpha,
        "lora_alpha_convention": "applied directly: y = W x + lora_alpha * (x A^T) B",
        "target_modules": list(cfg.target_modules), "ctx_affixes": meta.ctx_affixes, "source": dict(meta.source),
    }
    return save_param_dir(dst, config, params, overwrite, error=D2LCheckpointError)


def load(path: str) -> tuple[dict, D2LHypernetConfig, D2LMeta]:
    """Reads a directory written by :func:`save`: (params, hypernet config, meta)."""
    config, params = load_param_dir(
        path, FORMAT, FORMAT_VERSION, error=D2LCheckpointError,
        missing=f"{path!r} has no {CONFIG_FILE}; not a hyperlora_jax D2L checkpoint (convert a reference checkpoint "
                f"with `python -m hyperlora_jax.cli.convert d2l`)")
    cfg = config_from_dict(config["hypernet"])
    check_param_shapes(params, _flat_shapes(cfg), os.path.join(path, PARAMS_FILE), D2LCheckpointError)
    meta = D2LMeta(base_model=config.get("base_model"), ctx_encoder_type=cfg.ctx_encoder_type,
                   layer_idx=config.get("layer_idx"), chunk_tokens=config.get("chunk_tokens"),
                   ctx_affixes=config.get("ctx_affixes"), source=config.get("source") or {})
    return params, cfg, meta


# --------------------------------------------------------------------------------------------------- reference import
def _find_args_yaml(ckpt_dir: str) -> Optional[str]:
    for cand in (ckpt_dir, os.path.dirname(os.path.abspath(ckpt_dir))):
        p = os.path.join(cand, "args.yaml")
        if os.path.isfile(p):
            return p
    return None


def _rec(obj, what: str) -> dict:
    if isinstance(obj, torch_pickle.Record):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return dict(obj)
    raise D2LCheckpointError(f"{TORCH_FILE}: {what} is a {type(obj).__name__}, expected a pickled config object")


def import_reference(ckpt_dir: str, *, chunk_tokens: Optional[int] = None
                     ) -> tuple[dict, D2LHypernetConfig, D2LMeta]:
    """Imports a reference ``checkpoint-N/`` directory (``pytorch_model.bin``; ``args.yaml`` there or one level up).

    Returns (params, hypernet config, meta). ``chunk_tokens`` overrides args.yaml's ``max_ctx_chunk_len``.
    Raises :class:`hyperlora_jax.io.torch_pickle.UnsafeCheckpointError` for a pickle naming any global off the D2L
    allow-list, and D2LCheckpointError (one message) for anything that does not fit.
    """
    from hyperlora_jax.io.safe_yaml import load_yaml

    if chunk_tokens is not None and (isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int)
                                     or chunk_tokens < 1):
        raise D2LCheckpointError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    if not os.path.isdir(ckpt_dir):
        raise D2LCheckpointError(f"{ckpt_dir!r} is not a directory")
    bin_path = os.path.join(ckpt_dir, TORCH_FILE)
    if not os.path.isfile(bin_path):
        raise D2LCheckpointError(f"{ckpt_dir!r} has no {TORCH_FILE}")
    sd = torch_pickle.load(bin_path, records=torch_pickle.D2L_RECORDS, enums=torch_pickle.D2L_ENUMS)
    if not isinstance(sd, Mapping):
        raise D2LCheckpointError(f"{bin_path}: expected a state dict, got {type(sd).__name__}")
    missing = [k for k in ("hypernet_config", "ctx_encoder_args") if k not in sd]
    if missing:
        raise D2LCheckpointError(f"{bin_path}: not a D2L checkpoint (missing {', '.join(missing)})")
    hc = _rec(sd["hypernet_config"], "hypernet_config")
    ea = _rec(sd["ctx_encoder_args"], "ctx_encoder_args")
    lc = _rec(hc.get("lora_config") or {}, "hypernet_config.lora_config")
    base = sd.get("base_model_name_or_path") or lc.get("base_model_name_or_path")
    enc_type = ea.get("ctx_encoder_type")
    enc_type = getattr(enc_type, "value", enc_type)
    if ea.get("ctx_encoder_model_name_or_path") not in (None, base) or ea.get("ctx_encoder_last_layer") is not None:
        raise D2LCheckpointError(f"{bin_path}: a cross-model context encoder "
                                 f"({ea.get('ctx_encoder_model_name_or_path')!r}, last layer "
                                 f"{ea.get('ctx_encoder_last_layer')!r}) is not supported")
    if not hc.get("use_bias", True):
        raise D2LCheckpointError(f"{bin_path}: use_bias=False checkpoints are not supported")
    if hc.get("use_per_rank_bias") or hc.get("use_light_weight_lora") or hc.get("use_token_mixing"):
        raise D2LCheckpointError(f"{bin_path}: unsupported hypernetwork options (per-rank bias, light-weight LoRA "
                                 f"or token mixing)")
    tensors = {k: v for k, v in sd.items() if isinstance(v, np.ndarray)}
    alpha = lc.get("lora_alpha")
    try:
        cfg = config_from_state_dict(tensors, ctx_encoder_type=enc_type,
                                     lora_alpha=None if alpha is None else float(alpha))
    except ValueError as e:
        raise D2LCheckpointError(f"{bin_path}: {e}") from None
    problems = []
    if lc.get("r") is not None and int(lc["r"]) != cfg.r:
        problems.append(f"lora_config.r={lc['r']} but the tensors have r={cfg.r}")
    tm = lc.get("target_modules")
    if tm is not None and sorted(tm) != list(cfg.target_modules):
        problems.append(f"lora_config.target_modules={sorted(tm)} but the tensors have {list(cfg.target_modules)}")
    fs = hc.get("feature_sizes")
    if fs is not None and (dict(fs[0]) != dict(zip(cfg.target_modules, cfg.d_in))
                           or dict(fs[1]) != dict(zip(cfg.target_modules, cfg.d_out))):
        problems.append(f"feature_sizes={fs} do not match the tensors")
    li = hc.get("layer_indices")
    if li is not None and list(np.asarray(li).reshape(-1)) != list(range(cfg.n_layers)):
        problems.append(f"layer_indices must be 0..{cfg.n_layers - 1}, got {np.asarray(li).tolist()}")
    ac = hc.get("aggregator_config")
    if ac is not None:
        ac = _rec(ac, "aggregator_config")
        for key, want in (("n_latent_queries", cfg.perceiver.n_latents), ("num_blocks", cfg.perceiver.num_blocks),
                          ("output_size", cfg.latent_size)):
            if ac.get(key) is not None and int(ac[key]) != want:
                problems.append(f"aggregator_config.{key}={ac[key]} but the tensors imply {want}")
    if problems:
        raise D2LCheckpointError(f"{bin_path}: pickled config contradicts the tensors: " + "; ".join(problems))
    try:
        params = torch_to_flax(tensors, cfg)
    except ValueError as e:
        raise D2LCheckpointError(f"{bin_path}: {e}") from None
    layer_idx = None
    if cfg.ctx_encoder_type == "early_exit":
        layer_idx = ea.get("layer_idx")
        layer_idx = cfg.n_layers // 4 if layer_idx is None else int(layer_idx)
    args_path = _find_args_yaml(ckpt_dir)
    if chunk_tokens is None and args_path is not None:
        args = load_yaml(args_path)
        if isinstance(args, Mapping) and isinstance(args.get("max_ctx_chunk_len"), int) \
                and args["max_ctx_chunk_len"] > 0:
            chunk_tokens = int(args["max_ctx_chunk_len"])
    meta = D2LMeta(base_model=base, ctx_encoder_type=cfg.ctx_encoder_type, layer_idx=layer_idx,
                   chunk_tokens=chunk_tokens, ctx_affixes=None,
                   source={"kind": "reference pytorch_model.bin", "path": os.path.abspath(bin_path),
                           "args_yaml": None if args_path is None else os.path.abspath(args_path),
                           "n_tensors": len(tensors), "torch_keys": len(expected_torch_shapes(cfg))})
    return params, cfg, meta
