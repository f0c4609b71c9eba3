"""Shared pieces of the command-line tools: model/tokenizer/adapter loading and one-line error reporting."""
from __future__ import annotations

import argparse
import os
import sys

DTYPES = ("float32", "bfloat16")


class UsageError(ValueError):
    """Bad command-line input."""


def add_model_args(p: argparse.ArgumentParser):
    p.add_argument("--model", default=None,
                   help="local Hugging Face model directory (default: the embedded tiny model)")
    p.add_argument("--lora", default=None, help="PEFT adapter directory to apply")
    p.add_argument("--dtype", default="float32", choices=DTYPES)


def load_model_and_tokenizer(model_dir: str | None, dtype: str):
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from hyperlora_jax.hf_load import load_model
    from hyperlora_jax.tiny import ensure_tiny_model

    model_dir = model_dir or ensure_tiny_model()
    cfg, params = load_model(model_dir, dtype=jnp.dtype(dtype))
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        tokenizer = None
        tokenizer_error = str(e).splitlines()[0]
    else:
        tokenizer_error = None
    return cfg, params, tokenizer, tokenizer_error


def load_lora(path: str | None, cfg):
    if path is None:
        return None
    from hyperlora_jax.peft_io import import_peft
    if not os.path.isdir(path):
        raise UsageError(f"--lora {path!r} is not a directory")
    return import_peft(path, cfg)


def need_tokenizer(tokenizer, error):
    if tokenizer is None:
        raise UsageError(f"the model directory has no usable tokenizer ({error}); pass token ids instead")
    return tokenizer


def run(main, argv=None):
    """Runs ``main(argv)``; an expected error becomes one line on stderr and exit status 2."""
    from hyperlora_jax.config import ConfigError
    try:
        return main(argv)
    except (UsageError, ConfigError, FileExistsError, FileNotFoundError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
