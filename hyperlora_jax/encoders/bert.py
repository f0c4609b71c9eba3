"""A pure-functional flax.linen BERT encoder, loaded from a Hugging Face directory.

Architecture (post-LN, as ``transformers.BertModel``)::

    x = LN(word_emb[ids] + type_emb[token_type_ids] + pos_emb[0..T-1])
    for each layer:
        a = softmax(q k^T / sqrt(head_dim) + mask) v          (per head; padded keys masked out)
        x = LN(x + dense(a))
        x = LN(x + dense_out(act(dense_in(x))))
    last_hidden_state = x;  pooler_output = tanh(dense(x[:, 0]))  (only with add_pooling_layer)

The parameter tree mirrors the HF module names, so the mapping from a ``model.safetensors`` state dict is
mechanical: ``encoder.layer.3.attention.self.query.weight`` -> ``params["encoder"]["layer_3"]["attention"]["self"]
["query"]["kernel"]`` (transposed: torch ``Linear.weight`` is ``[out, in]``, a Flax ``Dense`` kernel ``[in, out]``).

Numerics: with ``dtype=bfloat16`` the parameters and activations are bfloat16, but attention scores/softmax and
LayerNorm statistics are computed in float32 (slightly more accurate than torch's all-bf16 path).

Only ``model_type: bert`` with absolute position embeddings is supported. Alibaba-NLP/gte-large-en-v1.5 (the
released T2L encoder) is remote code (``NewModel``: RoPE + GLU + unpadded attention) and is NOT ported:
its ``model_type`` ``"new"`` raises ``NotImplementedError``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from hyperlora_jax.io.safetensors_io import SafetensorsError, SafetensorsFile

__all__ = [
    "ACTIVATIONS",
    "BertConfig",
    "BertConfigError",
    "BertWeightsError",
    "BertModel",
    "bert_forward",
    "load_bert",
    "load_bert_params",
    "read_safetensors",
    "resolve_dtype",
]


class BertConfigError(ValueError):
    """A config.json this module cannot build a BERT encoder from."""


class BertWeightsError(ValueError):
    """Weights that do not match the BERT architecture described by the config (or are not safetensors)."""


# --------------------------------------------------------------------------------------------------------------
# Activations (names as in transformers.activations.ACT2FN)
# --------------------------------------------------------------------------------------------------------------


def _gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def _quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


def _mish(x):
    return x * jnp.tanh(jax.nn.softplus(x))


ACTIVATIONS: dict[str, Callable] = {
    "gelu": _gelu_exact,  # erf form, as torch.nn.functional.gelu
    "gelu_python": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,  # 0.5x(1+tanh(0.79788456x(1+0.044715x^2))): the same function as gelu_new
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "mish": _mish,
}

_GTE_NEW_MODEL_MSG = (
    "model_type 'new' (Alibaba-NLP/gte-large-en-v1.5 / gte-base-en-v1.5 'NewModel', remote code with RoPE and a "
    "GLU MLP) is not ported to Flax in hyperlora_jax.encoders; precompute the task embeddings with the reference "
    "encoder, or use a plain BERT encoder (model_type 'bert')"
)


# --------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyperparameters of one BERT encoder. Frozen and hashable (usable as a static jit argument)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise BertConfigError(
                f"unsupported hidden_act {self.hidden_act!r}; supported: {sorted(ACTIVATIONS)}"
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise BertConfigError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            if int(getattr(self, name)) < 1:
                raise BertConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BertConfig":
        model_type = d.get("model_type")
        if model_type == "new":
            raise NotImplementedError(_GTE_NEW_MODEL_MSG)
        if model_type != "bert":
            raise BertConfigError(
                f"unsupported model_type {model_type!r} for the Flax BERT encoder; supported: 'bert'"
            )
        pet = d.get("position_embedding_type", "absolute")
        if pet not in (None, "absolute"):
            raise BertConfigError(
                f"unsupported option position_embedding_type={pet!r}; only 'absolute' is supported"
            )
        if d.get("is_decoder", False):
            raise BertConfigError("unsupported option is_decoder=True; only the bidirectional encoder is supported")
        if d.get("add_cross_attention", False):
            raise BertConfigError("unsupported option add_cross_attention=True")
        act = d.get("hidden_act", "gelu")
        if not isinstance(act, str):
            raise BertConfigError(f"unsupported option hidden_act={act!r} (must be an activation name)")
        try:
            return cls(
                vocab_size=int(d["vocab_size"]),
                hidden_size=int(d["hidden_size"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=int(d["num_attention_heads"]),
                intermediate_size=int(d["intermediate_size"]),
                hidden_act=act,
                max_position_embeddings=int(d.get("max_position_embeddings", 512)),
                type_vocab_size=int(d.get("type_vocab_size", 2)),
                layer_norm_eps=float(d.get("layer_norm_eps", 1e-12)),
                pad_token_id=int(d.get("pad_token_id") or 0),
            )
        except KeyError as e:
            raise BertConfigError(f"BERT config is missing the required field {e.args[0]!r}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "BertConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike) -> "BertConfig":
        path = os.path.join(model_dir, "config.json") if os.path.isdir(model_dir) else model_dir
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config.json in {model_dir}")
        return cls.from_json(path)


def resolve_dtype(dtype: Any) -> jnp.dtype:
    """'float32' / 'bfloat16' (or the jnp/np dtypes) -> jnp dtype; anything else is an error."""
    if isinstance(dtype, str):
        name = {"fp32": "float32", "bf16": "bfloat16"}.get(dtype.lower(), dtype.lower())
    else:
        name = jnp.dtype(dtype).name
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"unsupported dtype {dtype!r}; the BERT encoder loads in 'float32' or 'bfloat16'")
    return jnp.dtype(name)


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


def _layer_norm(cfg: BertConfig, dtype, name: str) -> nn.LayerNorm:
    # use_fast_variance=False: E[(x-mean)^2] as torch, not E[x^2]-mean^2 (which loses precision).
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=dtype, param_dtype=dtype,
                        name=name)


def _dense(features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=dtype, precision=jax.lax.Precision.HIGHEST, name=name)


class BertEmbeddings(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids):
        cfg = self.config
        h = cfg.hidden_size
        word = nn.Embed(cfg.vocab_size, h, dtype=self.dtype, param_dtype=self.dtype, name="word_embeddings")
        pos = nn.Embed(cfg.max_position_embeddings, h, dtype=self.dtype, param_dtype=self.dtype,
                       name="position_embeddings")
        typ = nn.Embed(cfg.type_vocab_size, h, dtype=self.dtype, param_dtype=self.dtype,
                       name="token_type_embeddings")
        positions = jnp.arange(input_ids.shape[-1], dtype=jnp.int32)[None, :]
        x = word(input_ids) + typ(token_type_ids)
        x = x + pos(positions)
        return _layer_norm(cfg, self.dtype, "LayerNorm")(x)


class BertSelfAttention(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, key_mask):
        cfg = self.config
        b, t, _ = x.shape
        nh, hd = cfg.num_attention_heads, cfg.head_dim

        def heads(name):
            return _dense(cfg.hidden_size, self.dtype, name)(x).reshape(b, t, nh, hd)

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=jax.lax.Precision.HIGHEST,
                            preferred_element_type=jnp.float32)
        scores = scores / math.sqrt(hd)
        scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=jax.lax.Precision.HIGHEST)
        return ctx.reshape(b, t, nh * hd)


class BertSelfOutput(nn.Module):
    """Output projection + residual + LayerNorm (HF ``BertSelfOutput`` / ``BertOutput``)."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, y, residual):
        y = _dense(self.config.hidden_size, self.dtype, "dense")(y)
        return _layer_norm(self.config, self.dtype, "LayerNorm")(y + residual)


class BertAttention(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, key_mask):
        a = BertSelfAttention(self.config, self.dtype, name="self")(x, key_mask)
        return BertSelfOutput(self.config, self.dtype, name="output")(a, x)


class BertIntermediate(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = _dense(self.config.intermediate_size, self.dtype, "dense")(x)
        return ACTIVATIONS[self.config.hidden_act](y)


class BertLayer(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, key_mask):
        x = BertAttention(self.config, self.dtype, name="attention")(x, key_mask)
        y = BertIntermediate(self.config, self.dtype, name="intermediate")(x)
        return BertSelfOutput(self.config, self.dtype, name="output")(y, x)


class BertEncoder(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, key_mask):
        for i in range(self.config.num_hidden_layers):
            x = BertLayer(self.config, self.dtype, name=f"layer_{i}")(x, key_mask)
        return x


class BertPooler(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(_dense(self.config.hidden_size, self.dtype, "dense")(x[:, 0]))


class BertModel(nn.Module):
    """BERT encoder. ``__call__(input_ids [B,T], attention_mask [B,T] (1 = token, 0 = padding), token_type_ids)``
    returns ``{"last_hidden_state": [B,T,H], "pooler_output": [B,H] or None}``."""

    config: BertConfig
    dtype: Any = jnp.float32
    add_pooling_layer: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        key_mask = jnp.asarray(attention_mask) > 0
        x = BertEmbeddings(self.config, self.dtype, name="embeddings")(input_ids, jnp.asarray(token_type_ids))
        x = BertEncoder(self.config, self.dtype, name="encoder")(x, key_mask)
        pooled = BertPooler(self.config, self.dtype, name="pooler")(x) if self.add_pooling_layer else None
        return {"last_hidden_state": x, "pooler_output": pooled}


def bert_forward(params, config: BertConfig, input_ids, attention_mask=None, token_type_ids=None,
                 dtype=jnp.float32, add_pooling_layer: bool = False):
    """Functional form: ``BertModel(config, dtype).apply({"params": params}, ...)``."""
    model = BertModel(config, resolve_dtype(dtype), add_pooling_layer)
    return model.apply({"params": params}, input_ids, attention_mask, token_type_ids)


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------



def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file into read-only memory-mapped NumPy arrays (the project's strict reader)."""
    try:
        f = SafetensorsFile(os.fspath(path))
        return {k: f.get(k) for k in f.keys()}
    except SafetensorsError as e:
        raise BertWeightsError(str(e)) from None


def _weight_files(path: str | os.PathLike) -> list[str]:
    path = os.fspath(path)
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise BertWeightsError(f"{path}: only safetensors weights are supported")
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such model directory or weights file: {path}")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(path, s) for s in shards]
    bins = sorted(n for n in os.listdir(path) if n.endswith((".bin", ".pt", ".pth")))
    if bins:
        raise BertWeightsError(
            f"{path} has only PyTorch pickle weights ({', '.join(bins)}) and no model.safetensors; only safetensors "
            "is supported: convert once with transformers (AutoModel.from_pretrained(dir).save_pretrained(dir))"
        )
    raise FileNotFoundError(f"no model.safetensors in {path}")


def _expected_tensors(cfg: BertConfig, add_pooling_layer: bool) -> dict[str, tuple[tuple[str, ...], tuple, str]]:
    """HF state-dict key -> (flax param path, torch shape, kind) for every tensor the model needs."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    exp: dict[str, tuple[tuple[str, ...], tuple, str]] = {}

    def dense(tk, fp, d_out, d_in):
        exp[f"{tk}.weight"] = (fp + ("kernel",), (d_out, d_in), "linear")
        exp[f"{tk}.bias"] = (fp + ("bias",), (d_out,), "plain")

    def ln(tk, fp):
        exp[f"{tk}.weight"] = (fp + ("scale",), (h,), "plain")
        exp[f"{tk}.bias"] = (fp + ("bias",), (h,), "plain")

    for name, n in (("word_embeddings", cfg.vocab_size), ("position_embeddings", cfg.max_position_embeddings),
                    ("token_type_embeddings", cfg.type_vocab_size)):
        exp[f"embeddings.{name}.weight"] = (("embeddings", name, "embedding"), (n, h), "plain")
    ln("embeddings.LayerNorm", ("embeddings", "LayerNorm"))
    for l in range(cfg.num_hidden_layers):
        tk, fp = f"encoder.layer.{l}", ("encoder", f"layer_{l}")
        for proj in ("query", "key", "value"):
            dense(f"{tk}.attention.self.{proj}", fp + ("attention", "self", proj), h, h)
        dense(f"{tk}.attention.output.dense", fp + ("attention", "output", "dense"), h, h)
        ln(f"{tk}.attention.output.LayerNorm", fp + ("attention", "output", "LayerNorm"))
        dense(f"{tk}.intermediate.dense", fp + ("intermediate", "dense"), i, h)
        dense(f"{tk}.output.dense", fp + ("output", "dense"), h, i)
        ln(f"{tk}.output.LayerNorm", fp + ("output", "LayerNorm"))
    if add_pooling_layer:
        dense("pooler.dense", ("pooler", "dense"), h, h)
    return exp


def _normalise_keys(tensors: dict[str, np.ndarray], add_pooling_layer: bool) -> dict[str, np.ndarray]:
    """Strip a ``bert.`` prefix (BertFor* checkpoints: their task heads are dropped), rename old TF-style
    LayerNorm ``gamma``/``beta``, and drop tensors that are not weights of this encoder (the ``position_ids``
    buffer; the pooler when it is not used)."""
    keys = list(tensors)
    prefixed = not any(k.startswith("embeddings.") for k in keys) and any(k.startswith("bert.") for k in keys)
    out = {}
    for k, v in tensors.items():
        if prefixed:
            if not k.startswith("bert."):
                continue  # task head of a BertFor* model (cls.*, classifier.*, qa_outputs.*)
            k = k[len("bert."):]
        if k.endswith(".gamma"):
            k = k[: -len(".gamma")] + ".weight"
        elif k.endswith(".beta"):
            k = k[: -len(".beta")] + ".bias"
        if k == "embeddings.position_ids" or (k.startswith("pooler.") and not add_pooling_layer):
            continue
        out[k] = v
    return out


def _fmt_list(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def load_bert_params(path: str | os.PathLike, config: BertConfig, dtype: Any = "float32",
                     add_pooling_layer: bool = False) -> dict:
    """Load ``model.safetensors`` (a file, or a directory holding it / a sharded index) into the Flax param tree
    of ``BertModel(config)``, cast to ``dtype`` ('float32' or 'bfloat16'). Any missing, unexpected or mis-shaped
    tensor raises one ``BertWeightsError`` listing all of them."""
    jdtype = resolve_dtype(dtype)
    np_dtype = np.float32 if jdtype == jnp.float32 else ml_dtypes.bfloat16
    files = _weight_files(path)
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(read_safetensors(f))
    tensors = _normalise_keys(tensors, add_pooling_layer)
    expected = _expected_tensors(config, add_pooling_layer)

    missing = sorted(k for k in expected if k not in tensors)
    unexpected = sorted(k for k in tensors if k not in expected)
    misshaped = sorted(
        f"{k} {tuple(tensors[k].shape)} (expected {shape})"
        for k, (_, shape, _) in expected.items() if k in tensors and tuple(tensors[k].shape) != shape
    )
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing [{_fmt_list(missing)}]")
        if unexpected:
            parts.append(f"unexpected [{_fmt_list(unexpected)}]")
        if misshaped:
            parts.append(f"mis-shaped [{_fmt_list(misshaped)}]")
        raise BertWeightsError(f"{os.fspath(path)}: weights do not match the BERT config: " + "; ".join(parts))

    params: dict = {}
    for k, (fpath, _, kind) in expected.items():
        arr = np.asarray(tensors[k])
        if kind == "linear":
            arr = arr.T
        node = params
        for p in fpath[:-1]:
            node = node.setdefault(p, {})
        node[fpath[-1]] = jnp.asarray(arr.astype(np_dtype))
    return params


def load_bert(model_dir: str | os.PathLike, dtype: Any = "float32", add_pooling_layer: bool = False
              ) -> tuple[BertModel, dict]:
    """Read ``config.json`` and ``model.safetensors`` from an HF directory. Returns ``(model, params)``;
    ``model.config`` is the ``BertConfig``; call ``model.apply({"params": params}, input_ids, mask, type_ids)``."""
    config = BertConfig.from_pretrained(model_dir)
    jdtype = resolve_dtype(dtype)
    params = load_bert_params(model_dir, config, jdtype, add_pooling_layer)
    return BertModel(config, jdtype, add_pooling_layer), params
