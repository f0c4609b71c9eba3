"""Internalise a document with a D2L hypernetwork and write the result as a PEFT LoRA adapter.

    python -m hyperlora_jax.cli.internalize --d2l D2L_DIR --document FILE --out OUT_DIR
                                        [--model BASE_DIR] [--chunk-tokens N] [--overwrite]

D2L_DIR is a project D2L checkpoint (``python -m hyperlora_jax.cli.convert d2l`` or ``python -m hyperlora_jax.cli.export``).
The document (UTF-8 text) is chat-templated, split into K chunks of about N tokens (default: the checkpoint's chunk
length, else the base model's max_position_embeddings; N may not exceed either, the window counted with the chunk's
template tokens), and turned into one adapter of rank (K+1)·r: the K chunk blocks in order, then the
learned bias block. PEFT's scaling lora_alpha / R is made equal to D2L's α (applied directly), i.e. the written
``lora_alpha`` is α·(K+1)·r with ``use_rslora: false``. ``--model`` overrides the recorded base-model path.

An existing non-empty OUT_DIR is refused unless ``--overwrite``; an OUT_DIR that is (or contains) the checkpoint,
the document or the base model is always refused; the output is written atomically (never half written). Every error prints one line on stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from hyperlora_jax.cli import common as cli


class InternalizeError(ValueError):
    """A bad input to the CLI (reported as one line, exit code 2)."""


def read_document(path: str) -> str:
    """The text of ``path``: UTF-8 (an optional BOM is dropped); anything else is an error."""
    if not os.path.isfile(path):
        raise InternalizeError(f"document {path!r} does not exist or is not a file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InternalizeError(f"document {path!r} is not valid UTF-8 text (byte {e.start}: "
                               f"{raw[e.start:e.start + 1]!r})") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hyperlora_jax.cli.internalize",
                                description="Document -> PEFT LoRA adapter with a D2L hypernetwork.")
    p.add_argument("--d2l", required=True, help="project D2L checkpoint directory (convert d2l output)")
    p.add_argument("--document", required=True, help="UTF-8 text file to internalise")
    p.add_argument("--out", required=True, help="output PEFT adapter directory")
    p.add_argument("--model", default=None, help="base-model directory (overrides the recorded path)")
    p.add_argument("--chunk-tokens", type=int, default=None, help="nominal chunk length in tokens")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def run(args) -> str:
    from hyperlora_jax.d2l.api import DocToLoRA
    from hyperlora_jax.io.atomic import prepare_out_dir
    from hyperlora_jax.io.peft_io import export_peft

    try:  # cheap checks first: nothing is loaded or written for a bad --out or document
        cli.check_out_vs_sources(args.out, [("D2L checkpoint", args.d2l), ("document", args.document),
                                            ("base model directory", args.model)])
        prepare_out_dir(args.out, args.overwrite)
    except FileExistsError as e:
        raise InternalizeError(str(e)) from None
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise InternalizeError(f"--out {args.out!r} exists and is not a directory")
    text = read_document(args.document)
    if not text.strip():
        raise InternalizeError(f"document {args.document!r} is empty")
    if args.chunk_tokens is not None and args.chunk_tokens < 1:
        raise InternalizeError(f"--chunk-tokens must be positive, got {args.chunk_tokens}")
    d2l = DocToLoRA.from_pretrained(args.d2l, args.model)
    cli.check_out_vs_sources(args.out, [("base model directory", d2l.base_model_dir)])
    if args.chunk_tokens is not None:
        window, n_affix = d2l.base_cfg.max_position_embeddings, len(d2l.affixes)
        limit = min(d2l.chunk_tokens, window - n_affix)
        if args.chunk_tokens > limit:
            raise InternalizeError(
                f"--chunk-tokens {args.chunk_tokens} is more than this hypernetwork reads in one chunk ({limit}: "
                f"its chunk length {d2l.chunk_tokens}, the base model's window {window} less {n_affix} template "
                f"tokens)")
        d2l.chunk_tokens = args.chunk_tokens
    adapter = d2l.make_adapter(text)
    k = int(d2l.last_batch.n_ctx_chunks[0])
    meta = {"method": "d2l", "d2l_checkpoint": os.path.abspath(args.d2l), "document": os.path.abspath(args.document),
            "ctx_encoder_type": d2l.hyper_cfg.ctx_encoder_type, "n_chunks": k, "chunk_tokens": d2l.chunk_tokens,
            "r_per_chunk": d2l.hyper_cfg.r, "rank": adapter.rank, "d2l_alpha": d2l.hyper_cfg.alpha,
            "rank_layout": "chunk blocks in order, then the bias block",
            "scale_convention": "PEFT lora_alpha / r equals D2L alpha (applied directly)"}
    export_peft(adapter, args.out, row=0, base_model=os.path.abspath(d2l.base_model_dir), metadata=meta,
                overwrite=args.overwrite)
    return (f"internalised {args.document} ({k} chunk{'s' if k != 1 else ''} of <= {d2l.chunk_tokens} tokens) -> "
            f"rank {adapter.rank} PEFT adapter (alpha {d2l.hyper_cfg.alpha:g}) in {args.out}")


def _main(argv) -> int:
    print(run(build_parser().parse_args(argv)))
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv, exit=False)


if __name__ == "__main__":
    sys.exit(main())
