"""``ModelConfig``: the decoder families as config fields, read from a Hugging Face ``config.json``.

One decoder implementation covers four families; what differs between them is data here:

| field                  | llama / mistral      | qwen3                 | gemma2                                   |
|------------------------|----------------------|-----------------------|------------------------------------------|
| norm_weight_offset     | 0  (w * x̂)           | 0                     | 1  ((1 + w) * x̂)                          |
| embed_scale            | False                | False                 | True (× √hidden_size)                    |
| sandwich_norms         | False                | False                 | True (post-attn, pre/post-ffw norms)     |
| qk_norm                | False                | True (per-head RMSNorm)| False                                   |
| hidden_act             | silu (SwiGLU)        | silu                  | gelu_pytorch_tanh (GeGLU)                |
| query_pre_attn_scalar  | None (head_dim)      | None                  | from config                              |
| attn / final softcap   | None                 | None                  | from config                              |
| layer_types            | full (mistral: sliding if sliding_window) | full | alternating sliding / full        |

``attention`` is not read from ``config.json``: it picks the attention kernel (``attention.py``: xla | cudnn | splash
| auto) and comes from the run config's ``model.attention`` (``with_run_options``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen3", "gemma2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
FULL, SLIDING = "full_attention", "sliding_attention"
ATTENTION_KERNELS = ("xla", "cudnn", "splash", "auto")  # see hyperlora_jax/attention.py


class ConfigError(ValueError):
    """A config.json this project cannot build a model from."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of one decoder. Frozen and hashable, so it can be a static jit argument."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    norm_weight_offset: float = 0.0
    embed_scale: bool = False
    sandwich_norms: bool = False
    qk_norm: bool = False
    query_pre_attn_scalar: float | None = None
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    attention: str = "xla"  # attention kernel: xla | cudnn | splash | auto (hyperlora_jax/attention.py)

    def __post_init__(self):
        if not self.layer_types:
            object.__setattr__(self, "layer_types", (FULL,) * self.num_layers)
        if len(self.layer_types) != self.num_layers:
            raise ConfigError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_attention_heads {self.num_heads} is not a multiple of "
                              f"num_key_value_heads {self.num_kv_heads}")
        if self.attention not in ATTENTION_KERNELS:
            raise ConfigError(f"model.attention must be one of {', '.join(ATTENTION_KERNELS)}, got {self.attention!r}")
        if self.attention == "cudnn" and self.attn_logit_softcap:
            raise ConfigError(f"model.attention='cudnn' cannot apply attn_logit_softcapping={self.attn_logit_softcap} "
                              f"({self.model_type}): cuDNN attention has no logit soft-cap; use 'auto' (xla on GPU "
                              f"for this model) or 'xla'")

    # ----- derived quantities -------------------------------------------------------------------------------
    @property
    def attn_scale(self) -> float:
        """Multiplier of q·k: query_pre_attn_scalar**-0.5 (gemma2) or head_dim**-0.5."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        return tuple(t == SLIDING for t in self.layer_types)

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each LoRA-targetable projection."""
        h, q, kv, f = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, \
            self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}

    def num_params(self) -> int:
        """Parameter count of the model this config builds (embeddings counted once when tied)."""
        per_layer = sum(i * o for i, o in self.projection_shapes().values())
        per_layer += self.hidden_size * (4 if self.sandwich_norms else 2)
        per_layer += 2 * self.head_dim if self.qk_norm else 0
        total = self.num_layers * per_layer + self.vocab_size * self.hidden_size + self.hidden_size
        return total + (0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def with_run_options(self, model_section) -> "ModelConfig":
        """This config with the run config's model-section options that are not part of config.json (today:
        ``attention``). ``model_section``: a ConfigDict / dict, or None (nothing changes)."""
        get = getattr(model_section, "get", None)
        return self.replace(attention=str(get("attention", self.attention))) if get else self

    # ----- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Builds a config from the contents of a Hugging Face ``config.json``; ConfigError names what is unsupported."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"unsupported model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        if "text_config" in d:
            raise ConfigError("multimodal configs (text_config) are not supported")
        try:
            hidden, heads, layers = int(d["hidden_size"]), int(d["num_attention_heads"]), int(d["num_hidden_layers"])
            kw: dict[str, Any] = dict(
                model_type=model_type, vocab_size=int(d["vocab_size"]), hidden_size=hidden,
                intermediate_size=int(d["intermediate_size"]), num_layers=layers, num_heads=heads,
                num_kv_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d.get("head_dim") or hidden // heads),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            )
        except KeyError as e:
            raise ConfigError(f"config.json lacks required field {e.args[0]!r}") from None
        for opt in ("attention_bias", "mlp_bias"):
            if d.get(opt):
                raise ConfigError(f"unsupported option {opt}=True for model_type {model_type!r}")
        if d.get("partial_rotary_factor", 1.0) != 1.0:
            raise ConfigError(f"unsupported option partial_rotary_factor={d['partial_rotary_factor']}")
        kw.update(_rope_fields(d))
        act = d.get("hidden_activation") or d.get("hidden_act") or "silu"
        if model_type == "gemma2":
            act = d.get("hidden_activation") or "gelu_pytorch_tanh"
            if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
                raise ConfigError(f"unsupported option hidden_activation={act!r} for gemma2")
            act = "gelu_pytorch_tanh"
            window = d.get("sliding_window")
            layer_types = d.get("layer_types") or [SLIDING if (i + 1) % 2 else FULL for i in range(layers)]
            kw.update(norm_weight_offset=1.0, embed_scale=True, sandwich_norms=True,
                      query_pre_attn_scalar=float(d.get("query_pre_attn_scalar", 256)),
                      attn_logit_softcap=_opt_float(d.get("attn_logit_softcapping")),
                      final_logit_softcap=_opt_float(d.get("final_logit_softcapping")),
                      sliding_window=int(window) if window else None,
                      tie_word_embeddings=bool(d.get("tie_word_embeddings", True)))
            if window is None:
                layer_types = [FULL] * layers
            kw["layer_types"] = tuple(layer_types)
        else:
            if act != "silu":
                raise ConfigError(f"unsupported option hidden_act={act!r} for {model_type}")
            kw["tie_word_embeddings"] = bool(d.get("tie_word_embeddings", False))
            window = d.get("sliding_window")
            if model_type == "qwen3":
                kw["qk_norm"] = True
                if d.get("use_sliding_window"):
                    raise ConfigError("unsupported option use_sliding_window=True for qwen3")
            elif model_type == "mistral" and window:
                kw.update(sliding_window=int(window), layer_types=(SLIDING,) * layers)
            elif model_type == "llama" and window:
                raise ConfigError("unsupported option sliding_window for llama")
        types = set(kw.get("layer_types", ()))
        if types - {FULL, SLIDING}:
            raise ConfigError(f"unsupported layer_types {sorted(types - {FULL, SLIDING})}")
        kw["hidden_act"] = act
        eos = d.get("eos_token_id")
        kw["eos_token_ids"] = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        kw["bos_token_id"] = d.get("bos_token_id")
        kw["pad_token_id"] = d.get("pad_token_id")
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, model_dir: str) -> "ModelConfig":
        """Reads ``model_dir/config.json`` (and eos ids from ``generation_config.json`` when present)."""
        path = os.path.join(model_dir, "config.json")
        if not os.path.isdir(model_dir):
            raise ConfigError(f"model directory {model_dir!r} does not exist")
        if not os.path.isfile(path):
            raise ConfigError(f"{model_dir!r} has no config.json")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        cfg = cls.from_hf_dict(d)
        gen_path = os.path.join(model_dir, "generation_config.json")
        if os.path.isfile(gen_path):
            try:
                with open(gen_path, encoding="utf-8") as f:
                    eos = json.load(f).get("eos_token_id")
            except (json.JSONDecodeError, UnicodeDecodeError):
                eos = None
            if eos is not None:
                eos = tuple(eos) if isinstance(eos, list) else (eos,)
                cfg = cfg.replace(eos_token_ids=tuple(dict.fromkeys(cfg.eos_token_ids + eos)))
        return cfg


def _opt_float(x):
    return None if x is None else float(x)


def _rope_fields(d: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings from either the transformers-5 ``rope_parameters`` or the older rope_theta/rope_scaling."""
    params = dict(d.get("rope_parameters") or {})
    scaling = d.get("rope_scaling") or {}
    if isinstance(params.get("full_attention"), dict):  # per-layer-type parameters
        raise ConfigError("unsupported option: per-layer-type rope_parameters")
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    merged = {**scaling, **{k: v for k, v in params.items() if k != "rope_theta"}}
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"unsupported rope type {rope_type!r} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    out: dict[str, Any] = {"rope_theta": float(theta), "rope_type": rope_type}
    if rope_type in ("linear", "llama3"):
        out["rope_factor"] = float(merged["factor"])
    if rope_type == "llama3":
        out.update(rope_low_freq_factor=float(merged["low_freq_factor"]),
                   rope_high_freq_factor=float(merged["high_freq_factor"]),
                   rope_original_max_position=int(merged["original_max_position_embeddings"]))
    return out


def rope_inv_freq(cfg: ModelConfig):
    """Inverse frequencies [head_dim // 2] (numpy float32), with the configured scaling applied."""
    import numpy as np
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv = inv.astype(np.float32)
    if cfg.rope_type == "linear":
        inv = inv / np.float32(cfg.rope_factor)
    elif cfg.rope_type == "llama3":
        factor, lo, hi, old = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, \
            cfg.rope_original_max_position
        lo_wavelen, hi_wavelen = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > lo_wavelen, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < hi_wavelen) & ~(wavelen > lo_wavelen)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv
