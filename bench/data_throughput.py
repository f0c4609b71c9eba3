"""Throughput of the packed D2L input pipeline on one CPU core, against what a training step consumes.

Builds a synthetic SQuAD-style d2l_qa dataset offline (TFDS, array_record) with the project's tiny character-level
chat tokenizer, then times read → chat-template tokenisation → first-fit packing → batching for ``--seconds``.

    python bench/data_throughput.py [--seconds 20] [--seq-len 1024] [--ctx-len 2048] [--rows 4] [--smoke] [--out F]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402


def synthetic_squad(path: str, n_ctx: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    words = "the of and to in is was for on that with as by at from his her an were are which this be".split()
    with open(path, "w") as f:
        for i in range(n_ctx):
            ctx = " ".join(rng.choice(words, rng.integers(40, 300)))  # ~ up to 2000 characters (spec 11.1)
            for j in range(int(rng.integers(3, 8))):
                f.write(json.dumps({"context": f"Doc {i}. {ctx}", "question": f"What is item {j} of doc {i}?",
                                    "answers": {"text": [" ".join(rng.choice(words, rng.integers(2, 12)))]}}) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--contexts", type=int, default=3000)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--ctx-len", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=4, help="rows per host-local batch (one training step)")
    ap.add_argument("--smoke", action="store_true", help="200 contexts, 2 seconds (for tests)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.contexts, args.seconds = 200, 2.0
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from hyperlora_jax.data import tfds as hd
    from hyperlora_jax.data.packing import PackConfig, PackedIterator
    from hyperlora_jax.data.tokenize import D2LTokenizeConfig, D2LTokenizer
    from hyperlora_jax.tiny import build_char_tokenizer

    tmp = tempfile.mkdtemp(prefix="hlj-bench-")
    tok_dir = os.path.join(tmp, "tok")
    build_char_tokenizer(tok_dir)
    synthetic_squad(os.path.join(tmp, "squad.jsonl"), args.contexts)
    t0 = time.perf_counter()
    b = hd.D2lQa(config=hd.D2LQAConfig(name="bench", inputs={"train": {"squad": os.path.join(tmp, "squad.jsonl")}}),
                 data_dir=os.path.join(tmp, "tfds"))
    src = hd.data_source(b, "train")
    build_s = time.perf_counter() - t0

    tk = D2LTokenizer(tok_dir, D2LTokenizeConfig(max_ctx_len=args.ctx_len, max_qas_len=min(512, args.seq_len)))
    it = PackedIterator(src, len(src), tk, PackConfig(seq_len=args.seq_len, ctx_len=args.ctx_len, max_segments=64,
                                                      max_ctx_segments=64), args.rows, seed=0, window=64)
    next(it)  # warm-up (tokenizer caches, first window)
    n_batches = qa_tok = ctx_tok = 0
    ex0, sm0, t0 = it.stats["pack/examples"], it.stats["tokenize/samples"], time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        batch = next(it)
        n_batches += 1
        qa_tok += int((batch["segment_ids"] > 0).sum())
        ctx_tok += int((batch["ctx_segment_ids"] > 0).sum())
    dt = time.perf_counter() - t0
    examples = it.stats["pack/examples"] - ex0
    samples = it.stats["tokenize/samples"] - sm0
    qas_per_row = qa_tok / max(1, n_batches * args.rows)
    fill_qa = qa_tok / (n_batches * args.rows * args.seq_len)
    fill_ctx = ctx_tok / (n_batches * args.rows * args.ctx_len)
    steps_per_s = n_batches / dt
    print(f"build: {len(src)} contexts in {build_s:.1f} s (tfds array_record, offline)")
    print(f"one CPU core, {dt:.1f} s: {examples / dt:,.0f} contexts/s = {samples / dt:,.0f} (context, QA) "
          f"examples/s, {steps_per_s * args.rows:,.1f} rows/s, "
          f"{qa_tok / dt:,.0f} QA tokens/s + {ctx_tok / dt:,.0f} context tokens/s "
          f"(row fill: QA {fill_qa:.0%}, context {fill_ctx:.0%}; {qas_per_row:.0f} QA tokens per row)")
    print(f"a training step here consumes {args.rows} rows = {args.rows * args.seq_len} QA + "
          f"{args.rows * args.ctx_len} context token slots; one core feeds {steps_per_s:,.1f} steps/s "
          f"({1000 / steps_per_s:.0f} ms per step)")
    # the released main run: 1 pack of 4096 QA / 4096 context tokens per device per micro-step, grad-accum 8
    ref_tokens = 8 * (4096 * fill_qa + 4096 * fill_ctx)
    tok_per_s = (qa_tok + ctx_tok) / dt
    print(f"reference D2L main step (per device: 8 micro-steps x 4096 QA + 4096 context slots, same fill) needs "
          f"~{ref_tokens:,.0f} tokens; one core supplies them in {ref_tokens / tok_per_s:.2f} s — compare with the "
          f"accelerator step time (pipeline is not the bottleneck if that is longer)")
    skipped = {k: v for k, v in it.stats.summary().items() if not k.startswith("pack/")}
    print("skipped/altered:", skipped)
    row = {"contexts_per_s": examples / dt, "examples_per_s": samples / dt, "rows_per_s": steps_per_s * args.rows,
           "qa_tokens_per_s": qa_tok / dt, "ctx_tokens_per_s": ctx_tok / dt, "fill_qa": fill_qa,
           "fill_ctx": fill_ctx, "steps_per_s": steps_per_s, "seconds": dt, "build_s": build_s}
    print(C.table([row], [("contexts_per_s", "contexts/s", ",.0f"),
                          ("examples_per_s", "(context, QA) examples/s", ",.0f"),
                          ("rows_per_s", "packed rows/s", ",.1f"), ("qa_tokens_per_s", "QA tokens/s", ",.0f"),
                          ("ctx_tokens_per_s", "context tokens/s", ",.0f"), ("fill_qa", "QA fill", ".0%"),
                          ("fill_ctx", "context fill", ".0%"), ("steps_per_s", f"steps/s ({args.rows} rows)", ",.1f")],
                  f"packed D2L input pipeline, one CPU core, seq_len {args.seq_len} / ctx_len {args.ctx_len}"))
    payload = {"rows": [row], "skipped": skipped, "reference_step_tokens": ref_tokens,
               "reference_step_supply_s": ref_tokens / tok_per_s}
    C.write_json("data_throughput", args.out, payload)
    return payload


if __name__ == "__main__":
    main()
