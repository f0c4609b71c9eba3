"""The configuration of a training run, saved beside its checkpoints: ``WORKDIR/config.json``.

The trainer writes it (process 0, atomically: temp file then ``os.replace``) each time a run starts or resumes, so
it always describes the run that wrote the newest checkpoints. ``python -m hyperlora_jax.cli.export`` reads it to
rebuild the method (hypernetwork config, base model, encoder) without the ``--config`` flags of the run.

Format: ``{"format": "hyperlora_jax.train_config", "format_version": 1, "config": <the ConfigDict as JSON>}``.
JSON has no tuples: every list is read back as a tuple (the configs use tuples for sequences).
"""
from __future__ import annotations

import json
import os

from hyperlora_jax.io.atomic import write_text
from hyperlora_jax.io.format_json import read_format_json

FORMAT = "hyperlora_jax.train_config"
FORMAT_VERSION = 1
FILE = "config.json"


class RunConfigError(ValueError):
    """A workdir's config.json that is missing or unreadable (one message)."""


def save_run_config(workdir: str, config) -> str:
    """Writes ``config`` (an ml_collections ConfigDict) to ``workdir/config.json`` atomically; returns the path."""
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.loads(config.to_json_best_effort())}
    return write_text(os.path.join(workdir, FILE), json.dumps(body, indent=1) + "\n")


def _tuples(x):
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    return x


def load_run_config(workdir: str):
    """The ConfigDict saved in ``workdir/config.json`` (RunConfigError when absent or not this format)."""
    import ml_collections

    path = os.path.join(workdir, FILE)
    body = read_format_json(
        path, FORMAT, FORMAT_VERSION, RunConfigError,
        missing=f"{workdir!r} has no {FILE} (runs started before the trainer saved its config do not have it): "
                f"rerun the same `python -m hyperlora_jax.train --config=... --workdir={workdir}` command with "
                f"--config.num_train_steps=<its last step> to write it (resumes, trains no further step)")
    if not isinstance(body.get("config"), dict):
        raise RunConfigError(f"{path} is not a hyperlora_jax training config (no 'config' object)")
    return ml_collections.ConfigDict(_tuples(body["config"]))
