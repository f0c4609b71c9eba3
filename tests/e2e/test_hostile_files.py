"""Untrusted files from outside: crafted torch checkpoints, args.yaml files and safetensors headers, and what
``python -m hyperlora_jax.cli.convert`` does with them (and with signals). Every crafted file is made here.

Memory bombs run the reader in a subprocess under ``RLIMIT_AS`` (1.5 GiB): it must refuse with our error, fast,
before allocating, instead of dying of MemoryError or swapping.
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib

import numpy as np
import pytest

from conftest import DATA
from hyperlora_jax.io import safetensors_io
from hyperlora_jax.io import torch_pickle as tp
from hyperlora_jax.io import safe_yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(DATA, "t2l", "run_L")
AS_LIMIT = 3 << 29  # 1.5 GiB of address space for the memory-bomb subprocesses


# ------------------------------------------------------------------------------------------------ pickle opcodes
def _glob(qual: str) -> bytes:
    module, name = qual.rsplit(".", 1)
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"   # GLOBAL


def _int(i: int) -> bytes:
    return b"I%d\n" % i                                              # INT


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b                        # BINUNICODE


def _tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"                               # MARK ... TUPLE


def _tensor(key="0", numel=4, offset=0, size=(4,), stride=(1,), storage="FloatStorage") -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`` as opcodes."""
    pid = _tup(_str("storage"), _glob(f"torch.{storage}"), _str(key), _str("cpu"), _int(numel)) + b"Q"  # BINPERSID
    args = _tup(pid, _int(offset), _tup(*map(_int, size)), _tup(*map(_int, stride)), b"\x89",
                _glob("collections.OrderedDict") + b")R")
    return _glob("torch._utils._rebuild_tensor_v2") + args + b"R"


def _dict_pickle(**items: bytes) -> bytes:
    body = b"".join(_str(k) + v for k, v in items.items())
    return b"\x80\x02}(" + body + b"u."


def _write_pt(path, pkl: bytes, storages=None, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", data)
    return str(path)


def _patch_central_size(path, name: str, field: str, value: int):
    """Rewrites the uncompressed size (``field='file_size'``) or the CRC (``'crc'``) of ``name`` in the central
    directory, as a forger would: the local header keeps the true value, zipfile trusts the central one."""
    data = bytearray(open(path, "rb").read())
    i = 0
    while True:
        i = data.find(b"PK\x01\x02", i)
        assert i >= 0, name
        n_name = struct.unpack("<H", data[i + 28:i + 30])[0]
        if data[i + 46:i + 46 + n_name].decode() == name:
            break
        i += 4
    off = {"file_size": 24, "crc": 16}[field]
    data[i + off:i + off + 4] = struct.pack("<I", value)
    open(path, "wb").write(bytes(data))


F32_4 = np.arange(4, dtype=np.float32).tobytes()


def _good_pt(path):
    return _write_pt(path, _dict_pickle(w=_tensor()), {"0": F32_4})


def _limited_load(path, *extra) -> tuple[subprocess.CompletedProcess, float]:
    """``torch_pickle.load(path)`` in a subprocess limited to AS_LIMIT bytes of address space."""
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({AS_LIMIT}, {AS_LIMIT}))
        from hyperlora_jax.io import torch_pickle
        try:
            torch_pickle.load(sys.argv[1])
        except torch_pickle.TorchCheckpointError as e:
            print("REFUSED:", e)
            sys.exit(3)
        print("LOADED")
    """)
    env = dict(os.environ, PYTHONPATH=REPO, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", script, str(path), *extra], capture_output=True, text=True, env=env,
                       timeout=120)
    return r, time.time() - t0


def _assert_refused_fast(path, fragment):
    r, dt = _limited_load(path)
    assert r.returncode == 3, (r.stdout, r.stderr[-2000:])
    assert fragment in r.stdout, r.stdout
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stdout
    assert dt < 30, dt


# ------------------------------------------------------------------------------------------------ torch: memory
def test_good_crafted_checkpoint_loads(tmp_path):
    out = tp.load(_good_pt(tmp_path / "good.pt"))
    np.testing.assert_array_equal(out["w"], np.arange(4, dtype=np.float32))


def test_stride_zero_bomb_refused_before_allocating(tmp_path):
    """A 1-element storage expanded (stride 0) to 2^40 elements: 4 TiB if materialised."""
    pkl = _dict_pickle(w=_tensor(numel=1, size=(1 << 20, 1 << 20), stride=(0, 0)))
    path = _write_pt(tmp_path / "bomb.pt", pkl, {"0": F32_4[:4]})
    _assert_refused_fast(path, "tensor of size (1048576, 1048576) (4398046511104 bytes) exceeds what this "
                               "checkpoint may materialise")


def test_small_expanded_tensor_still_loads(tmp_path):
    """Zero strides are legal (``expand``) within the per-load budget."""
    pkl = _dict_pickle(w=_tensor(numel=1, size=(3, 5), stride=(0, 0)))
    out = tp.load(_write_pt(tmp_path / "exp.pt", pkl, {"0": F32_4[:4]}))
    np.testing.assert_array_equal(out["w"], np.zeros((3, 5), np.float32))


def test_overlapping_views_charged_against_the_budget(tmp_path):
    """Many legal-looking views of one 4 MiB storage: each fits, together they exceed 2 x storage + 64 MiB."""
    n = 1 << 20
    items = {f"v{i}": _tensor(numel=n, size=(n,), stride=(1,)) for i in range(20)}
    pkl = _dict_pickle(**items)
    path = _write_pt(tmp_path / "views.pt", pkl, {"0": bytes(4 * n)})
    with pytest.raises(tp.TorchCheckpointError, match=r"exceeds what this checkpoint may materialise \(\d+ bytes "
                                                      r"left of twice its 4194304 storage bytes \+ 64 MiB\)"):
        tp.load(path)


@pytest.mark.parametrize("tensor,fragment", [
    (_tensor(stride=(-1,)), "tensor stride (-1,) has a negative or absurd entry"),
    (_tensor(size=(-4,)), "tensor size (-4,) has a negative or absurd entry"),
    (_tensor(offset=3, size=(2,)), "tensor of size (2,), stride (1,), offset 3 reads past the end of storage 0 "
                                   "(4 elements)"),
    (_tensor(offset=-1), "bad tensor geometry: offset -1"),
    (_tensor(size=(2, 3), stride=(3, 1)), "reads past the end of storage 0"),
    (_tensor(size=(2, 2), stride=(1,)), "bad tensor geometry"),
    (_tensor(numel=5), "storage 0 has 16 bytes, expected 5 x 4"),
    (_tensor(numel=1 << 60), f"storage 0 has 16 bytes, expected {1 << 60} x 4"),
    (_tensor(numel=-1), "storage 0 has 16 bytes, expected -1 x 4"),
    (_tensor(size=(1,) * 65, stride=(1,) * 65), "is not a tuple of at most 64 ints"),
    (_tensor(key="../x"), "storage '../x' missing from the archive"),
], ids=["neg-stride", "neg-size", "offset-past-end", "neg-offset", "strides-past-end", "ndim-mismatch",
        "storage-short", "storage-huge", "storage-negative", "ndim-65", "key-traversal"])
def test_bad_tensor_geometry(tmp_path, tensor, fragment):
    path = _write_pt(tmp_path / "bad.pt", _dict_pickle(w=tensor), {"0": F32_4})
    with pytest.raises(tp.TorchCheckpointError) as e:
        tp.load(path)
    assert fragment in str(e.value) and str(e.value).startswith(path + ": ") and "\n" not in str(e.value)


def test_zip_bomb_refused_by_declared_size(tmp_path):
    """A deflated storage whose header declares 3 GiB: refused before decompressing anything."""
    pkl = _dict_pickle(w=_tensor())
    path = _write_pt(tmp_path / "zb.pt", pkl, {"0": F32_4}, compress=zipfile.ZIP_DEFLATED)
    _patch_central_size(path, "archive/data/0", "file_size", 3 << 30)
    _assert_refused_fast(path, f"zip entry archive/data/0 declares {3 << 30} bytes uncompressed")


def test_zip_bomb_within_a_smaller_inflate_limit(tmp_path):
    """A real 64 MiB-of-zeros deflate stream (64 KB on disk): over a 16 MiB limit, refused by its declared size."""
    n = 16 << 20
    pkl = _dict_pickle(w=_tensor(numel=n, size=(n,)))
    path = _write_pt(tmp_path / "zeros.pt", pkl, {"0": bytes(4 * n)}, compress=zipfile.ZIP_DEFLATED)
    assert os.path.getsize(path) < 1 << 20
    with pytest.raises(tp.TorchCheckpointError, match=f"declares {4 * n} bytes uncompressed .* over the "
                                                      r"\d+ bytes this load may still inflate \(zip bomb\?\)"):
        tp.load(path, max_inflate_bytes=16 << 20)
    assert tp.load(path)["w"].shape == (n,)


def test_deflate_stream_longer_than_declared(tmp_path):
    """Declared 16 bytes, the stream inflates to 64 MiB: stopped after one chunk, not inflated in full."""
    pkl = _dict_pickle(w=_tensor())
    path = _write_pt(tmp_path / "long.pt", pkl, {"0": bytes(64 << 20)}, compress=zipfile.ZIP_DEFLATED)
    _patch_central_size(path, "archive/data/0", "file_size", 16)
    _assert_refused_fast(path, "zip entry archive/data/0 inflates to more than its declared 16 bytes")


@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_crc_mismatch(tmp_path, compress):
    path = _write_pt(tmp_path / "crc.pt", _dict_pickle(w=_tensor()), {"0": F32_4}, compress=compress)
    _patch_central_size(path, "archive/data/0", "crc", zlib.crc32(F32_4) ^ 1)
    with pytest.raises(tp.TorchCheckpointError, match="zip entry archive/data/0 fails its CRC-32 check"):
        tp.load(path)


def test_oversized_data_pkl_refused(tmp_path):
    path = _good_pt(tmp_path / "big_pkl.pt")
    _patch_central_size(path, "archive/data.pkl", "file_size", 100 << 20)
    with pytest.raises(tp.TorchCheckpointError, match=f"declares {100 << 20} bytes, more than the {16 << 20} "
                                                      f"allowed for it"):
        tp.load(path)


def test_pickle_length_bomb(tmp_path):
    """BINBYTES8 declaring 2^50 bytes: the unpickler would allocate that before reading; the pre-scan refuses it."""
    pkl = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 50) + b"xx."
    path = _write_pt(tmp_path / "len.pt", pkl)
    _assert_refused_fast(path, f"corrupt checkpoint pickle (ValueError: 'expected {1 << 50} bytes in a bytes8, but "
                               f"only 3 remain')")


def test_pickle_memo_index_bomb(tmp_path):
    """LONG_BINPUT 2^28: the unpickler would size (and zero) a 4 GiB memo table for one 5-byte opcode."""
    pkl = b"\x80\x02N" + b"r" + struct.pack("<I", 1 << 28) + b"."
    path = _write_pt(tmp_path / "memo.pt", pkl)
    _assert_refused_fast(path, f"corrupt checkpoint pickle (memo index {1 << 28} out of sequence at byte 3)")


# ------------------------------------------------------------------------------------------------ torch: structure
@pytest.mark.parametrize("n", [150, 100_000])
def test_deep_nesting_is_one_error(tmp_path, n):
    """Nested lists: the post-load check (150) or the opcode pre-scan (100,000) refuses them, never RecursionError."""
    path = _write_pt(tmp_path / "deep.pt", b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b".")
    fragment = ("checkpoint pickle nests deeper than 100 levels" if n < 200 else
                "checkpoint pickle nests objects more than 200 levels deep")
    with pytest.raises(tp.TorchCheckpointError) as e:
        tp.load(path)
    assert str(e.value) == f"{path}: {fragment}"


def test_nested_tuple_key_would_crash_the_interpreter(tmp_path):
    """A million nested tuples as a dict key: CPython hashes them recursively without a guard (segfault). Run in a
    subprocess so that a regression fails this test instead of killing the test run."""
    pkl = b"\x80\x02}K\x01" + b"\x85" * 1_000_000 + b"K\x02s."
    path = _write_pt(tmp_path / "tuples.pt", pkl)
    _assert_refused_fast(path, "checkpoint pickle nests objects more than 200 levels deep")


def test_reference_cycle_is_one_error(tmp_path):
    path = _write_pt(tmp_path / "cycle.pt", b"\x80\x02]q\x00h\x00a.")   # l = []; l.append(l)
    with pytest.raises(tp.TorchCheckpointError, match="checkpoint pickle contains a reference cycle"):
        tp.load(path)


def test_shared_reference_bomb(tmp_path):
    """l0 = [1, 1]; l_{i+1} = [l_i, l_i]: 40 levels, 2^40 objects when expanded (as json.dump or to_dict would)."""
    pkl = b"\x80\x02]q\x00(K\x01K\x01e"
    for i in range(1, 41):
        pkl += b"]q" + bytes([i]) + b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"e"
    path = _write_pt(tmp_path / "dag.pt", pkl + b".")
    with pytest.raises(tp.TorchCheckpointError, match="expands to more than 1000000 objects"):
        tp.load(path)


def test_unknown_global_refused_by_name(tmp_path):
    path = _write_pt(tmp_path / "g.pt", b"\x80\x02" + _glob("subprocess.Popen") + _tup(_str("true")) + b"R.")
    with pytest.raises(tp.UnsafeCheckpointError, match="references the global 'subprocess.Popen', which is not on "
                                                      "the allow-list"):
        tp.load(path)


# ------------------------------------------------------------------------------------------------ torch: per-call state
def _build(target: bytes, slotstate: bytes) -> bytes:
    """``target`` then BUILD with state ``(None, slotstate)`` (setattr of each key), then POP."""
    return target + _tup(b"N", slotstate) + b"b0"


@pytest.mark.parametrize("attack,fragment", [
    (_build(_glob("torch.FloatStorage"), b"}" + _str("dtype") + _str("x") + b"s"),
     "tries to set 'dtype' on <storage type torch.FloatStorage>"),
    (_build(_glob("torch._utils._rebuild_tensor_v2"), b"}" + _str("__defaults__") + b")s"),
     "tries to set '__defaults__' on <torch._utils._rebuild_tensor_v2>"),
    (_build(_glob("torch.Tensor"), b"}" + _str("name") + _str("x") + b"s"), "tries to set 'name'"),
    (_build(_glob("collections.OrderedDict"), b"}" + _str("fromkeys") + b"Ns"), "corrupt checkpoint pickle"),
    (_build(_tensor(), b"}" + _str("shape") + _tup(_int(1)) + b"s"), "corrupt checkpoint pickle"),
], ids=["storage-type-dtype", "rebuild-defaults", "tensor-type", "ordereddict-class", "ndarray"])
def test_a_file_cannot_poison_the_next_load(tmp_path, attack, fragment):
    """A crafted file sets attributes on the stand-ins a pickle can name; the next, good file must load as if the
    crafted one had never been read (stand-ins are per call and refuse assignment)."""
    bad = _write_pt(tmp_path / "poison.pt", b"\x80\x02" + attack + b"N.", {"0": F32_4})
    with pytest.raises(ValueError) as e:
        tp.load(bad)
    assert fragment in str(e.value) and str(e.value).startswith(bad + ": ")
    out = tp.load(_good_pt(tmp_path / "good.pt"))
    np.testing.assert_array_equal(out["w"], np.arange(4, dtype=np.float32))
    assert out["w"].dtype == np.float32


def test_records_allowed_for_one_call_only(tmp_path):
    pkl = b"\x80\x02" + _glob("my.Cfg") + b")\x81" + b"}" + _str("a") + _int(1) + b"sb."   # NEWOBJ + BUILD
    path = _write_pt(tmp_path / "rec.pt", pkl)
    rec = tp.load(path, records=["my.Cfg"])
    assert isinstance(rec, tp.Record) and rec.qualname == "my.Cfg" and rec.a == 1
    with pytest.raises(tp.UnsafeCheckpointError, match="'my.Cfg'"):
        tp.load(path)
    with pytest.raises(tp.UnsafeCheckpointError, match="attribute assignment"):
        rec.a = 2


# ------------------------------------------------------------------------------------------------ YAML
def _billion_laughs(levels=9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + f"\nrun_name: *a{levels}\n"


def test_yaml_billion_laughs(tmp_path):
    p = tmp_path / "args.yaml"
    p.write_text(_billion_laughs())
    assert p.stat().st_size < 1000
    t0 = time.time()
    with pytest.raises(safe_yaml.YamlError, match="expands to more than 100000 nodes once aliases are resolved"):
        safe_yaml.load_yaml(str(p))
    assert time.time() - t0 < 1


@pytest.mark.parametrize("text,fragment", [
    ("a: &x [1, *x]\n", "recursive alias (a node contains itself)"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "YAML nested too deeply"),
    ("x: !!python/object/new:os.system [echo]\n", "cannot read YAML safely"),
    ("x: !!python/name:os.system\n", "cannot read YAML safely"),
    ("x: !!python/object/apply:os.system [echo, 2]\n", "with 2 arguments is not supported"),
    ("a: [1\n", "cannot read YAML safely"),
    ("a: " + "9" * 5000 + "\n", "cannot read YAML safely: Exceeds the limit (4300 digits)"),
    ("a: 2020-13-45\n", "cannot read YAML safely: month must be in 1..12"),
], ids=["recursive", "deep", "object-new", "name", "apply-2-args", "syntax", "long-int", "bad-date"])
def test_yaml_refusals(tmp_path, text, fragment):
    p = tmp_path / "args.yaml"
    p.write_text(text)
    with pytest.raises(safe_yaml.YamlError) as e:
        safe_yaml.load_yaml(str(p))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_yaml_size_limit_and_legit_aliases(tmp_path):
    p = tmp_path / "args.yaml"
    p.write_text("a: " + "[" * 150 + "1" + "]" * 150 + "\n")   # deep but legal
    v = safe_yaml.load_yaml(str(p))["a"]
    for _ in range(149):
        v = v[0]
    assert v == [1]
    p.write_text("x: " + "a" * (1 << 20) + "\n")
    with pytest.raises(safe_yaml.YamlError, match=f"more than the {1 << 20} accepted"):
        safe_yaml.load_yaml(str(p))
    p.write_text("base: &b {lr: 0.1, mods: [q_proj, v_proj]}\nrun: {<<: *b, lr: 0.2}\ncopy: *b\n"
                 "exp: !!python/object/apply:ctx_to_lora.configs.ExperimentSetup\n- hyper_lora\n"
                 "t: !!python/tuple [1, 2]\n")
    assert safe_yaml.load_yaml(str(p)) == {
        "base": {"lr": 0.1, "mods": ["q_proj", "v_proj"]}, "run": {"lr": 0.2, "mods": ["q_proj", "v_proj"]},
        "copy": {"lr": 0.1, "mods": ["q_proj", "v_proj"]}, "exp": "hyper_lora", "t": (1, 2)}


# ------------------------------------------------------------------------------------------------ safetensors
def _st(path, header, data=b"", n=None):
    blob = json.dumps(header).encode() if not isinstance(header, bytes) else header
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob) if n is None else n) + blob + data)
    return str(path)


_W = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("header,fragment", [
    ({"w": {**_W, "dtype": "F128"}}, "tensor 'w': unsupported dtype 'F128'"),
    ({"w": {**_W, "dtype": 7}}, "tensor 'w': unsupported dtype '7'"),
    ({"w": {**_W, "shape": [-2]}}, "tensor 'w': shape must be a list of at most 64 non-negative ints, got [-2]"),
    ({"w": {**_W, "shape": [2.0]}}, "tensor 'w': shape must be a list"),
    ({"w": {**_W, "shape": [True, 2]}}, "tensor 'w': shape must be a list"),
    ({"w": {**_W, "shape": "2"}}, "tensor 'w': shape must be a list"),
    ({"w": {**_W, "data_offsets": [8, 0]}}, "tensor 'w': data_offsets 8..0 are not in order"),
    ({"w": {**_W, "data_offsets": [0]}}, "tensor 'w': data_offsets must be a list of two ints"),
    ({"w": {**_W, "data_offsets": [0, "8"]}}, "tensor 'w': data_offsets must be a list of two ints"),
    ({"w": {**_W, "data_offsets": [-8, 0]}}, "tensor 'w': data_offsets -8..0 are not in order"),
    ({"w": {**_W, "shape": [3]}}, "tensor 'w': byte range 0..8 does not match F32[3]"),
    ({"w": {**_W, "data_offsets": [8, 16]}}, "tensor 'w' ends at byte 16, data section has 8"),
    ({"w": {**_W, "shape": [1 << 62], "data_offsets": [0, 8]}}, "does not match F32[4611686018427387904]"),
    ({"w": _W, "v": {**_W, "shape": [1], "data_offsets": [4, 8]}}, "tensors 'w' and 'v' overlap"),
    ({"w": [1, 2]}, "tensor 'w': entry is a list, not an object"),
    ({"w": {"dtype": "F32", "shape": [2]}}, "tensor 'w': entry lacks data_offsets"),
    ([1, 2], "corrupt safetensors header (not a JSON object)"),
    ({"__metadata__": {"a": 1}, "w": _W}, "__metadata__ must map strings to strings"),
    ({"__metadata__": "x", "w": _W}, "__metadata__ must map strings to strings"),
    (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w": {}}', "duplicate key 'w'"),
    (b"[" * 100_000 + b"]" * 100_000, "corrupt safetensors header (RecursionError"),
    (b"\xff\xfe", "corrupt safetensors header"),
    (b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 8]}}',
     "corrupt safetensors header (ValueError: Exceeds the limit (4300 digits)"),
])
def test_safetensors_header_refusals(tmp_path, header, fragment):
    path = _st(tmp_path / "x.safetensors", header, bytes(8))
    with pytest.raises(safetensors_io.SafetensorsError) as e:
        safetensors_io.load_file(path)
    msg = str(e.value)
    assert fragment in msg and msg.startswith(path) and "\n" not in msg


def test_safetensors_header_length_and_good_file(tmp_path):
    path = _st(tmp_path / "x.safetensors", {"w": _W}, bytes(8), n=1 << 40)
    with pytest.raises(safetensors_io.SafetensorsError, match=f"header of {1 << 40} bytes, file of"):
        safetensors_io.load_file(path)
    path = _st(tmp_path / "y.safetensors", {"__metadata__": {"k": "v"}, "w": _W,
                                              "e": {"dtype": "BF16", "shape": [0, 3], "data_offsets": [8, 8]}},
               np.array([1.5, -2], np.float32).tobytes())
    out = safetensors_io.load_file(path)
    np.testing.assert_array_equal(out["w"], [1.5, -2])
    assert out["e"].shape == (0, 3)


# ------------------------------------------------------------------------------------------------ convert CLI
def _cli(*argv):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "hyperlora_jax.cli.convert", *argv], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def _assert_cli_error(r, fragment):
    assert r.returncode == 2, (r.stdout, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr[-2000:]


def _leftovers(parent) -> list:
    return sorted(n for n in os.listdir(parent) if n.startswith("."))


def _run_copy(tmp_path, name="run"):
    run = tmp_path / name
    shutil.copytree(RUN, run)
    return run


def test_cli_hostile_inputs(tmp_path):
    """Each crafted run: exit 2, one ``error:`` line, nothing at DST and no temp dir beside it."""
    cases = []
    run = _run_copy(tmp_path, "laughs")
    (run / "args.yaml").write_text((run / "args.yaml").read_text() + _billion_laughs().replace("run_name", "x_"))
    cases.append((run, "expands to more than 100000 nodes"))
    run = _run_copy(tmp_path, "zipbomb")
    pkl = _dict_pickle(w=_tensor())
    _write_pt(run / "hypermod.pt", pkl, {"0": F32_4}, compress=zipfile.ZIP_DEFLATED)
    _patch_central_size(str(run / "hypermod.pt"), "archive/data/0", "file_size", 3 << 30)
    cases.append((run, "(zip bomb?)"))
    run = _run_copy(tmp_path, "deep")
    _write_pt(run / "hypermod.pt", b"\x80\x02" + b"]" * 150 + b"a" * 149 + b".")
    cases.append((run, "checkpoint pickle nests deeper than 100 levels"))
    out = tmp_path / "out"
    out.mkdir()
    for run, fragment in cases:
        dst = out / run.name
        _assert_cli_error(_cli("t2l", str(run), str(dst)), fragment)
        assert not dst.exists()
    assert _leftovers(out) == []


def test_cli_overwrite_never_destroys_its_input(tmp_path):
    run = _run_copy(tmp_path)
    before = sorted(os.listdir(run))
    _assert_cli_error(_cli("t2l", str(run), str(run), "--overwrite"), "is or contains the source")
    nested = tmp_path / "outer" / "run"
    shutil.copytree(RUN, nested)
    _assert_cli_error(_cli("t2l", str(nested), str(tmp_path / "outer"), "--overwrite"), "is or contains the source")
    assert sorted(os.listdir(run)) == before and sorted(os.listdir(nested)) == before


_SLOW_DRIVER = """
import sys, time
from hyperlora_jax.cli import convert
from hyperlora_jax.io import safetensors_io
_save = safetensors_io.save_file
def slow_save(tensors, path, metadata=None):   # the conversion stalls with its temp dir half-written
    _save(tensors, path, metadata)
    open(sys.argv[1], "w").close()
    time.sleep(300)
safetensors_io.save_file = slow_save
sys.exit(convert.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig,overwrite", [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["TERM", "INT"])
def test_signal_mid_conversion_leaves_no_temp_dir(tmp_path, sig, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "conv"
    if overwrite:
        dst.mkdir()
        (dst / "old.txt").write_text("keep me")
    marker = tmp_path / "stalled"
    argv = ["t2l", RUN, str(dst)] + (["--overwrite"] if overwrite else [])
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    p = subprocess.Popen([sys.executable, "-c", _SLOW_DRIVER, str(marker), *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert p.poll() is None, p.communicate()
            assert time.time() < deadline, "conversion never reached the write"
            time.sleep(0.1)
        assert [n for n in _leftovers(out) if n.startswith(".tmp-conv-")], _leftovers(out)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 2, err[-2000:]
    assert err.strip().splitlines() == [f"error: interrupted by {signal.Signals(sig).name}; the destination was "
                                        f"left as it was"]
    assert _leftovers(out) == []
    if overwrite:
        assert os.listdir(dst) == ["old.txt"] and (dst / "old.txt").read_text() == "keep me"
    else:
        assert not dst.exists()


def test_atomic_write_dir_puts_the_old_directory_back(tmp_path, monkeypatch):
    """A failure after the old DST was moved aside (here: the final rename) restores it; nothing is left over."""
    from hyperlora_jax.io import atomic

    dst = tmp_path / "d"
    dst.mkdir()
    (dst / "old.txt").write_text("keep me")
    real_rename, calls = os.rename, []

    def failing_rename(a, b):
        calls.append((a, b))
        if len(calls) == 2:    # 1: DST -> .old-d-*/d, 2: temp -> DST
            raise OSError("disk full")
        real_rename(a, b)

    monkeypatch.setattr(atomic.os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write_dir(str(dst), lambda tmp: open(os.path.join(tmp, "new.txt"), "w").close(), True)
    assert len(calls) == 3 and os.listdir(dst) == ["old.txt"] and _leftovers(tmp_path) == []
