"""Shared pieces of the command-line tools: model/tokenizer/adapter loading and one-line error reporting."""
from __future__ import annotations

import argparse
import os
import sys

DTYPES = ("float32", "bfloat16")

# The command-line tools never use transformers' PyTorch models (only tokenizers and configs): its advisory
# "PyTorch was not found" line on every start of a torch-free install is noise.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


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

    from hyperlora_jax.io.hf_load import load_model
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
    from hyperlora_jax.io.peft_io import import_peft
    if not os.path.isdir(path):
        raise UsageError(f"--lora {path!r} is not a directory")
    return import_peft(path, cfg)


def inside(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies below it (absolute, symlinks resolved)."""
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_out_vs_sources(out: str, sources, flag: str = "--out") -> None:
    """Refuses an output directory that is one of the inputs or contains one (``--overwrite`` replaces the whole
    output directory, which would destroy an input inside it). ``sources``: (what, path or None) pairs."""
    for what, src in sources:
        if not src:
            continue
        if os.path.realpath(out) == os.path.realpath(src):
            raise UsageError(f"{flag} {out!r} is the {what} itself; choose another output directory")
        if inside(src, out):
            raise UsageError(f"{flag} {out!r} contains the {what} {src!r}; choose an output directory outside it")


# ----------------------------------------------------------------------------------------- adapter vs base model
_IGNORED_CONFIG_KEYS = ("_name_or_path", "name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache")


def _model_config(path: str) -> dict | None:
    """The model-defining fields of ``path/config.json`` (None when unreadable)."""
    import json
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    return {k: v for k, v in d.items() if k not in _IGNORED_CONFIG_KEYS} if isinstance(d, dict) else None


def recorded_base_model(lora_dir: str) -> str | None:
    """``base_model_name_or_path`` of ``lora_dir/adapter_config.json`` (None when absent or unreadable; reading
    the adapter itself reports a broken file later)."""
    import json
    try:
        with open(os.path.join(lora_dir, "adapter_config.json"), encoding="utf-8") as f:
            value = json.load(f).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value.strip() else None


def _same_base(model_dir: str, recorded: str, lora_dir: str) -> bool:
    """Whether ``model_dir`` is the base model ``recorded`` names: the same directory, or a directory with the same
    config.json (a copy); for a recorded name that is not a local directory (a hub id, another machine's path),
    the same last path component, the same ``_name_or_path``, or the config.json copy the adapter carries."""
    mine = _model_config(model_dir)
    if os.path.isdir(recorded):
        return os.path.samefile(model_dir, recorded) or (mine is not None and mine == _model_config(recorded))
    name = os.path.basename(os.path.normpath(recorded))
    if name == os.path.basename(os.path.normpath(os.path.abspath(model_dir))):
        return True
    try:
        import json
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            if json.load(f).get("_name_or_path") == recorded:
                return True
    except (OSError, ValueError, AttributeError):
        pass
    carried = _model_config(lora_dir) if os.path.isfile(os.path.join(lora_dir, "config.json")) else None
    return carried is not None and carried == mine


def model_for_lora(model_dir: str | None, lora_dir: str | None) -> str | None:
    """The base-model directory to load for ``--model model_dir --lora lora_dir``.

    Without ``--lora`` (or when the adapter records no base model): ``model_dir`` as given. Without ``--model``:
    the adapter's recorded base model (``adapter_config.json`` ``base_model_name_or_path``), which must then be a
    local directory. With both: the recorded base model must be ``model_dir`` (see :func:`_same_base`), else
    UsageError naming both.
    """
    if lora_dir is None:
        return model_dir
    if not os.path.isdir(lora_dir):
        raise UsageError(f"--lora {lora_dir!r} is not a directory")
    recorded = recorded_base_model(lora_dir)
    if recorded is None:
        return model_dir
    if model_dir is None:
        if os.path.isdir(recorded):
            return recorded
        raise UsageError(f"--lora {lora_dir!r} was made for the base model {recorded!r}, which is not a local "
                         f"directory here; pass --model DIR")
    if not os.path.isdir(model_dir):
        raise UsageError(f"--model {model_dir!r} is not a directory")
    if not _same_base(model_dir, recorded, lora_dir):
        raise UsageError(f"--lora {lora_dir!r} was made for the base model {recorded!r}, not --model {model_dir!r}")
    return model_dir


# ----------------------------------------------------------------------------------------- prompts and limits
def prompt_ids(tok, text: str, chat: bool) -> list[int]:
    """``tokenizer(text)`` ids, or with ``chat`` one user turn through the tokenizer's chat template plus the
    generation prompt (``hyperlora_jax.eval.answering.chat_ids``)."""
    if chat:
        from hyperlora_jax.eval.answering import chat_ids
        if not getattr(tok, "chat_template", None):
            raise UsageError("--chat: the model's tokenizer has no chat template")
        return chat_ids(tok, text)
    return [int(i) for i in tok(text)["input_ids"]]


def check_sampling(temperature: float, top_p: float) -> None:
    """temperature finite and >= 0 (0 = greedy), top_p in (0, 1]; UsageError otherwise."""
    import math
    if not math.isfinite(temperature) or temperature < 0:
        raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:  # also false for nan
        raise UsageError(f"--top-p must be in (0, 1], got {top_p}")


def check_window(cfg, n_tokens: int, extra: int = 0, what: str = "the prompt", extra_flag: str = "") -> None:
    """``n_tokens`` (+ ``extra`` new tokens) must fit the model's window (max_position_embeddings)."""
    window = cfg.max_position_embeddings
    if n_tokens + extra > window:
        if extra and n_tokens < window:
            raise UsageError(f"{what} ({n_tokens} tokens) plus {extra_flag} {extra} exceeds the model's window of "
                             f"{window} tokens (max_position_embeddings): at most {window - n_tokens} new tokens")
        raise UsageError(f"{what} is {n_tokens} tokens, the model's window is {window} (max_position_embeddings)")


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
