"""The project's parameter directory: a hypernetwork (D2L, T2L) saved as ``config.json`` + ``params.safetensors``.

  config.json         a JSON object with "format" and "format_version" (read through :mod:`hyperlora_jax.io.format_json`)
                      and whatever the format records; written with indent 2 and a trailing newline.
  params.safetensors  float32 parameters; keys = Flax param paths joined with '/' (``{"a": {"b": x}}`` -> ``"a/b"``);
                      safetensors metadata ``{"format": config["format"]}``.

``save_param_dir`` writes the directory atomically (a temporary sibling renamed into place, :mod:`hyperlora_jax.io.
atomic`): a reader never sees a half-written directory, and a non-empty one is only replaced with ``overwrite``.
``load_param_dir`` reads it back; a missing, malformed, foreign or truncated file is one error naming the file.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from hyperlora_jax.io import safetensors_io
from hyperlora_jax.io.atomic import atomic_write_dir
from hyperlora_jax.io.format_json import read_format_json

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"


class ParamDirError(ValueError):
    """A parameter directory that cannot be written or read (one message naming the file)."""


def flat_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A nested parameter dict as {'a/b': float32 array}."""
    return {"/".join(k): np.asarray(v, np.float32) for k, v in flatten_dict(dict(params)).items()}


def check_param_shapes(params: Mapping[str, Any], shapes: Mapping[str, tuple], where: str, error=ParamDirError):
    """``error`` listing every missing, unexpected or wrongly shaped parameter of ``params`` (nested, or flat with
    '/'-joined keys) against ``shapes`` ({'a/b': shape}); ``where`` names what was checked."""
    flat = {"/".join(k): v for k, v in flatten_dict(dict(params)).items()}
    problems = [f"missing {k} {list(s)}" for k, s in shapes.items() if k not in flat]
    problems += [f"unexpected {k}" for k in flat if k not in shapes]
    problems += [f"{k}: shape {list(np.shape(v))}, expected {list(shapes[k])}" for k, v in flat.items()
                 if k in shapes and tuple(np.shape(v)) != tuple(shapes[k])]
    if problems:
        raise error(f"{where} does not match its config: " + "; ".join(sorted(problems)))


def save_param_dir(dst: str, config: Mapping[str, Any], params: Mapping[str, Any], overwrite: bool = False, *,
                   error=ParamDirError) -> str:
    """Writes ``dst/config.json`` (``config``, which must carry "format") + ``dst/params.safetensors`` (``params``, a
    nested dict, as float32) atomically; returns ``dst``. ``error`` (default ParamDirError) for a file at ``dst``, or
    a non-empty ``dst`` without ``overwrite``."""
    if "format" not in config:
        raise error("a parameter directory's config needs a 'format'")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise error(f"{dst} exists and is not a directory")
    flat = flat_params(params)
    text = json.dumps(dict(config), indent=2) + "\n"

    def write(tmp):
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(text)
        safetensors_io.save_file(flat, os.path.join(tmp, PARAMS_FILE), metadata={"format": config["format"]})

    try:
        atomic_write_dir(dst, write, overwrite)
    except FileExistsError as e:
        raise error(str(e)) from None
    return dst


def load_param_dir(path: str, fmt: str, version: int, *, error=ParamDirError,
                   missing: str | None = None) -> tuple[dict, dict]:
    """(config, params) of a directory written by :func:`save_param_dir` in format ``fmt`` version ``version``;
    params nested, float32 jax arrays. ``error`` (default ParamDirError) names the file for a missing directory or
    file, a config.json that is not valid JSON or of another format / version, or a params.safetensors that cannot
    be read (truncated, corrupt); ``missing``: the message when config.json does not exist."""
    if not os.path.isdir(path):
        raise error(f"{path!r} is not a directory")
    config = read_format_json(os.path.join(path, CONFIG_FILE), fmt, version, error,
                              missing=missing or f"{path!r} has no {CONFIG_FILE}")
    params_path = os.path.join(path, PARAMS_FILE)
    if not os.path.isfile(params_path):
        raise error(f"{path!r} has no {PARAMS_FILE}")
    try:
        flat = safetensors_io.load_file(params_path)
    except (safetensors_io.SafetensorsError, OSError) as e:
        raise error(f"{path}: cannot read {PARAMS_FILE}: {e}") from None
    params = unflatten_dict({tuple(k.split("/")): jnp.asarray(v, jnp.float32) for k, v in flat.items()})
    return config, params
