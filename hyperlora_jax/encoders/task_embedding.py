"""T2L task-description embedding (spec T2L.md §2): text -> fixed-size vector fed to the hypernetwork.

Pipeline per description (as the T2L reference does it):

1. ``add_full_stop``: strip surrounding whitespace, append ``"."`` if the last character is a letter
   (``str.isalpha``: "...into French" -> "...into French.", "...number 42" unchanged).
2. Tokenise with the encoder's own tokenizer (``[CLS] ... [SEP]`` for BERT), truncating at the encoder window.
3. BERT forward with ``token_type_ids`` and the padding mask (right padding).
4. Pool: ``cls`` = ``last_hidden_state[:, 0]`` (gte models, the released T2L encoder) or ``mean`` = masked mean
   over real tokens (sentence-transformers models such as all-MiniLM-L6-v2).
5. Normalise: ``e = v / max(||v||_2, 1e-12) * sqrt(d)`` in float32 (``||e|| = sqrt(d)``; 32 for d = 1024).

Not here: the base-LLM last-token fallback (no ``emb_model``), SFR models (last-token pooling + query
template) and gte-large-en-v1.5's ``NewModel`` architecture (see ``hyperlora_jax.encoders.bert``).

Note on naming: the reference's ``TaskEncoder`` is the hypernetwork's ``Linear -> LayerNorm`` on top of this
embedding; this module's object is therefore called ``TaskDescriptionEncoder``.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.encoders.bert import BertModel, load_bert

__all__ = [
    "POOLING_MODES",
    "TaskDescriptionEncoder",
    "add_full_stop",
    "normalize_task_embedding",
    "pool_hidden_states",
    "resolve_pooling",
]

POOLING_MODES = ("cls", "mean")
REFERENCE_MAX_LENGTH = 2**13  # the reference tokenises with truncation=True, max_length=8192


def add_full_stop(text: str) -> str:
    """Reference formatting of a task description: ``strip()``, then append ``"."`` if the last character is a
    letter. An empty (or whitespace-only) description is a ``ValueError``."""
    if not isinstance(text, str):
        raise TypeError(f"a task description must be a str, got {type(text).__name__}")
    s = text.strip()
    if not s:
        raise ValueError("empty task description (after stripping whitespace)")
    if s[-1].isalpha():
        s += "."
    return s


def pool_hidden_states(hidden: jnp.ndarray, attention_mask: jnp.ndarray, pooling: str) -> jnp.ndarray:
    """``cls``: ``hidden[:, 0]``; ``mean``: sum of the unmasked token states / max(count, 1e-9), as
    sentence-transformers' Pooling(mean). Returns float32 ``[B, H]``."""
    hidden = hidden.astype(jnp.float32)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = attention_mask.astype(jnp.float32)[:, :, None]
        return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLING_MODES}")


def normalize_task_embedding(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
    """``x / max(||x||_2, eps) * sqrt(d)`` over the last axis, in float32 (torch ``F.normalize`` then ×√d)."""
    x = jnp.asarray(x, jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps) * math.sqrt(x.shape[-1])


def _st_pooling(model_dir: str) -> str | None:
    """Pooling mode from a sentence-transformers directory (modules.json -> Pooling config), if there is one."""
    modules_path = os.path.join(model_dir, "modules.json")
    if not os.path.isfile(modules_path):
        return None
    with open(modules_path, encoding="utf-8") as f:
        modules = json.load(f)
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            cfg_path = os.path.join(model_dir, m.get("path", ""), "config.json")
            if not os.path.isfile(cfg_path):
                return None
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
            if "pooling_mode" in cfg and isinstance(cfg["pooling_mode"], str):
                modes = [cfg["pooling_mode"]]
            else:
                modes = [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
            mapping = {"cls_token": "cls", "cls": "cls", "mean_tokens": "mean", "mean": "mean"}
            if len(modes) != 1 or modes[0] not in mapping:
                raise ValueError(
                    f"{cfg_path}: unsupported sentence-transformers pooling {modes}; supported: cls_token, mean_tokens"
                )
            return mapping[modes[0]]
    return None


def resolve_pooling(model_dir: str | os.PathLike, pooling: str | None = None) -> str:
    """Explicit ``pooling`` > a sentence-transformers Pooling config in the directory > the reference's name
    rule ("gte" in the model name -> ``cls``). Anything else must be given explicitly."""
    if pooling is not None:
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLING_MODES}")
        return pooling
    model_dir = os.fspath(model_dir)
    st = _st_pooling(model_dir)
    if st is not None:
        return st
    name = os.path.basename(os.path.normpath(model_dir))
    if "gte" in name:
        return "cls"
    if "SFR" in name:
        raise NotImplementedError(
            f"{name}: SFR embedding models (last-token pooling + query template) are not supported"
        )
    raise ValueError(
        f"cannot infer the pooling for {model_dir!r} (no sentence-transformers Pooling config and no 'gte' in the "
        f"name); pass pooling='cls' or pooling='mean'"
    )


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class TaskDescriptionEncoder:
    """Tokenizer + Flax BERT + pooling + normalisation. ``embed_descriptions(texts) -> np.ndarray [N, d]``.

    Batches are padded to a power-of-two length (>= ``min_bucket``, capped at ``max_length``) and a power-of-two
    batch size (capped at ``batch_size``), so the jitted forward compiles once per (batch, length) bucket.
    """

    def __init__(self, model: BertModel, params: Any, tokenizer: Any, pooling: str, max_length: int,
                 format_descriptions: bool = True, batch_size: int = 64, min_bucket: int = 16):
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLING_MODES}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.model = model
        self.params = params
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = int(max_length)
        self.format_descriptions = format_descriptions
        self.batch_size = int(batch_size)
        self.min_bucket = int(min_bucket)
        pad_id = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad_id if pad_id is not None else model.config.pad_token_id)
        self.trace_count = 0  # number of jit traces (one per new (batch, length) bucket)

        def _embed(params, input_ids, attention_mask, token_type_ids):
            self.trace_count += 1
            h = self.model.apply({"params": params}, input_ids, attention_mask, token_type_ids)["last_hidden_state"]
            return normalize_task_embedding(pool_hidden_states(h, attention_mask, self.pooling))

        def _hidden(params, input_ids, attention_mask, token_type_ids):
            return self.model.apply({"params": params}, input_ids, attention_mask, token_type_ids)[
                "last_hidden_state"]

        self._embed = jax.jit(_embed)
        self._hidden = jax.jit(_hidden)

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, pooling: str | None = None, dtype: Any = "float32",
                        max_length: int | None = None, format_descriptions: bool = True, batch_size: int = 64,
                        min_bucket: int = 16) -> "TaskDescriptionEncoder":
        """Load an HF directory (``config.json``, ``model.safetensors``, tokenizer files) offline.

        ``pooling``: 'cls' | 'mean' | None (infer, see ``resolve_pooling``). ``max_length``: the truncation
        window; the default is the smallest of ``max_position_embeddings``, the tokenizer's ``model_max_length``,
        a sentence-transformers ``max_seq_length`` (if the directory has one) and the reference's 8192."""
        from transformers import AutoTokenizer  # local import: transformers is slow to import

        model_dir = os.fspath(model_dir)
        pooling = resolve_pooling(model_dir, pooling)
        model, params = load_bert(model_dir, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        limits = [model.config.max_position_embeddings, REFERENCE_MAX_LENGTH]
        tml = getattr(tokenizer, "model_max_length", None)
        if isinstance(tml, int) and 0 < tml < 10**8:
            limits.append(tml)
        st_cfg = os.path.join(model_dir, "sentence_bert_config.json")
        if os.path.isfile(st_cfg):
            with open(st_cfg, encoding="utf-8") as f:
                msl = json.load(f).get("max_seq_length")
            if isinstance(msl, int) and msl > 0:
                limits.append(msl)
        window = min(limits)
        if max_length is not None:
            if max_length > window:
                raise ValueError(f"max_length {max_length} exceeds the encoder window {window}")
            window = int(max_length)
        return cls(model, params, tokenizer, pooling, window, format_descriptions, batch_size, min_bucket)

    @property
    def config(self):
        return self.model.config

    @property
    def embedding_dim(self) -> int:
        return self.model.config.hidden_size

    # ----------------------------------------------------------------------------------------- preprocessing
    def format(self, texts: Sequence[str]) -> list[str]:
        """Validate and (if ``format_descriptions``) apply ``add_full_stop``. Errors name the bad description."""
        out = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"task description {i} must be a str, got {type(t).__name__}")
            if not t.strip():
                raise ValueError(f"task description {i} is empty (or whitespace only): {t!r}")
            out.append(add_full_stop(t) if self.format_descriptions else t)
        return out

    def _encode(self, texts: list[str], truncation: bool) -> dict:
        kw = dict(truncation=True, max_length=self.max_length) if truncation else dict(truncation=False)
        return self.tokenizer(texts, add_special_tokens=True, padding=False, return_attention_mask=True,
                              return_token_type_ids=True, verbose=False, **kw)

    def tokenize(self, texts: Sequence[str], pad_to: int | None = None, formatted: bool = False,
                 index_offset: int = 0) -> dict:
        """Tokenise (formatting first unless ``formatted``), truncate at ``max_length`` with a warning per
        truncated description, right-pad to ``pad_to`` (default: the length bucket). Returns int32 NumPy
        ``input_ids``, ``attention_mask``, ``token_type_ids`` of shape ``[N, T]``."""
        texts = list(texts) if formatted else self.format(texts)
        enc = self._encode(texts, truncation=True)
        ids = [list(x) for x in enc["input_ids"]]
        tts = enc.get("token_type_ids")
        tts = [list(x) for x in tts] if tts is not None else [[0] * len(x) for x in ids]
        at_limit = [i for i, x in enumerate(ids) if len(x) >= self.max_length]
        if at_limit:
            full = self._encode([texts[i] for i in at_limit], truncation=False)["input_ids"]
            for i, f in zip(at_limit, full):
                dropped = len(f) - len(ids[i])
                if dropped > 0:
                    warnings.warn(
                        f"task description {index_offset + i} is {len(f)} tokens long, longer than the encoder "
                        f"window of {self.max_length} tokens: truncated, {dropped} tokens dropped",
                        stacklevel=3,
                    )
        longest = max((len(x) for x in ids), default=1)
        if pad_to is None:
            pad_to = self.length_bucket(longest)
        if pad_to < longest:
            raise ValueError(f"pad_to {pad_to} is shorter than the longest tokenised description ({longest})")
        n = len(ids)
        input_ids = np.full((n, pad_to), self.pad_token_id, np.int32)
        attention_mask = np.zeros((n, pad_to), np.int32)
        token_type_ids = np.zeros((n, pad_to), np.int32)
        for r, (x, t) in enumerate(zip(ids, tts)):
            input_ids[r, : len(x)] = x
            attention_mask[r, : len(x)] = 1
            token_type_ids[r, : len(t)] = t
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    def length_bucket(self, n_tokens: int) -> int:
        return min(max(_next_pow2(n_tokens), self.min_bucket), self.max_length)

    # --------------------------------------------------------------------------------------------- forward
    def _pad_batch(self, input_ids, attention_mask, token_type_ids):
        n = input_ids.shape[0]
        nb = min(_next_pow2(n), max(self.batch_size, n))
        if nb == n:
            return input_ids, attention_mask, token_type_ids
        extra = nb - n
        # dummy rows: a lone pad token with mask 1 (never an all-masked row); results are discarded
        ids_pad = np.full((extra, input_ids.shape[1]), self.pad_token_id, input_ids.dtype)
        mask_pad = np.zeros((extra, input_ids.shape[1]), attention_mask.dtype)
        mask_pad[:, 0] = 1
        tt_pad = np.zeros((extra, input_ids.shape[1]), token_type_ids.dtype)
        return (np.concatenate([input_ids, ids_pad]), np.concatenate([attention_mask, mask_pad]),
                np.concatenate([token_type_ids, tt_pad]))

    def embed_tokens(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        """Pooled, normalised embeddings ``[N, d]`` (float32) of already tokenised, right-padded inputs."""
        input_ids = np.asarray(input_ids, np.int32)
        attention_mask = (np.ones_like(input_ids) if attention_mask is None
                          else np.asarray(attention_mask, np.int32))
        token_type_ids = (np.zeros_like(input_ids) if token_type_ids is None
                          else np.asarray(token_type_ids, np.int32))
        if self.pooling == "cls" and not np.all(attention_mask[:, 0] == 1):
            raise ValueError("cls pooling needs right padding: attention_mask[:, 0] must be all ones")
        n = input_ids.shape[0]
        ids, mask, tt = self._pad_batch(input_ids, attention_mask, token_type_ids)
        out = self._embed(self.params, ids, mask, tt)
        return np.asarray(out)[:n]

    def last_hidden_state(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        """The encoder's ``last_hidden_state`` ``[N, T, d]`` (jitted) for already tokenised inputs."""
        input_ids = np.asarray(input_ids, np.int32)
        attention_mask = (np.ones_like(input_ids) if attention_mask is None
                          else np.asarray(attention_mask, np.int32))
        token_type_ids = (np.zeros_like(input_ids) if token_type_ids is None
                          else np.asarray(token_type_ids, np.int32))
        return np.asarray(self._hidden(self.params, input_ids, attention_mask, token_type_ids))

    def embed_descriptions(self, texts: str | Sequence[str]) -> np.ndarray:
        """Task embeddings ``[N, d]`` (float32, each of norm sqrt(d)) of ``N`` raw descriptions: formatting,
        tokenisation, one jitted forward per chunk of ``batch_size`` descriptions."""
        if isinstance(texts, str):
            texts = [texts]
        texts = self.format(list(texts))
        if not texts:
            return np.zeros((0, self.embedding_dim), np.float32)
        outs = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start: start + self.batch_size]
            tok = self.tokenize(chunk, formatted=True, index_offset=start)
            outs.append(self.embed_tokens(tok["input_ids"], tok["attention_mask"], tok["token_type_ids"]))
        return np.concatenate(outs, axis=0)

    __call__ = embed_descriptions
