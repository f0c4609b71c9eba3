"""Text -> LoRA: turn task descriptions into PEFT adapter directories with a converted T2L hypernetwork.

    python -m hyperlora_jax.cli.generate_lora --t2l DIR --description TEXT [--description TEXT ...] --out DIR
        [--encoder HF_DIR] [--model BASE_DIR] [--scale rslora|alpha_over_r] [--overwrite]

Pipeline: every description is embedded in one batched encoder call (``TaskDescriptionEncoder``), all adapters are
generated in one jit-compiled hypernetwork call (``generate_adapters``), then each description's adapter is written
as a PEFT directory: ``--out`` itself for one description, ``--out/0``, ``--out/1``, ... for several.

Each PEFT directory holds ``adapter_config.json`` (``use_rslora: false`` and ``lora_alpha = scale * r``, so PEFT and
every vLLM version apply exactly the chosen scale; the convention is recorded under the ``hyperlora_jax`` key),
``adapter_model.safetensors`` (float32, PEFT key names) and a copy of the base model's ``config.json`` (vLLM's LoRA
loader wants it). Scales: ``rslora`` = alpha/sqrt(r) (as the reference trains, PEFT); ``alpha_over_r`` = alpha/r
(what the published vLLM 0.5.4 evaluations applied). Default: the scale the checkpoint records it was trained with
(``lora_scale``, written by ``python -m hyperlora_jax.cli.export``), else ``rslora``; ``--scale`` overrides it.

``--encoder`` / ``--model`` override the encoder / base-model directories recorded in the converted checkpoint
(``emb_model`` / ``model_dir``); recorded relative paths are resolved against the working directory, then the
checkpoint directory; the encoder pools as the checkpoint records (``encoder_pooling``), else as its directory says.
Everything is written into a temporary sibling directory and renamed into place: nothing is half-written; an
``--out`` that is (or contains) the checkpoint, encoder or base-model directory is refused, ``--overwrite`` or not.
Errors print one line on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from typing import Sequence

import numpy as np

from hyperlora_jax.cli import common as cli

PEFT_CONFIG, PEFT_WEIGHTS, BASE_CONFIG = "adapter_config.json", "adapter_model.safetensors", "config.json"


class GenerateError(ValueError):
    """A generation request that cannot be served (reported as one line, exit status 2)."""


# --------------------------------------------------------------------------------------------------- checks
def check_descriptions(descriptions: Sequence[str]) -> list[str]:
    if not descriptions:
        raise GenerateError("no task description given (pass --description TEXT)")
    out = []
    for i, d in enumerate(descriptions):
        if not isinstance(d, str) or not d.strip():
            raise GenerateError(f"task description {i} is empty")
        out.append(d)
    return out


def check_out_dir(out: str, overwrite: bool):
    if os.path.exists(out) and not os.path.isdir(out):
        raise GenerateError(f"--out {out} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise GenerateError(f"--out {out} exists and is not empty (pass --overwrite to replace it)")


def resolve_dir(path: str | None, what: str, flag: str, t2l_dir: str) -> str:
    """An existing directory for ``path`` (absolute, relative to the working directory or to the checkpoint)."""
    if not path:
        raise GenerateError(f"the T2L checkpoint records no {what} directory; pass {flag} DIR")
    for cand in ([path] if os.path.isabs(path) else [path, os.path.join(t2l_dir, path)]):
        if os.path.isdir(cand):
            return cand
    raise GenerateError(f"{what} directory {path!r} not found (recorded in the checkpoint or given); pass {flag} DIR")


def check_fits_base(cfg, base_cfg, model_dir: str):
    """The hypernetwork's targets (in/out features, layer count) against the base model's projections."""
    shapes = base_cfg.projection_shapes()
    problems = []
    if cfg.n_layers != base_cfg.num_layers:
        problems.append(f"n_layers {cfg.n_layers} != the base model's {base_cfg.num_layers}")
    for m, (i, o) in cfg.features.items():
        if m not in shapes:
            problems.append(f"{m} is not a projection of the base model")
        elif shapes[m] != (i, o):
            problems.append(f"{m} in/out {i}x{o} != the base model's {shapes[m][0]}x{shapes[m][1]}")
    if problems:
        raise GenerateError(f"the T2L checkpoint does not fit the base model {model_dir}: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------- pieces
def embed_descriptions(encoder_dir: str, descriptions: Sequence[str], *, pooling: str | None = None):
    """Task embeddings [N, E] in one batched encoder call; returns (embeddings, list of warning messages)."""
    from hyperlora_jax.encoders.task_embedding import TaskDescriptionEncoder

    n = len(descriptions)
    enc = TaskDescriptionEncoder.from_pretrained(encoder_dir, pooling=pooling, batch_size=max(1, n))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb = enc.embed_descriptions(list(descriptions))
    return np.asarray(emb, np.float32), [str(w.message) for w in caught]


def write_peft_dirs(adapter, out: str, *, base_model_dir: str | None, metadata: Sequence[dict],
                    overwrite: bool = False) -> list[str]:
    """Writes every batch row of ``adapter`` as a PEFT directory, atomically as a whole.

    One row: ``out`` is the PEFT directory; several: ``out/0``, ``out/1``, .... ``metadata[i]`` goes under the
    ``hyperlora_jax`` key of row i's adapter_config.json. The base model's config.json is copied into each.
    """
    from hyperlora_jax.io.atomic import atomic_write_dir
    from hyperlora_jax.io.peft_io import write_peft_files

    n = adapter.batch_size
    if len(metadata) != n:
        raise ValueError(f"{len(metadata)} metadata entries for {n} adapters")
    check_out_dir(out, overwrite)
    out = os.path.abspath(out)
    rows = [""] if n == 1 else [str(i) for i in range(n)]

    def write(tmp):
        for i, name in enumerate(rows):
            d = os.path.join(tmp, name) if name else tmp
            os.makedirs(d, exist_ok=True)
            write_peft_files(adapter, d, row=i, base_model=base_model_dir, metadata=metadata[i])
            if base_model_dir:
                shutil.copyfile(os.path.join(base_model_dir, BASE_CONFIG), os.path.join(d, BASE_CONFIG))

    try:
        atomic_write_dir(out, write, overwrite)
    except FileExistsError:  # filled meanwhile
        check_out_dir(out, overwrite)
        raise
    return [os.path.join(out, name) if name else out for name in rows]


def generate_lora(t2l_dir: str, descriptions: Sequence[str], out: str, *, encoder: str | None = None,
                  model: str | None = None, scale: str | None = None, overwrite: bool = False,
                  log=None) -> list[str]:
    """The whole command as a function: returns the written PEFT directories. Raises ValueError/OSError.
    ``scale`` None = the checkpoint's recorded ``lora_scale``, else 'rslora'."""
    from hyperlora_jax.config import ModelConfig
    from hyperlora_jax.t2l import checkpoint
    from hyperlora_jax.t2l.hypernet import SCALES, generate_adapters

    log = log or (lambda msg: print(msg, file=sys.stderr))
    descriptions = check_descriptions(descriptions)
    if scale is not None and scale not in SCALES:
        raise GenerateError(f"unknown --scale {scale!r} (choose from {', '.join(SCALES)})")
    cli.check_out_vs_sources(out, [("T2L checkpoint", t2l_dir), ("base model directory", model),
                                   ("encoder directory", encoder)])
    check_out_dir(out, overwrite)
    if not os.path.isdir(t2l_dir):
        raise GenerateError(f"--t2l {t2l_dir} is not a directory")
    params, cfg, config = checkpoint.load(t2l_dir)
    scale = scale or config.get("lora_scale") or "rslora"
    model_dir = os.path.abspath(resolve_dir(model or config.get("model_dir"), "base model", "--model", t2l_dir))
    encoder_dir = resolve_dir(encoder or config.get("emb_model"), "encoder", "--encoder", t2l_dir)
    cli.check_out_vs_sources(out, [("base model directory", model_dir), ("encoder directory", encoder_dir)])
    base_cfg = ModelConfig.from_pretrained(model_dir)
    check_fits_base(cfg, base_cfg, model_dir)

    emb, msgs = embed_descriptions(encoder_dir, descriptions, pooling=config.get("encoder_pooling"))
    for m in msgs:
        log(f"warning: {' '.join(m.split())}")
    if emb.shape[1] != cfg.task_emb_size:
        raise GenerateError(f"the encoder {encoder_dir} gives {emb.shape[1]}-d embeddings, the hypernetwork expects "
                            f"{cfg.task_emb_size}")
    import jax.numpy as jnp
    adapter = generate_adapters(params, cfg, jnp.asarray(emb), scale)  # one jitted call for all descriptions
    base = {"generator": "hyperlora_jax.cli.generate_lora", "t2l_variant": cfg.variant,
            "t2l_checkpoint": os.path.basename(os.path.normpath(t2l_dir)),
            "scale_convention": scale, "scale": cfg.scale(scale), "trained_scale": config.get("lora_scale"),
            "trained_lora_alpha": cfg.lora_alpha, "trained_r": cfg.r,
            "type_embedding_order": list(cfg.target_modules)}
    meta = [{**base, "description": d, "description_index": i} for i, d in enumerate(descriptions)]
    return write_peft_dirs(adapter, out, base_model_dir=model_dir, metadata=meta, overwrite=overwrite)


# --------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hyperlora_jax.cli.generate_lora",
                                description="Generate PEFT LoRA adapters from task descriptions with a T2L "
                                            "hypernetwork (converted with `python -m hyperlora_jax.cli.convert t2l`).")
    p.add_argument("--t2l", required=True, help="converted T2L checkpoint directory")
    p.add_argument("--description", action="append", required=True, help="task description (repeatable)")
    p.add_argument("--out", required=True, help="output directory (one adapter) or parent of 0/, 1/, ...")
    p.add_argument("--encoder", default=None, help="task-description encoder directory (overrides the checkpoint)")
    p.add_argument("--model", default=None, help="base model directory (overrides the checkpoint)")
    p.add_argument("--scale", default=None, choices=["rslora", "alpha_over_r"],
                   help="LoRA scale: rslora = alpha/sqrt(r) (the reference's training, PEFT); alpha_over_r = "
                        "alpha/r (the published vLLM 0.5.4 evaluations); default: the scale the checkpoint "
                        "records it was trained with, else rslora")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    dirs = generate_lora(args.t2l, args.description, args.out, encoder=args.encoder, model=args.model,
                         scale=args.scale, overwrite=args.overwrite)
    with open(os.path.join(dirs[0], PEFT_CONFIG), encoding="utf-8") as f:
        used = json.load(f)["hyperlora_jax"]["scale_convention"]
    print(f"wrote {len(dirs)} adapter{'s' if len(dirs) > 1 else ''} ({used}) -> {args.out}")
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv, exit=False)


if __name__ == "__main__":
    sys.exit(main())
