"""Training workdir -> hypernetwork checkpoint directory (the format ``convert d2l`` / ``convert t2l`` write).

    python -m hyperlora_jax.cli.export --workdir W --out DIR [--step N] [--overwrite]

W is a ``python -m hyperlora_jax.train`` workdir of a ``d2l`` or ``t2l`` run (or its ``checkpoints/``
directory): its Orbax checkpoints and the ``config.json`` the trainer saves beside them
(:mod:`hyperlora_jax.run_config`).
The method comes from the checkpoint's fingerprint; the run's config rebuilds the hypernetwork, its base model and
(T2L) its encoder; the trainable parameters of step N (default: the newest) are restored read-only after the
fingerprint check. DIR then holds ``config.json`` + ``params.safetensors``, which ``internalize`` (D2L),
``generate_lora`` (T2L) and ``evaluate --checkpoint DIR`` read. What the export records besides the parameters:
D2L the base model (absolute path), context-encoder type and layer, chunk length (``data.chunk_tokens``) and the
context template affixes; T2L the base model, encoder and its pooling, and the LoRA scale it was trained with
(``t2l.scale``, which ``generate_lora`` then applies by default).

DIR is written atomically (a temporary sibling renamed into place); a non-empty DIR needs ``--overwrite``; DIR
equal to or inside W, or W inside DIR, is refused (the source is never touched). ``lm`` and ``lora`` runs have no
hypernetwork to export. Every error is one ``error: ...`` line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from hyperlora_jax.cli import common as cli

EXPORTABLE = ("d2l", "t2l")


class ExportError(ValueError):
    """A workdir / output combination that cannot be exported (one message)."""


def _workdir_and_ckdir(workdir: str) -> tuple[str, str]:
    from hyperlora_jax.checkpoint import checkpoint_dir

    if not os.path.isdir(workdir):
        raise ExportError(f"--workdir {workdir!r} does not exist or is not a directory")
    ckdir = checkpoint_dir(workdir)
    return os.path.dirname(ckdir), ckdir


def _abs_dir(path) -> str | None:
    return os.path.abspath(path) if path and os.path.isdir(path) else None


def export(workdir: str, out: str, *, step: int | None = None, overwrite: bool = False) -> dict:
    """Exports step ``step`` (default newest) of the d2l / t2l training workdir ``workdir`` to ``out``.

    Returns {"method", "step", "out", "workdir"}. Raises ValueError subclasses (one message) for bad input;
    nothing is written then.
    """
    from hyperlora_jax.checkpoint import checkpoint_meta
    from hyperlora_jax.eval.systems import restore_trainable
    from hyperlora_jax.methods import get_method
    from hyperlora_jax.io.atomic import prepare_out_dir
    from hyperlora_jax.run_config import load_run_config
    from hyperlora_jax.sharding import make_mesh

    if step is not None and step < 0:
        raise ExportError(f"--step must be >= 0, got {step}")
    root, ckdir = _workdir_and_ckdir(workdir)
    cli.check_out_vs_sources(out, [("training workdir", root)])
    if cli.inside(out, root):
        raise ExportError(f"--out {out!r} is inside the training workdir {root!r}; choose a directory outside it")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"--out {out!r} exists and is not a directory")
    try:
        prepare_out_dir(out, overwrite)
    except FileExistsError as e:
        raise ExportError(str(e)) from None
    step, meta = checkpoint_meta(ckdir, step)
    method_name = meta.get("method")
    if method_name not in EXPORTABLE:
        raise ExportError(f"{ckdir}/{step} is a {method_name!r} run: only d2l and t2l runs have a hypernetwork to "
                          f"export")
    config = load_run_config(root)
    if config.get("method") != method_name:
        raise ExportError(f"{root}/config.json is a {config.get('method')!r} run but its checkpoint is "
                          f"{method_name!r}")
    if method_name == "t2l" and config.t2l.get("mode", "sft") != "sft":
        raise ExportError(f"{root} is a T2L {config.t2l.mode!r} run; only SFT runs are exported "
                          f"(generate_lora applies no reconstruction statistics)")
    mesh = make_mesh({"data": -1})
    method = get_method(method_name)(config, mesh)
    params, step = restore_trainable(method, ckdir, step)
    source = {"kind": "training workdir", "workdir": os.path.abspath(root), "step": step,
              "checkpoints": os.path.abspath(ckdir), "exporter": "hyperlora_jax.cli.export"}
    if method_name == "d2l":
        from hyperlora_jax.d2l import checkpoint as d2l_checkpoint
        hcfg = method.hyper_cfg
        d2l_meta = d2l_checkpoint.D2LMeta(
            base_model=os.path.abspath(method.base_dir), ctx_encoder_type=hcfg.ctx_encoder_type,
            layer_idx=method.layer_idx, chunk_tokens=int(config.data.chunk_tokens),
            ctx_affixes={k: list(v) for k, v in dataclasses.asdict(method.affixes).items()}, source=source)
        d2l_checkpoint.save(out, params, hcfg, d2l_meta, overwrite=overwrite)
    else:
        from hyperlora_jax.t2l import checkpoint as t2l_checkpoint
        enc = config.encoder
        t2l_checkpoint.save(out, params, method.hcfg, {
            "model_dir": os.path.abspath(method.model_dir), "emb_model": _abs_dir(enc.get("model_dir")),
            "encoder_pooling": enc.get("pooling") or None, "lora_scale": method.scale,
            "system_turn": bool(config.data.get("system_turn", True)), "source": source}, overwrite=overwrite)
    return {"method": method_name, "step": step, "out": out, "workdir": root}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hyperlora_jax.cli.export",
                                description="Export a trained d2l / t2l workdir as a hypernetwork checkpoint "
                                            "directory (what internalize / generate_lora / evaluate read).")
    p.add_argument("--workdir", required=True, help="training workdir (python -m hyperlora_jax.train --workdir)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns about read-only managers on stderr
    r = export(args.workdir, args.out, step=args.step, overwrite=args.overwrite)
    reader = "internalize --d2l" if r["method"] == "d2l" else "generate_lora --t2l"
    print(f"exported the {r['method']} hypernetwork of {r['workdir']} (step {r['step']}) -> {args.out} "
          f"(read it with python -m hyperlora_jax.{reader} {args.out})")
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv, exit=False)


if __name__ == "__main__":
    sys.exit(main())
