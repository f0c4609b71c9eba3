"""What an evaluation runs: a base model + tokenizer + hypernetwork, from a config and an optional checkpoint.

``--checkpoint`` may be
  a training workdir (``WORKDIR/checkpoints/<step>/``, written by ``python -m hyperlora_jax.train``) or its
      ``checkpoints/`` directory: the trainable parameters are restored read-only (nothing is moved or deleted);
      a checkpoint of a different model (method / shapes fingerprint) is refused naming the differing fields;
  a converted D2L checkpoint (``python -m hyperlora_jax.cli.convert d2l`` output: ``config.json`` format
      ``hyperlora_jax.d2l``), loaded through :mod:`hyperlora_jax.d2l.checkpoint`; its base model is the config's
      ``model.base_model`` when that is an existing directory, else the one the checkpoint records;
  a converted T2L checkpoint (``convert t2l`` output, format ``hyperlora_jax.t2l``): base model / encoder are the
      config's ``model.model_dir`` / ``encoder.model_dir`` when they exist, else the recorded ones.
Without a checkpoint the hypernetwork is freshly initialised from ``config.seed`` and every row says so
(method ``d2l (random init)`` / ``t2l (random init)``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

RANDOM_INIT = "random init (untrained)"


class EvalSetupError(ValueError):
    """The config / checkpoint combination cannot be evaluated (one message)."""


# ============================================================================================ checkpoint kinds
def checkpoint_kind(path: str) -> tuple[str, str]:
    """('train', workdir) | ('d2l', dir) | ('t2l', dir) for ``--checkpoint path``."""
    if not os.path.isdir(path):
        raise EvalSetupError(f"--checkpoint {path!r} is not a directory")
    cfg = os.path.join(path, "config.json")
    if os.path.isfile(cfg):
        try:
            with open(cfg, encoding="utf-8") as f:
                fmt = json.load(f).get("format")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            fmt = None
        if fmt == "hyperlora_jax.d2l":
            return "d2l", path
        if fmt == "hyperlora_jax.t2l":
            return "t2l", path
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return "train", path
    if os.path.basename(os.path.normpath(path)) == "checkpoints":
        return "train", os.path.dirname(os.path.abspath(path))
    raise EvalSetupError(f"--checkpoint {path!r} is neither a training workdir (no checkpoints/ inside) nor a "
                         f"converted D2L/T2L checkpoint (config.json with format hyperlora_jax.d2l / .t2l)")


def restore_trainable(method, workdir: str, step: Optional[int] = None):
    """(trainable params as host arrays, step) restored read-only from a training workdir (or its
    ``checkpoints/``) through :func:`hyperlora_jax.checkpoint.restore_params`, after the
    fingerprint check against ``method``."""
    from hyperlora_jax.checkpoint import restore_params, run_fingerprint
    from hyperlora_jax.sharding import param_shardings

    abstract = jax.eval_shape(method.init_trainable, jax.random.PRNGKey(0))
    template = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                      param_shardings(abstract, method.mesh))
    params, step = restore_params(workdir, template, fingerprint=run_fingerprint(method, abstract), step=step)
    return jax.device_get(params), step


def _mesh(config):
    from hyperlora_jax.sharding import make_mesh
    return make_mesh(dict(config.mesh)) if config.get("mesh") else make_mesh({"data": -1})


# ============================================================================================ D2L
@dataclasses.dataclass
class D2LSystem:
    """A loaded D2L setup. ``d2l``: :class:`hyperlora_jax.d2l.api.DocToLoRA` (hypernetwork + base + tokenizer)."""

    d2l: Any
    method_name: str          # "d2l" or "d2l (random init)"
    source: str               # where the hypernetwork came from
    toy: bool                 # the embedded toy world (character tokenizer, toy NIAH generator)

    @property
    def tok(self):
        return self.d2l.tokenizer

    @property
    def params(self):
        return self.d2l.base_params

    @property
    def cfg(self):
        return self.d2l.base_cfg


def _trained_or_fresh(method, config, kind, checkpoint, step, label):
    """(params, method name, provenance) of a trainer plug-in: restored from a training checkpoint
    (``kind == "train"``) or freshly initialised and labelled as such."""
    if kind == "train":
        from hyperlora_jax.checkpoint import checkpoint_dir
        params, st = restore_trainable(method, checkpoint, step)
        return params, label, f"training checkpoint {checkpoint_dir(checkpoint)} step {st}"
    params = jax.device_get(method.init_trainable(jax.random.PRNGKey(int(config.seed))))
    return params, f"{label} (random init)", RANDOM_INIT


def load_d2l(config, checkpoint: Optional[str] = None, step: Optional[int] = None) -> D2LSystem:
    from hyperlora_jax.d2l.api import DocToLoRA

    dtype = jnp.dtype(config.get("compute_dtype", "float32"))
    kind, path = checkpoint_kind(checkpoint) if checkpoint else (None, None)
    if kind == "t2l":
        raise EvalSetupError(f"--checkpoint {checkpoint!r} is a T2L checkpoint but the config's method is d2l")
    if kind == "d2l":
        base = config.model.get("base_model") or None
        d2l = DocToLoRA.from_pretrained(path, model_dir=base if base and os.path.isdir(base) else None, dtype=dtype)
        toy = _is_toy_base(d2l.base_model_dir)
        return D2LSystem(d2l, "d2l", f"converted checkpoint {os.path.abspath(path)}", toy)
    from hyperlora_jax.methods.d2l import D2LMethod
    method = D2LMethod(config, _mesh(config))
    params, name, source = _trained_or_fresh(method, config, kind, checkpoint, step, "d2l")
    d2l = DocToLoRA(params, method.hyper_cfg, method.base_params, method.base_cfg, method.tok,
                    ctx_encoder_layer_idx=method.layer_idx, chunk_tokens=int(config.data.chunk_tokens),
                    affixes=method.affixes, dtype=method.dtype, chunk_group=int(config.model.get("chunk_group", 1)),
                    base_model_dir=method.base_dir)
    return D2LSystem(d2l, name, source, config.data.get("source") == "toy_niah" or _is_toy_base(method.base_dir))


def _is_toy_base(path) -> bool:
    from hyperlora_jax.packaged import toy_base_dir
    try:
        return path is not None and os.path.samefile(path, toy_base_dir())
    except OSError:
        return False


# ============================================================================================ T2L
@dataclasses.dataclass
class T2LSystem:
    """A loaded T2L setup: hypernetwork (params, cfg, LoRA scale), base model, tokenizer, description encoder."""

    params: Any
    hcfg: Any
    scale: str
    base_params: Any
    base_cfg: Any
    tok: Any
    encoder_dir: Optional[str]
    pooling: Optional[str]
    system_turn: bool
    method_name: str
    source: str
    dtype: Any = jnp.float32
    _encoder: Any = None

    def embed(self, descriptions):
        """Task embeddings [N, E] of the descriptions (one batched encoder call)."""
        if not self.encoder_dir or not os.path.isdir(self.encoder_dir):
            raise EvalSetupError("the T2L benchmark embeds new task descriptions and needs a description encoder "
                                 f"directory (encoder.model_dir), got {self.encoder_dir!r}")
        if self._encoder is None:
            from hyperlora_jax.encoders.task_embedding import TaskDescriptionEncoder
            self._encoder = TaskDescriptionEncoder.from_pretrained(self.encoder_dir, pooling=self.pooling,
                                                                   batch_size=64)
        emb = np.asarray(self._encoder.embed_descriptions(list(descriptions)), np.float32)
        if emb.shape[1] != self.hcfg.task_emb_size:
            raise EvalSetupError(f"the encoder {self.encoder_dir} gives {emb.shape[1]}-d embeddings, the "
                                 f"hypernetwork expects {self.hcfg.task_emb_size}")
        return emb

    def adapters(self, descriptions):
        """One adapter per description (batch rows in order), generated in one jitted call."""
        from hyperlora_jax.t2l.hypernet import generate_adapters
        return generate_adapters(self.params, self.hcfg, jnp.asarray(self.embed(descriptions)), self.scale)


def load_t2l(config, checkpoint: Optional[str] = None, step: Optional[int] = None) -> T2LSystem:
    from transformers import AutoTokenizer

    dtype = jnp.dtype(config.get("compute_dtype", "float32"))
    scale = config.t2l.get("scale", "rslora")
    system_turn = bool(config.data.get("system_turn", True))
    kind, path = checkpoint_kind(checkpoint) if checkpoint else (None, None)
    if kind == "d2l":
        raise EvalSetupError(f"--checkpoint {checkpoint!r} is a D2L checkpoint but the config's method is t2l")
    if kind == "t2l":
        from hyperlora_jax.cli.generate_lora import check_fits_base, resolve_dir
        from hyperlora_jax.io.hf_load import load_model
        from hyperlora_jax.t2l import checkpoint as t2l_ckpt
        params, hcfg, meta = t2l_ckpt.load(path)
        mdir, edir = config.model.get("model_dir"), config.encoder.get("model_dir")
        model_dir = resolve_dir(mdir if mdir and os.path.isdir(mdir) else meta.get("model_dir"), "base model",
                                "--config.model.model_dir", path)
        enc_dir = edir if edir and os.path.isdir(edir) else meta.get("emb_model")
        if enc_dir and not os.path.isabs(enc_dir) and not os.path.isdir(enc_dir):
            enc_dir = os.path.join(path, enc_dir)
        base_cfg, base_params = load_model(model_dir, dtype=jnp.dtype(config.model.get("param_dtype", "float32")))
        base_cfg = base_cfg.with_run_options(config.model)
        check_fits_base(hcfg, base_cfg, model_dir)
        tok = AutoTokenizer.from_pretrained(config.model.get("tokenizer_dir") or model_dir, local_files_only=True)
        return T2LSystem(params, hcfg, scale, base_params, base_cfg, tok, enc_dir,
                         config.encoder.get("pooling") or None, system_turn, "t2l",
                         f"converted checkpoint {os.path.abspath(path)}", dtype)
    from hyperlora_jax.methods.t2l import T2LMethod
    method = T2LMethod(config, _mesh(config))
    if method.mode != "sft":
        raise EvalSetupError("the T2L benchmark evaluates SFT configs (t2l.mode = 'sft')")
    params, name, source = _trained_or_fresh(method, config, kind, checkpoint, step, "t2l")
    base = method.frozen()["base"]
    return T2LSystem(params, method.hcfg, scale, base, method.model_cfg, method.format_pair.tok,
                     config.encoder.get("model_dir") or None, config.encoder.get("pooling") or None, system_turn,
                     name, source, dtype)
