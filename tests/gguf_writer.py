"""A minimal GGUF v3 writer for tests: crafted files (tiny llama models, hostile headers) without the gguf package.

Written from the format description (not from hyperlora_jax.io.gguf), so the reader is tested against an
independent encoder.
"""
import struct

import numpy as np

U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10
_FMT = {U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q"}


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(vtype: int, v) -> bytes:
    if vtype == STRING:
        return _str(v)
    if vtype == ARRAY:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(_value(etype, x) for x in items)
    return struct.pack(_FMT[vtype], v)


def infer_type(v):
    if isinstance(v, bool):
        return BOOL, v
    if isinstance(v, int):
        return U32, v
    if isinstance(v, float):
        return F32, v
    if isinstance(v, str):
        return STRING, v
    if isinstance(v, list):
        etype = infer_type(v[0])[0] if v else U32
        return ARRAY, (etype, v)
    raise TypeError(type(v))


def gguf_bytes(metadata: dict, tensors: list, alignment: int = 32, version: int = 3) -> bytes:
    """metadata: key -> python value (int -> u32, float -> f32, list -> array of the first element's type) or
    key -> (vtype, value). tensors: [(name, ggml_type, ne (innermost first), raw bytes)], laid out in order."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for k, v in metadata.items():
        vtype, v = v if isinstance(v, tuple) else infer_type(v)
        out += _str(k) + struct.pack("<I", vtype) + _value(vtype, v)
    offset, blobs = 0, []
    for name, gtype, ne, raw in tensors:
        out += _str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", gtype, offset)
        pad = -len(raw) % alignment
        blobs.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    out += b"\0" * (-len(out) % alignment)
    return out + b"".join(blobs)


def f32(a: np.ndarray):
    """(ggml type, ne, raw) of a float32 array."""
    a = np.ascontiguousarray(a, np.float32)
    return 0, list(reversed(a.shape)), a.tobytes()


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf layout for q/k rows: within each head, row h * (hd/2) + j (half h, pair j)
    moves to row 2j + h. w: [n_heads * hd, d_in]."""
    rows = w.shape[0]
    hd = rows // n_heads
    out = np.empty_like(w)
    for head in range(n_heads):
        for h in range(2):
            for j in range(hd // 2):
                out[head * hd + 2 * j + h] = w[head * hd + h * (hd // 2) + j]
    return out
