"""Internalize one paragraph with a trained D2L export and ask about it: base model alone, base + the document's
adapter (the document is NOT in the prompt), and the document in context, in one process.

    python bench/smollm2_demo.py --d2l EXPORT_DIR [--model BASE_DIR] [--document FILE] [--question Q ...]
"""
from __future__ import annotations

import argparse
import time

DOCUMENT = ("The Quorvath is a merchant ship. She was launched in 1847. Her captain is Brelna Tossik. "
            "Her home port is Zhaimond. She carries walnut oil. Her hull is painted saffron.")
QUESTIONS = ("Who is the captain of the Quorvath?", "What is the home port of the Quorvath?",
             "In which year was the Quorvath launched?", "What cargo does the Quorvath carry?",
             "What colour is the hull of the Quorvath?")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d2l", required=True, help="`export` output directory of a D2L run")
    p.add_argument("--model", default=None, help="base model directory (default: the one the export records)")
    p.add_argument("--document", default=None, help="text file (default: a built-in fictional paragraph)")
    p.add_argument("--question", action="append", default=None)
    p.add_argument("--max-new-tokens", type=int, default=24)
    a = p.parse_args()
    from hyperlora_jax.d2l.api import DocToLoRA
    from hyperlora_jax.toy.eval_d2l import adapter_bytes

    doc = open(a.document).read() if a.document else DOCUMENT
    qs = a.question or list(QUESTIONS)
    d2l = DocToLoRA.from_pretrained(a.d2l, a.model)
    base = d2l.generate(qs, max_new_tokens=a.max_new_tokens)
    in_ctx = d2l.generate([f"{doc}\n\n{q}" for q in qs], max_new_tokens=a.max_new_tokens)
    t0 = time.perf_counter()
    adapter = d2l.internalize(doc)
    adapter.A[next(iter(adapter.A))].block_until_ready()
    t_int = time.perf_counter() - t0
    with_adapter = d2l.generate(qs, max_new_tokens=a.max_new_tokens)
    n_tok = len(d2l.tokenizer(doc, add_special_tokens=False)["input_ids"])
    print(f"document: {n_tok} tokens, {int(d2l.last_batch.n_ctx_chunks[0])} chunk(s); adapter "
          f"{adapter_bytes(adapter) / 1e6:.2f} MB (float32); internalize {t_int:.2f} s (incl. compile)")
    for q, b, c, d in zip(qs, base, in_ctx, with_adapter):
        print(f"Q: {q}\n  base alone:        {b.strip()!r}\n  document in prompt: {c.strip()!r}\n"
              f"  D2L adapter:       {d.strip()!r}")


if __name__ == "__main__":
    main()
