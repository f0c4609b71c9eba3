"""Restricted reader of torch zip checkpoints: tensors of every dtype and layout, allow-lists, refusals."""
import dataclasses
import enum
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from conftest import DATA
from hyperlora_jax.io import torch_pickle as tp

torch = pytest.importorskip("torch")

T2L = os.path.join(DATA, "t2l")


def _np(t):
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


def _assert_same(arr, t):
    assert isinstance(arr, np.ndarray)
    assert arr.shape == tuple(t.shape)
    want = _np(t.detach().contiguous())
    assert arr.dtype == want.dtype, (arr.dtype, want.dtype)
    assert arr.flags.c_contiguous and arr.flags.owndata
    if arr.dtype == ml_dtypes.bfloat16:   # compare bit patterns
        arr, want = arr.view(np.uint16), want.view(np.uint16)
    np.testing.assert_array_equal(arr, want)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool, torch.complex64]


def _tensor(dtype, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 50
    if dtype == torch.bool:
        return x > 0
    if dtype == torch.complex64:
        return torch.complex(x, -x)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_roundtrip(tmp_path, dtype):
    t = _tensor(dtype, (3, 5))
    path = tmp_path / "x.pt"
    torch.save({"t": t, "scalar": t[0, 0].clone(), "empty": t[:0]}, path)
    out = tp.load(path)
    _assert_same(out["t"], t)
    _assert_same(out["scalar"], t[0, 0])
    _assert_same(out["empty"], t[:0])


def test_views_offsets_strides_and_shared_storage(tmp_path):
    base = torch.arange(4 * 6 * 5, dtype=torch.float32).reshape(4, 6, 5)
    views = {
        "transposed": base.transpose(0, 2),
        "permuted": base.permute(1, 2, 0),
        "stepped": base[::2, 1::3, ::2],
        "offset": base[2:, 3],
        "column": base[:, :, 4],
        "expanded": torch.arange(3.0).reshape(3, 1).expand(3, 7),   # stride 0
        "diag": torch.diagonal(base[0, :5, :5]),
        "bf16_t": base.to(torch.bfloat16).transpose(1, 2)[1:],
        "int_slice": torch.arange(100, dtype=torch.int64)[17:83:5],
    }
    obj = {"base": base, **views, "nested": [views["offset"], {"k": (views["stepped"], 3, "s")}],
           "param": torch.nn.Parameter(base[1].clone())}
    path = tmp_path / "views.pt"
    torch.save(obj, path)
    out = tp.load(path)
    for k, v in views.items():
        _assert_same(out[k], v)
    _assert_same(out["nested"][0], views["offset"])
    _assert_same(out["nested"][1]["k"][0], views["stepped"])
    assert out["nested"][1]["k"][1:] == (3, "s")
    _assert_same(out["param"], obj["param"])
    out["transposed"][0, 0, 0] = -1        # copies: writing one does not change another
    assert out["base"][0, 0, 0] == 0


def test_module_state_dict(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(7, 4), torch.nn.LayerNorm(4), torch.nn.Embedding(3, 2))
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    out = tp.load(path)
    assert list(out) == list(model.state_dict())
    for k, v in model.state_dict().items():
        _assert_same(out[k], v)


def test_golden_hypermod_matches_torch_and_npz():
    path = os.path.join(T2L, "run_L", "hypermod.pt")
    out = tp.load(path)
    ref = torch.load(path, weights_only=True, map_location="cpu")
    assert list(out) == list(ref)
    for k, v in ref.items():
        _assert_same(out[k], v)
    z = np.load(os.path.join(T2L, "L.npz"))
    for k in out:
        np.testing.assert_array_equal(out[k], z[f"hypermod/{k}"])


def test_golden_d2l_checkpoint_with_records():
    path = os.path.join(T2L, "d2l_checkpoint_pytorch_model.bin")
    with pytest.raises(tp.UnsafeCheckpointError, match="ctx_to_lora.modeling.hypernet.HypernetConfig"):
        tp.load(path)
    out = tp.load(path, records=tp.D2L_RECORDS, enums=tp.D2L_ENUMS)
    assert out["base_model_name_or_path"] == "d2l/tiny_gemma2"
    hc = out["hypernet_config"]
    assert isinstance(hc, tp.Record) and hc.qualname == "ctx_to_lora.modeling.hypernet.HypernetConfig"
    lc = hc.lora_config
    assert lc.qualname == "peft.tuners.lora.config.LoraConfig"
    assert lc.r == 2 and lc.peft_type == "LORA" and lc.target_modules == {"down_proj"}
    assert lc.runtime_config.qualname == "peft.tuners.lora.config.LoraRuntimeConfig"
    assert hc.feature_sizes == ({"down_proj": 96}, {"down_proj": 48})
    np.testing.assert_array_equal(hc.layer_indices, [0, 1, 2])
    assert hc.layer_indices.dtype == np.int64
    assert hc.aggregator_config.qualname == "ctx_to_lora.modeling.aggregator.AggregatorConfig"
    assert out["ctx_encoder_args"].ctx_encoder_type == "per_layer_activations"
    d = hc.to_dict()
    assert d["lora_config"]["runtime_config"] == {"ephemeral_gpu_offload": False}
    tensors = {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
    assert tensors and all(v.dtype == np.float32 for v in tensors.values())
    with pytest.raises(AttributeError):
        hc.no_such_field


# ------------------------------------------------------------------------------------------------ refusals
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_reduce_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": _Evil(marker)}, path)
    with pytest.raises(tp.UnsafeCheckpointError, match=r"'(posix|os|nt)\.system'") as exc:
        tp.load(path, records=tp.D2L_RECORDS, enums=tp.D2L_ENUMS)
    assert isinstance(exc.value, ValueError)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(eval, protocol=2),                       # builtins.eval
    b"cbuiltins\ngetattr\n(cos\nsystem\ntR.",              # protocol 0 GLOBAL
    pickle.dumps(zipfile.ZipFile, protocol=4),            # STACK_GLOBAL
])
def test_hand_made_pickles_are_refused(tmp_path, payload):
    path = tmp_path / "hand.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")
    with pytest.raises(tp.UnsafeCheckpointError):
        tp.load(path)


@dataclasses.dataclass
class _Cfg:
    a: int
    b: tuple


class _Color(enum.Enum):
    RED = "red"


def test_records_and_enums_are_inert(tmp_path):
    path = tmp_path / "cfg.pt"
    torch.save({"cfg": _Cfg(3, (1, "x")), "color": _Color.RED, "t": torch.zeros(2)}, path)
    cls_name = f"{_Cfg.__module__}.{_Cfg.__qualname__}"
    enum_name = f"{_Color.__module__}.{_Color.__qualname__}"
    with pytest.raises(tp.UnsafeCheckpointError, match="_Cfg"):
        tp.load(path)
    out = tp.load(path, records=[cls_name], enums=[enum_name])
    assert isinstance(out["cfg"], tp.Record) and not isinstance(out["cfg"], _Cfg)
    assert out["cfg"].a == 3 and out["cfg"].b == (1, "x")
    assert out["cfg"].to_dict() == {"a": 3, "b": (1, "x")}
    assert out["color"] == "red"


def test_legacy_format_refused(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"t": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(tp.TorchCheckpointError, match="legacy"):
        tp.load(path)


def test_not_a_checkpoint_and_truncated_storage(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not a torch zip"):
        tp.load(junk)
    good = tmp_path / "good.pt"
    torch.save({"t": torch.arange(10.0)}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if "/data/" in info.filename:
                data = data[:8]
            dst.writestr(info.filename, data)
    with pytest.raises(tp.TorchCheckpointError, match="storage"):
        tp.load(bad)


def test_big_endian_byteorder(tmp_path):
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    good = tmp_path / "le.pt"
    torch.save({"t": t.t()}, good)
    big = tmp_path / "be.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(big, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            dst.writestr(info.filename, data)
    _assert_same(tp.load(big)["t"], t.t())


def test_unpickler_never_imports(tmp_path):
    """find_class answers from its table only: a module that is not imported stays unimported."""
    import sys
    path = tmp_path / "x.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"cantigravity\nfly\n)R.")
    with pytest.raises(tp.UnsafeCheckpointError, match="antigravity.fly"):
        tp.load(path)
    assert "antigravity" not in sys.modules


def test_deflated_rezip_loads_and_corruption_is_caught(tmp_path):
    """torch.save stores entries uncompressed; a re-zipped (deflated) copy reads the same through the bounded
    inflater, and a flipped byte in a stored storage fails the CRC check instead of loading silently."""
    sd = {"a": torch.randn(64, 33), "b": torch.arange(10, dtype=torch.int64)[2:]}
    good = tmp_path / "good.pt"
    torch.save(sd, good)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    out = tp.load(deflated)
    for k, v in sd.items():
        _assert_same(out[k], v)
    with zipfile.ZipFile(good) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename)
    raw = bytearray(good.read_bytes())
    n_name, n_extra = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])  # local header
    start = info.header_offset + 30 + n_name + n_extra
    raw[start + 5] ^= 0xFF
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(tp.TorchCheckpointError, match=f"zip entry {info.filename} fails its CRC-32 check"):
        tp.load(bad)
