"""hyperlora_jax.io.param_dir: the config.json + params.safetensors directory (round trip, bad files, atomicity)."""
import json
import os

import numpy as np
import pytest

from hyperlora_jax.io import param_dir, safetensors_io
from hyperlora_jax.io.param_dir import ParamDirError, load_param_dir, save_param_dir

FMT = "hyperlora_jax.test"
CONFIG = {"format": FMT, "format_version": 1, "hypernet": {"width": 3}, "source": {"kind": "test"}}


def _params():
    rng = np.random.default_rng(0)
    return {"enc": {"kernel": rng.normal(size=(2, 3)).astype(np.float32), "bias": np.zeros(3, np.float32)},
            "head": {"A": rng.normal(size=(4,)).astype(np.float64)}}


def _leftovers(parent) -> list:
    return sorted(n for n in os.listdir(parent) if n.startswith("."))


def test_round_trip_and_file_layout(tmp_path):
    dst = str(tmp_path / "ckpt")
    assert save_param_dir(dst, CONFIG, _params()) == dst
    assert sorted(os.listdir(dst)) == ["config.json", "params.safetensors"] and _leftovers(tmp_path) == []
    with open(os.path.join(dst, "config.json"), encoding="utf-8") as f:
        assert f.read() == json.dumps(CONFIG, indent=2) + "\n"
    flat = safetensors_io.load_file(os.path.join(dst, "params.safetensors"))
    assert sorted(flat) == ["enc/bias", "enc/kernel", "head/A"] and all(v.dtype == np.float32 for v in flat.values())
    config, params = load_param_dir(dst, FMT, 1)
    assert config == CONFIG
    for block, leaves in _params().items():
        for k, v in leaves.items():
            np.testing.assert_array_equal(np.asarray(params[block][k]), v.astype(np.float32))


def test_missing_directory_or_files(tmp_path):
    with pytest.raises(ParamDirError, match="is not a directory"):
        load_param_dir(str(tmp_path / "nope"), FMT, 1)
    dst = str(tmp_path / "ckpt")
    save_param_dir(dst, CONFIG, _params())
    os.remove(os.path.join(dst, "params.safetensors"))
    with pytest.raises(ParamDirError, match="has no params.safetensors"):
        load_param_dir(dst, FMT, 1)
    os.remove(os.path.join(dst, "config.json"))
    with pytest.raises(ParamDirError, match="has no config.json"):
        load_param_dir(dst, FMT, 1)
    with pytest.raises(KeyError, match="custom"):
        load_param_dir(dst, FMT, 1, error=KeyError, missing="custom")


def test_corrupt_or_foreign_config(tmp_path):
    dst = str(tmp_path / "ckpt")
    save_param_dir(dst, CONFIG, _params())
    cfg = os.path.join(dst, "config.json")
    with open(cfg, "w") as f:
        f.write('{"format": "hyperlora_jax.test", ')
    with pytest.raises(ParamDirError, match="config.json is not valid JSON"):
        load_param_dir(dst, FMT, 1)
    with open(cfg, "w") as f:
        json.dump(dict(CONFIG, format="other"), f)
    with pytest.raises(ParamDirError, match="format 'other', expected 'hyperlora_jax.test'"):
        load_param_dir(dst, FMT, 1)
    with open(cfg, "w") as f:
        json.dump(dict(CONFIG, format_version=2), f)
    with pytest.raises(ParamDirError, match="format_version 2 is not supported"):
        load_param_dir(dst, FMT, 1)


def test_truncated_params(tmp_path):
    dst = str(tmp_path / "ckpt")
    save_param_dir(dst, CONFIG, _params())
    path = os.path.join(dst, "params.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-5])
    with pytest.raises(ParamDirError, match="cannot read params.safetensors: .*truncated"):
        load_param_dir(dst, FMT, 1)
    with open(path, "wb") as f:
        f.write(b"\x00\x01")
    with pytest.raises(ParamDirError, match="cannot read params.safetensors"):
        load_param_dir(dst, FMT, 1)


def test_overwrite_refused_without_flag(tmp_path):
    dst = str(tmp_path / "ckpt")
    save_param_dir(dst, CONFIG, _params())
    with pytest.raises(ParamDirError, match="exists and is not empty"):
        save_param_dir(dst, dict(CONFIG, hypernet={"width": 4}), _params())
    assert load_param_dir(dst, FMT, 1)[0]["hypernet"] == {"width": 3}
    save_param_dir(dst, dict(CONFIG, hypernet={"width": 4}), _params(), overwrite=True)
    assert load_param_dir(dst, FMT, 1)[0]["hypernet"] == {"width": 4} and _leftovers(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ParamDirError, match="exists and is not a directory"):
        save_param_dir(str(tmp_path / "file"), CONFIG, _params(), overwrite=True)
    with pytest.raises(ParamDirError, match="needs a 'format'"):
        save_param_dir(str(tmp_path / "new"), {"x": 1}, _params())


@pytest.mark.parametrize("existing", [False, True])
def test_failure_mid_write_leaves_no_half_written_dir(tmp_path, monkeypatch, existing):
    """The params file fails after config.json was written: the target is absent (or the old one, intact), and no
    temporary directory is left behind."""
    dst = str(tmp_path / "ckpt")
    if existing:
        save_param_dir(dst, CONFIG, _params())

    def failing_save(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(param_dir.safetensors_io, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_param_dir(dst, dict(CONFIG, hypernet={"width": 9}), _params(), overwrite=True)
    monkeypatch.undo()
    assert _leftovers(tmp_path) == []
    if existing:
        assert load_param_dir(dst, FMT, 1)[0] == CONFIG
    else:
        assert not os.path.exists(dst)
