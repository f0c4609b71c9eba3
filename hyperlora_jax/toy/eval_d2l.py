"""Toy NIAH evaluation of a D2L run: exact match by length for no context, document in context, and D2L.

Writes ``WORKDIR/eval/results.json`` (rows {"method", "length", "accuracy", "n"}) and prints a table, with the
adapter's bytes against the KV cache of the same document and internalization time against prefill time.
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from hyperlora_jax.toy.eval_niah import accuracy, chat_ids, examples_for_length


def kv_cache_bytes(cfg, tokens: int, bytes_per=4) -> int:
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * tokens * bytes_per


def adapter_bytes(adapter, row: int = 0, rank: int | None = None) -> int:
    """Bytes of one document's adapter at its own rank (float32)."""
    total = 0
    for m in adapter.modules:
        L, _, R, din = adapter.A[m].shape
        dout = adapter.B[m].shape[-1]
        total += L * (rank or R) * (din + dout) * 4
    return total


def internalize_docs(method, hyper_params, docs):
    from hyperlora_jax.d2l.context import prepare_documents
    from hyperlora_jax.d2l.internalize import internalize_batch
    batch = prepare_documents(method.tok, [d for d in docs], method.config.data.chunk_tokens, method.affixes)
    adapter = internalize_batch(hyper_params, method.hyper_cfg, method.base_params, method.base_cfg, batch,
                                layer_idx=method.layer_idx, dtype=method.dtype)
    return adapter, np.asarray(batch.n_ctx_chunks)


def evaluate_niah(method, hyper_params, workdir: str, lengths=None, n: int | None = None) -> dict:
    ec = method.config.eval
    lengths = list(lengths or ec.lengths)
    n = int(n or ec.n)
    cfg, params, tok = method.base_cfg, method.base_params, method.tok
    rows, perf = [], []
    for L in lengths:
        ex = examples_for_length(tok, L, n, ec.seed)
        rows.append({"method": "no_context", "length": L, "accuracy": accuracy(params, cfg, tok, ex, "no_context"),
                     "n": n})
        rows.append({"method": "in_context", "length": L, "accuracy": accuracy(params, cfg, tok, ex, "in_context"),
                     "n": n})
        adapters, n_chunks = [], []
        bs = int(ec.get("batch_size", 16))
        for s in range(0, n, bs):
            a, k = internalize_docs(method, hyper_params, [e.document for e in ex[s:s + bs]])
            adapters.append(a)
            n_chunks += k.tolist()
        from hyperlora_jax.lora import stack_adapters
        adapter = stack_adapters(adapters)
        rows.append({"method": "d2l", "length": L, "accuracy": accuracy(params, cfg, tok, ex, "no_context",
                                                                        adapter=adapter), "n": n})
        # cost of one document: internalization vs prefill, adapter vs KV cache
        doc = [ex[0].document]
        internalize_docs(method, hyper_params, doc)  # compile
        t0 = time.perf_counter()
        a, k = internalize_docs(method, hyper_params, doc)
        jax.block_until_ready(a.A)
        t_int = time.perf_counter() - t0
        from hyperlora_jax.generation import score
        ids = chat_ids(tok, ex[0].document + "\n\n" + ex[0].question)
        score(params, cfg, [ids[:-1]], [ids[-1:]])  # compile
        t0 = time.perf_counter()
        score(params, cfg, [ids[:-1]], [ids[-1:]])
        t_pre = time.perf_counter() - t0
        perf.append({"length": L, "chunks": int(k[0]), "adapter_bytes": adapter_bytes(a, rank=(int(k[0]) + 1) *
                                                                                       method.hyper_cfg.r),
                     "kv_cache_bytes": kv_cache_bytes(cfg, len(ids)), "internalize_s": t_int, "prefill_s": t_pre})
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(out_dir, "costs.json"), "w") as f:
        json.dump(perf, f, indent=1)
    print(format_table(rows, perf), flush=True)
    return {"rows": rows, "costs": perf}


def format_table(rows, perf) -> str:
    lengths = sorted({r["length"] for r in rows})
    methods = ["no_context", "in_context", "d2l"]
    acc = {(r["method"], r["length"]): r["accuracy"] for r in rows}
    lines = ["NIAH exact match by length (tokens of the whole in-context sequence)",
             "| method | " + " | ".join(str(L) for L in lengths) + " |",
             "|---" * (len(lengths) + 1) + "|"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(f"{100 * acc[(m, L)]:.0f}%" for L in lengths) + " |")
    lines += ["", "| length | chunks | adapter bytes | KV-cache bytes | internalize s | prefill s |",
              "|---|---|---|---|---|---|"]
    for p in perf:
        lines.append(f"| {p['length']} | {p['chunks']} | {p['adapter_bytes']:,} | {p['kv_cache_bytes']:,} | "
                     f"{p['internalize_s']:.3f} | {p['prefill_s']:.3f} |")
    return "\n".join(lines)
