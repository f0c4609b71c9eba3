"""A llama-architecture GGUF (e.g. SmolLM2-135M-Instruct.Q4_1.gguf) -> a Hugging Face model directory.

Writes what ``hyperlora_jax.io.hf_load.load_model`` and ``transformers.AutoTokenizer`` read::

    config.json              LlamaForCausalLM config from the ``llama.*`` metadata
    generation_config.json   bos / eos / pad ids
    model.safetensors        dequantised weights, HF names, float32 or bfloat16
    tokenizer.json           byte-level BPE rebuilt from ``tokenizer.ggml.*`` with the ``tokenizers`` library
    tokenizer_config.json    special tokens, add_bos_token, ``tokenizer.chat_template``

Two things llama.cpp's converter changed are undone: q_proj / k_proj rows are permuted back from llama.cpp's
rotary layout (it interleaves the two halves of each head), and the tokenizer's pre-tokenizer, which a GGUF only
names (``tokenizer.ggml.pre``), is rebuilt from that name. No torch, no ``gguf`` package.
"""
from __future__ import annotations

import json
import os
import re
import time

import ml_dtypes
import numpy as np

from hyperlora_jax.io.gguf import DEQUANTIZERS, GGUFError, GGUFFile, supported_type_names

SUPPORTED_ARCHITECTURES = ("llama",)
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}

# GGUF tensor name -> HF name; "{i}" is the layer index
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)\.weight")

# tokenizer.ggml.pre -> whether digits are split off one by one before the GPT-2 byte-level regex
# (llama.cpp's "smollm" pre-tokenizer: \p{N} isolated, then the GPT-2 pattern)
_PRE_TOKENIZERS = {"smollm": True, "gpt-2": False}
_CONTROL, _USER_DEFINED = 3, 4   # tokenizer.ggml.token_type values (1 normal, 2 unknown, 5 unused, 6 byte)


def _f32(x) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (9.999999747e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def _int(g: GGUFFile, key: str, default=None) -> int:
    v = g.require(key) if default is None else g.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise GGUFError(f"{g.path}: metadata {key} = {v!r} is not a non-negative integer")
    return v


# ------------------------------------------------------------------------------------------------- config
def hf_config(g: GGUFFile) -> dict:
    """The ``config.json`` of the model the GGUF describes (llama architecture only)."""
    arch = g.require("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"{g.path}: general.architecture {arch!r} is not supported (supported: "
                        f"{', '.join(SUPPORTED_ARCHITECTURES)})")
    p = arch + "."
    if g.get(p + "expert_count", 0):
        raise GGUFError(f"{g.path}: mixture-of-experts models ({p}expert_count) are not supported")
    hidden, heads = _int(g, p + "embedding_length"), _int(g, p + "attention.head_count")
    if not hidden or not heads or hidden % heads:
        raise GGUFError(f"{g.path}: embedding_length {hidden} is not a multiple of head_count {heads}")
    kv_heads = _int(g, p + "attention.head_count_kv", heads)
    head_dim = _int(g, p + "attention.key_length", hidden // heads)
    if _int(g, p + "attention.value_length", head_dim) != head_dim:
        raise GGUFError(f"{g.path}: attention.value_length differs from key_length (not supported)")
    if _int(g, p + "rope.dimension_count", head_dim) != head_dim:
        raise GGUFError(f"{g.path}: partial rotary embeddings (rope.dimension_count "
                        f"{g.get(p + 'rope.dimension_count')} < head_dim {head_dim}) are not supported")
    if not kv_heads or heads % kv_heads:
        raise GGUFError(f"{g.path}: head_count {heads} is not a multiple of head_count_kv {kv_heads}")
    rope: dict = {"rope_type": "default", "rope_theta": _f32(g.get(p + "rope.freq_base", 10000.0))}
    scaling = g.get(p + "rope.scaling.type", "none")
    if scaling == "linear":
        rope.update(rope_type="linear", factor=_f32(g.require(p + "rope.scaling.factor")))
    elif scaling != "none":
        raise GGUFError(f"{g.path}: rope scaling {scaling!r} is not supported (supported: none, linear)")
    if "rope_freqs.weight" in g.tensors:
        raise GGUFError(f"{g.path}: per-frequency rope factors (rope_freqs.weight, llama3-style scaling) are not "
                        "supported")
    tokens = g.require("tokenizer.ggml.tokens")
    vocab = _int(g, p + "vocab_size", len(tokens))
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": _int(g, p + "feed_forward_length"),
        "num_hidden_layers": _int(g, p + "block_count"),
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "rms_norm_eps": _f32(g.get(p + "attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_parameters": rope,
        "max_position_embeddings": _int(g, p + "context_length", 2048),
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in g.tensors,
    }
    cfg.update(_special_ids(g))
    return cfg


def _special_ids(g: GGUFFile) -> dict:
    out = {}
    n = len(g.require("tokenizer.ggml.tokens"))
    for hf, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                    ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{key}" in g.metadata:
            v = _int(g, f"tokenizer.ggml.{key}")
            if v >= n:
                raise GGUFError(f"{g.path}: tokenizer.ggml.{key} {v} is outside the {n}-token vocabulary")
            out[hf] = v
    return out


# ------------------------------------------------------------------------------------------------ weights
def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation.

    w: [n_heads * head_dim, d_in]. llama.cpp stores each head's rows in the order (pair j, half h) -> row 2j + h;
    HF's rotate-half layout wants row h * head_dim/2 + j. Returns the HF-ordered [n_heads * head_dim, d_in].
    """
    rows, d_in = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, d_in).swapaxes(1, 2).reshape(rows, d_in)


def hf_tensors(g: GGUFFile, cfg: dict, dtype: np.dtype) -> dict[str, np.ndarray]:
    """HF tensor name -> dequantised array in ``dtype``. Unknown tensors, missing ones and wrong shapes raise."""
    layers, hidden = cfg["num_hidden_layers"], cfg["hidden_size"]
    q, kv, ffn = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"], \
        cfg["intermediate_size"]
    expected = {"model.embed_tokens.weight": (cfg["vocab_size"], hidden), "model.norm.weight": (hidden,)}
    if not cfg["tie_word_embeddings"]:
        expected["lm_head.weight"] = (cfg["vocab_size"], hidden)
    per_layer = {"input_layernorm": (hidden,), "post_attention_layernorm": (hidden,),
                 "self_attn.q_proj": (q, hidden), "self_attn.k_proj": (kv, hidden), "self_attn.v_proj": (kv, hidden),
                 "self_attn.o_proj": (hidden, q), "mlp.gate_proj": (ffn, hidden), "mlp.up_proj": (ffn, hidden),
                 "mlp.down_proj": (hidden, ffn)}
    for i in range(layers):
        expected.update({f"model.layers.{i}.{k}.weight": s for k, s in per_layer.items()})

    names: dict[str, str] = {}   # HF name -> GGUF name
    problems = []
    for gname in g.tensors:
        m = _LAYER_RE.fullmatch(gname)
        hf = _GLOBAL_NAMES.get(gname) or (
            f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight" if m and m.group(2) in _LAYER_NAMES
            else None)
        if hf is None or hf not in expected:
            problems.append(f"unexpected tensor {gname}")
        else:
            names[hf] = gname
    for hf, shape in expected.items():
        if hf not in names:
            problems.append(f"missing tensor for {hf}")
        elif g.tensors[names[hf]].shape != shape:
            problems.append(f"{names[hf]} has shape {list(g.tensors[names[hf]].shape)}, expected {list(shape)}")
    unsupported = sorted({g.tensors[n].type_name for n in names.values()
                          if g.tensors[n].ggml_type not in DEQUANTIZERS})
    if unsupported:
        problems.append(f"tensor types {', '.join(unsupported)} are not supported (supported: "
                        f"{', '.join(supported_type_names())})")
    if problems:
        raise GGUFError(f"{g.path}: does not describe the configured llama model: " + "; ".join(problems))

    out = {}
    for hf, gname in names.items():
        w = g.tensor(gname)
        if hf.endswith("q_proj.weight"):
            w = unpermute_rope_rows(w, cfg["num_attention_heads"])
        elif hf.endswith("k_proj.weight"):
            w = unpermute_rope_rows(w, cfg["num_key_value_heads"])
        out[hf] = w.astype(dtype, copy=False)
    return out


# ---------------------------------------------------------------------------------------------- tokenizer
def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map: bytes that are printable Latin-1 map to themselves, the others
    (control characters, space, soft hyphen...) to U+0100 onwards, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def build_tokenizer(g: GGUFFile):
    """The ``tokenizers.Tokenizer`` a byte-level-BPE GGUF (``tokenizer.ggml.model`` = gpt2) describes."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = g.require("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFError(f"{g.path}: tokenizer.ggml.model {kind!r} is not supported (supported: gpt2 byte-level BPE)")
    pre = g.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in _PRE_TOKENIZERS:
        raise GGUFError(f"{g.path}: tokenizer.ggml.pre {pre!r} is not supported (supported: "
                        f"{', '.join(_PRE_TOKENIZERS)})")
    tokens = g.require("tokenizer.ggml.tokens")
    merges = g.require("tokenizer.ggml.merges")
    types = g.get("tokenizer.ggml.token_type", [1] * len(tokens))
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise GGUFError(f"{g.path}: tokenizer.ggml.tokens is not a list of strings")
    if not isinstance(merges, list) or not all(isinstance(m, str) and len(m.split(" ")) == 2 for m in merges):
        raise GGUFError(f"{g.path}: tokenizer.ggml.merges is not a list of 'left right' strings")
    if len(types) != len(tokens):
        raise GGUFError(f"{g.path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    alphabet = set(byte_alphabet().values())
    spell = byte_alphabet()
    vocab: dict[str, int] = {}
    for i, (tok, kind_id) in enumerate(zip(tokens, types)):
        if kind_id not in (_CONTROL, _USER_DEFINED) and not set(tok) <= alphabet:
            tok = "".join(spell[b] for b in tok.encode("utf-8"))   # a normal token stored as plain text
        if tok in vocab:
            raise GGUFError(f"{g.path}: token {tok!r} appears twice in tokenizer.ggml.tokens ({vocab[tok]} and {i})")
        vocab[tok] = i
    pairs = [tuple(m.split(" ")) for m in merges]
    missing = next((p for p in pairs if p[0] not in vocab or p[1] not in vocab or p[0] + p[1] not in vocab), None)
    if missing:
        raise GGUFError(f"{g.path}: merge {' '.join(missing)!r} uses a token that is not in the vocabulary")

    tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=bool(g.get("tokenizer.ggml.add_space_prefix", False)),
                                          use_regex=True)
    tk.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                        if _PRE_TOKENIZERS[pre] else byte_level)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED]
    tk.add_special_tokens(specials)
    tk.add_tokens(user)
    if tk.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise GGUFError(f"{g.path}: the tokenizer has {tk.get_vocab_size(with_added_tokens=True)} tokens, the "
                        f"file lists {len(tokens)}")
    return tk


def tokenizer_config(g: GGUFFile, cfg: dict) -> dict:
    """``tokenizer_config.json``: special tokens by text, BOS/EOS insertion flags, the chat template."""
    tokens = g.require("tokenizer.ggml.tokens")
    out = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
           "add_bos_token": bool(g.get("tokenizer.ggml.add_bos_token", False)),
           "add_eos_token": bool(g.get("tokenizer.ggml.add_eos_token", False)),
           "model_max_length": cfg["max_position_embeddings"]}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("pad_token", "pad_token_id")):
        if key in cfg:
            out[name] = tokens[cfg[key]]
    if "tokenizer.ggml.unknown_token_id" in g.metadata:
        unk = _int(g, "tokenizer.ggml.unknown_token_id")
        if unk >= len(tokens):
            raise GGUFError(f"{g.path}: tokenizer.ggml.unknown_token_id {unk} is outside the vocabulary")
        out["unk_token"] = tokens[unk]
    template = g.get("tokenizer.chat_template")
    if template is not None:
        if not isinstance(template, str):
            raise GGUFError(f"{g.path}: tokenizer.chat_template is not a string")
        out["chat_template"] = template
    return out


# ------------------------------------------------------------------------------------------------ convert
def convert(src: str, dst: str, dtype: str = "float32", overwrite: bool = False) -> str:
    """Converts ``src`` (.gguf) into the HF directory ``dst`` (written atomically); returns a one-line summary."""
    from hyperlora_jax.io.atomic import atomic_write_dir
    from hyperlora_jax.io.safetensors_io import save_file

    if dtype not in DTYPES:
        raise GGUFError(f"dtype {dtype!r} is not supported (supported: {', '.join(DTYPES)})")
    start = time.perf_counter()
    with GGUFFile(src) as g:
        cfg = hf_config(g)
        cfg["torch_dtype"] = dtype
        tokenizer = build_tokenizer(g)
        if tokenizer.get_vocab_size(with_added_tokens=True) != cfg["vocab_size"]:
            raise GGUFError(f"{src}: {tokenizer.get_vocab_size()} tokens for vocab_size {cfg['vocab_size']}")
        tok_cfg = tokenizer_config(g, cfg)
        tensors = hf_tensors(g, cfg, DTYPES[dtype])
        types: dict[str, int] = {}
        for info in g.tensors.values():
            types[info.type_name] = types.get(info.type_name, 0) + 1
        name = g.get("general.name", os.path.basename(src))
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}

    def write(tmp: str):
        def dump(fname, obj):
            with open(os.path.join(tmp, fname), "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2, ensure_ascii=False)
        dump("config.json", cfg)
        dump("generation_config.json", gen)
        dump("tokenizer_config.json", tok_cfg)
        tokenizer.save(os.path.join(tmp, "tokenizer.json"))
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt", "source": "gguf"})
        umask = os.umask(0)
        os.umask(umask)
        for f in os.listdir(tmp):   # mkdtemp / mkstemp create 0700 / 0600: give the usual permissions
            os.chmod(os.path.join(tmp, f), 0o666 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)

    atomic_write_dir(dst, write, overwrite=overwrite)
    mix = ", ".join(f"{n}x{k}" for k, n in sorted(types.items(), key=lambda kv: -kv[1]))
    return (f"{name} (llama): {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, vocab "
            f"{cfg['vocab_size']}, tensors {mix} -> {dst} ({dtype}, {time.perf_counter() - start:.1f} s)")
