"""io.atomic: the target holds the old content or the new, never a part; no temporary file is left behind."""
import os

import pytest

from hyperlora_jax.io.atomic import atomic_open, write_text


def test_write_replaces_whole_and_leaves_no_temp(tmp_path):
    p = str(tmp_path / "f.json")
    write_text(p, "old")
    write_text(p, "new")
    assert open(p).read() == "new" and os.listdir(tmp_path) == ["f.json"]


def test_failure_mid_write_keeps_old_content(tmp_path):
    p = str(tmp_path / "f.bin")
    write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(p, "wb") as f:
            f.write(b"partial")
            raise RuntimeError("disk full")
    assert open(p).read() == "old" and os.listdir(tmp_path) == ["f.bin"]


def test_mode_is_checked(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(str(tmp_path / "x"), "a"):
            pass
