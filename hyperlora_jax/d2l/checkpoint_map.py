"""Reference D2L state dict (torch keys, numpy arrays) <-> Flax params of ``D2LHypernet``.

The torch keys are those of the reference ``HyperLoRA.state_dict()`` — the tensor keys of the official
``pytorch_model.bin`` (no ``hypernet.`` prefix; a leading ``_orig_mod.`` from ``torch.compile`` is stripped) and the
``hypernet/<key>`` arrays of the golden npz files. Conversions (spec section 15.3):

  nn.Linear ``weight [out, in]``            → Dense ``kernel [in, out]`` (transpose)
  RMSNorm / LayerNorm ``weight``            → ``scale``
  EinMix weight ``[L, in, out]``            → ``kernel`` as is; EinMix bias ``[1, L, 1, 1, out]`` → ``[L, out]``
  ``head.weight [L, d, d_lora]`` (one module) or ``[L, M, d, d_lora]`` → ``head/head/kernel [L, M, d, d_lora]``
  ``scaler_{A,B}.<m> [1, L, r, 1]``         → ``[L, r]``
  ``bias_{A,B}.<m>``                        → as is ([L, r, d_in] / [L, r, d_out])

Use ``torch_to_flax(state_dict, config)`` and ``flax_to_torch(params, config)``; both check every key and shape and
raise one ``ValueError`` listing every missing, unexpected and mis-shaped key. ``config_from_state_dict`` infers a
``D2LHypernetConfig`` from the tensor shapes.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Optional

import numpy as np

from hyperlora_jax.d2l.hypernet import D2LHypernetConfig
from hyperlora_jax.d2l.perceiver import PerceiverConfig

# non-tensor entries of a reference pytorch_model.bin state dict (pickled objects, not weights)
NON_TENSOR_KEYS = ("base_model_name_or_path", "hypernet_config", "ctx_encoder_args")
COMPILE_PREFIX = "_orig_mod."

_NORMS = ("input_latents_layernorm", "input_context_layernorm", "post_attention_layernorm", "pre_ff_layernorm",
          "post_ff_layernorm")


class _Entry(NamedTuple):
    torch_key: str
    flax_path: tuple
    torch_shape: tuple
    flax_shape: tuple
    to_flax: Callable
    to_torch: Callable


def _ident(x):
    return x


def _transpose(x):
    return np.ascontiguousarray(np.swapaxes(x, -1, -2))


def _resampler_layer_kinds(pc: PerceiverConfig, decoder: bool):
    if decoder:
        return [True]
    kinds = []
    for _ in range(pc.num_blocks):
        kinds += [True] + [False] * pc.num_self_attn_per_block
    return kinds


def _entries(config: D2LHypernetConfig) -> list:
    pc = config.perceiver
    d, H = pc.hidden_size, pc.input_size
    L, r, M = config.n_layers, config.r, config.n_modules
    out = []

    def linear(tkey, fpath, n_in, n_out):
        out.append(_Entry(tkey, fpath, (n_out, n_in), (n_in, n_out), _transpose, _transpose))

    def plain(tkey, fpath, shape):
        out.append(_Entry(tkey, fpath, tuple(shape), tuple(shape), _ident, _ident))

    p = "aggregator.perceiver."
    inter = pc.intermediate_size_factor * H
    for name, n_in, n_out in (("gate_proj", H, inter), ("up_proj", H, inter), ("down_proj", inter, d)):
        linear(f"{p}modality_projection.{name}.weight", ("perceiver", "modality_projection", name, "kernel"),
               n_in, n_out)
    for part in ("encoder", "decoder"):
        rc = pc.decoder if part == "decoder" else pc
        base = ("perceiver", part)
        plain(f"{p}{part}.latents_q", base + ("latents_q",), (rc.n_latents, d))
        for i, cross in enumerate(_resampler_layer_kinds(pc, part == "decoder")):
            tk, fp = f"{p}{part}.layers.{i}.", base + (f"layers_{i}",)
            for norm in _NORMS:
                if norm == "input_context_layernorm" and not cross:
                    continue
                plain(f"{tk}{norm}.weight", fp + (norm, "scale"), (d,))
            q, kv = pc.n_heads * pc.head_dim, pc.num_key_value_heads * pc.head_dim
            for name, n_in, n_out in (("q_proj", d, q), ("k_proj", d, kv), ("v_proj", d, kv), ("o_proj", q, d)):
                linear(f"{tk}self_attn.{name}.weight", fp + ("self_attn", name, "kernel"), n_in, n_out)
            hid = pc.mlp_factor * d
            for name, n_in, n_out in (("gate_proj", d, hid), ("up_proj", d, hid), ("down_proj", hid, d)):
                linear(f"{tk}mlp.{name}.weight", fp + ("mlp", name, "kernel"), n_in, n_out)
        plain(f"{p}{part}.layernorm.weight", base + ("layernorm", "scale"), (d,))

    for i in range(config.num_pre_head_layers):
        tk, fp = f"layers.{i}.layers.", ("head", f"layers_{i}")
        for idx, ln in (("0", "ln_in"), ("4", "ln_out")):
            plain(f"{tk}{idx}.weight", fp + (ln, "scale"), (d,))
            plain(f"{tk}{idx}.bias", fp + (ln, "bias"), (d,))
        for idx, mix, n_in, n_out in (("1", "mix1", d, 4 * d), ("3", "mix2", 4 * d, d)):
            plain(f"{tk}{idx}.weight", fp + (mix, "kernel"), (L, n_in, n_out))
            out.append(_Entry(f"{tk}{idx}.bias", fp + (mix, "bias"), (1, L, 1, 1, n_out), (L, n_out),
                              lambda x: x.reshape(x.shape[1], x.shape[4]),
                              lambda x: x.reshape(1, x.shape[0], 1, 1, x.shape[1])))
    dl = config.d_lora
    if M == 1:
        out.append(_Entry("head.weight", ("head", "head", "kernel"), (L, d, dl), (L, 1, d, dl),
                          lambda x: x[:, None], lambda x: x[:, 0]))
    else:
        plain("head.weight", ("head", "head", "kernel"), (L, M, d, dl))
    for m, di, do in zip(config.target_modules, config.d_in, config.d_out):
        plain(f"bias_A.{m}", ("head", "bias_A", m), (L, r, di))
        plain(f"bias_B.{m}", ("head", "bias_B", m), (L, r, do))
        for s in ("scaler_A", "scaler_B"):
            out.append(_Entry(f"{s}.{m}", ("head", s, m), (1, L, r, 1), (L, r),
                              lambda x: x.reshape(x.shape[1], x.shape[2]),
                              lambda x: x.reshape(1, x.shape[0], x.shape[1], 1)))
    return out


def expected_torch_shapes(config: D2LHypernetConfig) -> dict:
    """{torch key: shape} of the reference state dict for ``config``."""
    return {e.torch_key: e.torch_shape for e in _entries(config)}


def _clean(state_dict: Mapping) -> dict:
    out = {}
    for k, v in state_dict.items():
        if k in NON_TENSOR_KEYS:
            continue
        if k.startswith(COMPILE_PREFIX):
            k = k[len(COMPILE_PREFIX):]
        out[k] = v
    return out


def _raise(problems: list, what: str):
    if problems:
        raise ValueError(f"{what}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))


def torch_to_flax(state_dict: Mapping[str, np.ndarray], config: D2LHypernetConfig, dtype=np.float32) -> dict:
    """Reference state dict {torch key: array} → Flax params ``{"perceiver": ..., "head": ...}`` (numpy arrays).

    Keys ``base_model_name_or_path`` / ``hypernet_config`` / ``ctx_encoder_args`` are ignored and a leading
    ``_orig_mod.`` is stripped. Raises one ValueError naming every missing, unexpected or mis-shaped key.
    """
    sd = _clean(state_dict)
    entries = _entries(config)
    known = {e.torch_key for e in entries}
    problems = [f"missing: {e.torch_key} (expected shape {list(e.torch_shape)})" for e in entries
                if e.torch_key not in sd]
    problems += [f"unexpected: {k} (shape {list(np.shape(v))})" for k, v in sd.items() if k not in known]
    for e in entries:
        if e.torch_key in sd and tuple(np.shape(sd[e.torch_key])) != e.torch_shape:
            problems.append(f"shape mismatch: {e.torch_key} is {list(np.shape(sd[e.torch_key]))}, expected "
                            f"{list(e.torch_shape)}")
    _raise(sorted(problems), "D2L state dict does not match the config")
    params: dict = {}
    for e in entries:
        node = params
        for k in e.flax_path[:-1]:
            node = node.setdefault(k, {})
        node[e.flax_path[-1]] = np.asarray(e.to_flax(np.asarray(sd[e.torch_key])), dtype=dtype)
    return params


def _flatten(tree, prefix=()):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (k,))
    else:
        yield prefix, tree


def flax_to_torch(params: Mapping, config: D2LHypernetConfig) -> dict:
    """Flax params → reference state dict {torch key: numpy array} (tensor entries only)."""
    flat = dict(_flatten(params))
    entries = _entries(config)
    known = {e.flax_path for e in entries}
    problems = [f"missing: {'/'.join(e.flax_path)} (expected shape {list(e.flax_shape)})" for e in entries
                if e.flax_path not in flat]
    problems += [f"unexpected: {'/'.join(p)} (shape {list(np.shape(v))})" for p, v in flat.items() if p not in known]
    for e in entries:
        if e.flax_path in flat and tuple(np.shape(flat[e.flax_path])) != e.flax_shape:
            problems.append(f"shape mismatch: {'/'.join(e.flax_path)} is {list(np.shape(flat[e.flax_path]))}, "
                            f"expected {list(e.flax_shape)}")
    _raise(sorted(problems), "Flax params do not match the config")
    return {e.torch_key: np.ascontiguousarray(e.to_torch(np.asarray(flat[e.flax_path]))) for e in entries}


def config_from_state_dict(state_dict: Mapping[str, np.ndarray], *, ctx_encoder_type: Optional[str] = None,
                           n_heads: int = 16, head_dim: int = 128, lora_alpha: Optional[float] = None,
                           **perceiver_kwargs) -> D2LHypernetConfig:
    """Infers a ``D2LHypernetConfig`` from tensor shapes.

    Not recoverable from shapes: ``n_heads`` × ``head_dim`` (only their product), the rms eps, and — when the model
    has one layer — the encoder type; pass them when they differ from the defaults (16, 128). ``ctx_encoder_type``
    defaults to what the decoder query count implies (M·r → per_layer_activations, L·M·r → early_exit).
    """
    sd = _clean(state_dict)
    shp = lambda k: tuple(np.shape(sd[k]))
    p = "aggregator.perceiver."
    try:
        inter, H = shp(f"{p}modality_projection.gate_proj.weight")
        d = shp(f"{p}modality_projection.down_proj.weight")[0]
        n_lat = shp(f"{p}encoder.latents_q")[0]
        n_out = shp(f"{p}decoder.latents_q")[0]
        q_out = shp(f"{p}encoder.layers.0.self_attn.q_proj.weight")[0]
        kv_out = shp(f"{p}encoder.layers.0.self_attn.k_proj.weight")[0]
        mods = sorted(k[len("bias_A."):] for k in sd if k.startswith("bias_A."))
        if not mods:
            raise KeyError("bias_A.<module>")
        _, L, r, _ = shp(f"scaler_A.{mods[0]}")
        d_in = {m: shp(f"bias_A.{m}")[2] for m in mods}
        d_out = {m: shp(f"bias_B.{m}")[2] for m in mods}
    except KeyError as e:
        raise ValueError(f"not a D2L hypernetwork state dict: missing {e}") from None
    enc_layers = {int(k.split(".")[4]) for k in sd if k.startswith(f"{p}encoder.layers.")}
    n_cross = sum(1 for i in enc_layers if f"{p}encoder.layers.{i}.input_context_layernorm.weight" in sd)
    n_self = (len(enc_layers) - n_cross) // max(n_cross, 1)
    n_pre = len({int(k.split(".")[1]) for k in sd if k.startswith("layers.")})
    if q_out != n_heads * head_dim:
        raise ValueError(f"q_proj has {q_out} outputs, not n_heads*head_dim = {n_heads}*{head_dim}")
    if ctx_encoder_type is None:
        ctx_encoder_type = "per_layer_activations" if n_out == len(mods) * r else "early_exit"
    return D2LHypernetConfig.create(
        feature_size=H, n_layers=L, r=r, d_in=d_in, d_out=d_out, ctx_encoder_type=ctx_encoder_type, latent_size=d,
        n_latent_queries=n_lat, num_blocks=n_cross, num_self_attn_per_block=n_self, num_pre_head_layers=n_pre,
        lora_alpha=lora_alpha, n_heads=n_heads, head_dim=head_dim, num_key_value_heads=kv_out // head_dim,
        intermediate_size_factor=inter // H, **perceiver_kwargs)
