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


EXPECTED_ERRORS = (ValueError, OSError, KeyError)  # UsageError, ConfigError, UnsafeCheckpointError: ValueErrors


def error_message(e: BaseException) -> str:
    """``e`` as one line: its text with all whitespace runs collapsed (a KeyError without its repr quotes)."""
    text = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    return " ".join(text.split()) or type(e).__name__


def run(main, argv=None, *, exit: bool = True) -> int:
    """Runs ``main(argv)``, the body of a command-line tool, and returns its exit status (``main``'s int, 0 for None).

    An expected error (``ValueError``, ``OSError``, ``KeyError`` and their subclasses) becomes one line
    ``error: MESSAGE`` on stderr and status 2: with ``exit=True`` (``python -m`` entry points) the process exits with
    it; with ``exit=False`` it is returned, which is what each tool's ``main(argv) -> int`` does for callers and tests.
    """
    try:
        status = main(argv)
    except EXPECTED_ERRORS as e:
        print(f"error: {error_message(e)}", file=sys.stderr)
        if exit:
            sys.exit(2)
        return 2
    return 0 if status is None else int(status)
