"""Converts official checkpoints into the project's own formats.

    python -m hyperlora_jax.cli.convert t2l SRC_RUN_DIR DST_DIR [--overwrite] [--module-order q_proj,v_proj]
    python -m hyperlora_jax.cli.convert d2l SRC_CHECKPOINT_DIR DST_DIR [--overwrite] [--chunk-tokens N]
    python -m hyperlora_jax.cli.convert gguf FILE.gguf DST_DIR [--overwrite] [--dtype float32|bfloat16]

Each method is one subcommand: a function ``_add_<name>(subparsers)`` that declares its arguments and sets
``func`` to a handler ``(args) -> str`` (a one-line summary). Adding a method = one more ``_add_*`` in ``COMMANDS``.
An existing non-empty DST is refused unless ``--overwrite``; a DST that is or contains SRC is always refused (the
conversion never destroys its own input). DST is written into a temp directory beside it and renamed into place at
the end; SIGTERM / SIGINT during a conversion remove the temp directory, leave DST as it was and exit with 2. Any
error prints one line on stderr and exits with 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

from hyperlora_jax.cli import common as cli


class ConvertError(ValueError):
    """A conversion that cannot proceed (reported as one line, exit code 2)."""


class Interrupted(BaseException):
    """SIGTERM / SIGINT during a conversion, raised in the main thread so that ``finally`` blocks clean up."""


def check_destination(dst: str, overwrite: bool, src: str | None = None):
    """Refuses a DST that is or contains ``src`` (even with overwrite), an existing non-empty DST (unless overwrite)
    and an existing non-directory DST."""
    if src is not None:
        s, d = os.path.realpath(src), os.path.realpath(dst)
        if s == d or s.startswith(d.rstrip(os.sep) + os.sep):
            raise ConvertError(f"destination {dst} is or contains the source {src}; refusing to write there")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise ConvertError(f"destination {dst} exists and is not a directory")
    if os.path.isdir(dst) and os.listdir(dst) and not overwrite:
        raise ConvertError(f"destination {dst} exists and is not empty (pass --overwrite to replace it)")


# --------------------------------------------------------------------------------------------------- t2l
def _run_t2l(args) -> str:
    from hyperlora_jax.t2l import checkpoint

    check_destination(args.dst, args.overwrite, args.src)
    order = [m.strip() for m in args.module_order.split(",") if m.strip()] if args.module_order else None
    params, cfg, meta = checkpoint.import_run(args.src, module_order=order)
    checkpoint.save(args.dst, params, cfg, meta, overwrite=args.overwrite)
    return (f"T2L-{cfg.variant}: {cfg.n_layers} layers, modules {','.join(cfg.target_modules)} (type-embedding "
            f"order), r={cfg.r}, alpha={cfg.lora_alpha:g} -> {args.dst}")


def _add_t2l(sub):
    p = sub.add_parser("t2l", help="Text-to-LoRA run directory (hypermod.pt + args.yaml + adapter_config.json)")
    p.add_argument("src", help="official run directory")
    p.add_argument("dst", help="output directory (config.json + params.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    p.add_argument("--module-order", default=None,
                   help="comma-separated module-type order overriding adapter_config.json target_modules")
    p.set_defaults(func=_run_t2l)


# --------------------------------------------------------------------------------------------------- d2l
def _run_d2l(args) -> str:
    from hyperlora_jax.d2l import checkpoint

    check_destination(args.dst, args.overwrite, args.src)
    params, cfg, meta = checkpoint.import_reference(args.src, chunk_tokens=args.chunk_tokens)
    checkpoint.save(args.dst, params, cfg, meta, overwrite=args.overwrite)
    extra = f", layer_idx={meta.layer_idx}" if meta.layer_idx is not None else ""
    chunk = meta.chunk_tokens if meta.chunk_tokens is not None else "base max_position_embeddings"
    return (f"D2L {cfg.ctx_encoder_type}{extra}: {cfg.n_layers} layers, modules {','.join(cfg.target_modules)}, "
            f"r={cfg.r}, alpha={cfg.alpha:g}, chunk tokens {chunk}, base model {meta.base_model} -> {args.dst}")


def _add_d2l(sub):
    p = sub.add_parser("d2l", help="Doc-to-LoRA checkpoint-N directory (pytorch_model.bin; args.yaml there or one "
                                   "level up)")
    p.add_argument("src", help="reference checkpoint directory holding pytorch_model.bin")
    p.add_argument("dst", help="output directory (config.json + params.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    p.add_argument("--chunk-tokens", type=int, default=None,
                   help="nominal context chunk length to record (default: args.yaml max_ctx_chunk_len, else the "
                        "base model's max_position_embeddings at use time)")
    p.set_defaults(func=_run_d2l)


# -------------------------------------------------------------------------------------------------- gguf
def _run_gguf(args) -> str:
    from hyperlora_jax.io.gguf_to_hf import convert

    check_destination(args.dst, args.overwrite)
    return convert(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)


def _add_gguf(sub):
    p = sub.add_parser("gguf", help="llama-architecture GGUF file (llama.cpp) -> Hugging Face model directory")
    p.add_argument("src", help="the .gguf file (F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors, gpt2 byte-level BPE tokenizer)")
    p.add_argument("dst", help="output directory (config.json, model.safetensors, tokenizer.json, ...)")
    p.add_argument("--dtype", default="float32", choices=cli.DTYPES,
                   help="storage dtype of the dequantised weights")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    p.set_defaults(func=_run_gguf)


COMMANDS = (_add_t2l, _add_d2l, _add_gguf)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hyperlora_jax.cli.convert",
                                     description="Convert official T2L / D2L checkpoints to hyperlora_jax formats.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(
        a.__name__[len("_add_"):] for a in COMMANDS) + "}")
    for add in COMMANDS:
        add(sub)
    return parser


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    print(args.func(args))
    return 0


@contextlib.contextmanager
def _signals_raise_interrupted():
    """While active (main thread only), SIGTERM and SIGINT raise :class:`Interrupted`; a second signal during the
    cleanup that follows is ignored so that the cleanup completes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGTERM, signal.SIGINT)

    def handler(signum, _frame):
        for s in sigs:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv=None) -> int:
    try:
        with _signals_raise_interrupted():
            return cli.run(_main, argv, exit=False)
    except Interrupted as e:
        print(f"error: interrupted by {e}; the destination was left as it was", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
