"""D2L training step, padded vs packed batches (``data.pack_docs``), on a SQuAD-like length distribution:
examples (documents) per second of each and the useful-token fraction of each layout, in one run.

    python bench/packing.py [--smoke] [--batch 8] [--pack-docs 4] [--chunk 512] [--query 256] [--accum 1]
                            [--steps 4] [--batches 2] [--base small] [--hyper small] [--out FILE]

The step is the trainer's (``train.make_train_step`` around ``D2LMethod.loss`` with the stage-1 objective: context
distillation against the frozen base model with the document in context, top-16, L1 0.1; NEFTune off, so the two
layouts' losses can be compared; AdamW), float32, ``chunk_group`` 1 (the presets' streaming), grad-accum ``--accum``.
Shapes: the stage-1 presets' padded rows scaled down for CPU — one chunk of ``--chunk`` tokens per document (stage
1: 4096), student rows of ``--query`` tokens (2048), teacher rows of chunk + query + 16 (the preset's ``teacher_len`` default) — on the bench's "small" llama base (hidden 256, 8
layers, vocab 32000) with the "small" hypernetwork (latent 256, 8 latents, 2 blocks), r 8 on down_proj.

Data (random token ids, realistic lengths; SQuAD v1.1-like, as the reference's squad_compact part of the mixture):
context words log-normal (median 115, σ 0.42: mean ≈ 125 words), clipped to 20..700 words, 1.3 tokens per word, plus
9 chat-template tokens; a document longer than a chunk is redrawn (the source would skip it). QA turn: 12 template
tokens + a 10..15-token question + a 3..5-token answer + end of turn; the response is the answer + end of turn.
``--batches`` different batches are timed in turn (packed shapes depend on the batch: each gets compiled in the
warm-up); the step time is the median over ``--steps`` rounds of all batches, alternating padded / packed.

Useful tokens: real tokens / row tokens, per side (context encoder, teacher, student) and overall (sum over the three
sides; the context side counts once although the Perceiver then sees it L times). A second table gives the same
fractions at the gemma2_2b stage-1 preset's own shapes (64 documents, chunk 4096, query 2048, pack_docs 8), token
counts only (no step is run at those sizes on CPU).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # XLA:CPU warns once per buffer over its 16 MiB heaps
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

TEMPLATE_CTX, TEMPLATE_QA = 9, 12


def squad_like(rng, chunk: int):
    """(context tokens, QA tokens, response tokens) of one SQuAD-like example (see the module docstring)."""
    import numpy as np
    while True:
        words = float(np.clip(rng.lognormal(np.log(115.0), 0.42), 20, 700))
        ctx = int(round(1.3 * words)) + TEMPLATE_CTX
        if ctx <= chunk:
            break
    q, a = int(rng.integers(10, 16)), int(rng.integers(3, 6))
    return ctx, TEMPLATE_QA + q + a + 1, a + 1


def make_examples(n, vocab, chunk, query, resp_budget, seed):
    import numpy as np

    from hyperlora_jax.methods.d2l_pack import random_example
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ctx, qa, resp = squad_like(rng, chunk)
        out.append(random_example(rng, vocab, [ctx], qa, resp, max_chunks=1, chunk_len=chunk, query_len=query,
                                  max_response=resp_budget, teacher_len=chunk + query + 16))
    return out


def useful(batch) -> dict:
    """Real / row tokens per side of a padded or packed batch."""
    import numpy as np
    if "ctx_tokens" in batch:
        ctx = (batch["ctx_segment_ids"] > 0).sum(), batch["ctx_segment_ids"].size
    else:
        ctx = batch["ctx_mask"].sum(), batch["ctx_mask"].size
    teacher = (batch["teacher_segment_ids"] > 0).sum(), batch["teacher_segment_ids"].size
    student = (batch["segment_ids"] > 0).sum(), batch["segment_ids"].size
    out = {f"useful_{k}": float(u) / float(t) for k, (u, t) in
           {"ctx": ctx, "teacher": teacher, "student": student}.items()}
    out["useful_all"] = float(ctx[0] + teacher[0] + student[0]) / float(ctx[1] + teacher[1] + student[1])
    out["row_tokens"] = int(ctx[1] + teacher[1] + student[1])
    out["shapes"] = " ".join(f"{k}{list(np.shape(batch[k]))}" for k in
                             (("ctx_tokens", "teacher_tokens", "tokens") if "ctx_tokens" in batch
                              else ("ctx_ids", "teacher_tokens", "tokens")))
    return out


def setup(a):
    import jax
    import jax.numpy as jnp
    import ml_collections

    from hyperlora_jax.methods.d2l import D2LMethod
    from hyperlora_jax.model import init_params as init_base
    from hyperlora_jax.optim import make_optimizer
    from hyperlora_jax.train import make_train_step, step_compiler_options

    bc = C.real_config(a.base) if a.base in C.REAL_MODELS else C.model_config(a.base)
    hc = C.hyper_config(bc, a.hyper, r=8)
    cfg = ml_collections.ConfigDict(dict(
        model=dict(chunk_group=1, remat_chunks=False, scaler_b_init=1.0), data=dict(max_chunks=1),
        loss=dict(kind="kd", top_k=16, l1_coef=0.1, neftune_alpha=0.0), remat="none", compute_dtype="float32",
        learning_rate=4e-5, warmup_steps=0, num_train_steps=1000, schedule="constant", weight_decay=0.01,
        max_grad_norm=1.0))
    base = init_base(bc, jax.random.PRNGKey(0))
    method = D2LMethod.without_data(cfg, bc, hc, base)
    hyper = method.init_trainable(jax.random.PRNGKey(1))
    tx = make_optimizer(cfg, method.decay_mask)
    state = {"step": jnp.zeros((), jnp.int32), "params": hyper, "opt_state": tx.init(hyper),
             "rng": jax.random.PRNGKey(2)}
    step = jax.jit(make_train_step(method, tx, a.accum), compiler_options=step_compiler_options())
    return bc, base, state, step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model and shapes (tests)")
    ap.add_argument("--batch", type=int, default=8, help="documents per step")
    ap.add_argument("--pack-docs", type=int, default=4, help="documents per packed row (data.pack_docs)")
    ap.add_argument("--chunk", type=int, default=512, help="padded context chunk (stage 1: 4096)")
    ap.add_argument("--query", type=int, default=256, help="padded student row (stage 1: 2048)")
    ap.add_argument("--accum", type=int, default=1, help="grad-accumulation micro-batches per step")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--base", default="small", help=f"bench base ({', '.join(C.BASES)}) or a real config "
                    f"({', '.join(C.REAL_MODELS)}; random weights)")
    ap.add_argument("--hyper", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.smoke:
        a.base, a.hyper, a.batch, a.pack_docs, a.chunk, a.query, a.steps, a.batches = (
            "tiny", "tiny", 8, 4, 384, 64, 1, 1)

    import jax
    import numpy as np

    from hyperlora_jax.data.iterators import stack
    from hyperlora_jax.methods.d2l_pack import example_lengths, pack, row_shapes

    bc, base, state, step = setup(a)
    padded, packed = [], []
    for i in range(a.batches):
        exs = make_examples(a.batch, bc.vocab_size, a.chunk, a.query, 8, a.seed + i)
        padded.append(jax.tree_util.tree_map(jax.numpy.asarray, stack(exs)))
        shapes = row_shapes([[example_lengths(e) for e in exs]], a.pack_docs)
        packed.append(jax.tree_util.tree_map(jax.numpy.asarray, pack(exs, a.pack_docs, shapes)))

    def run(batches):
        out = None
        for b in batches:
            out = step(state, base, b)[1]["loss"]
        return out

    t0 = time.perf_counter()
    losses = {"padded": [float(step(state, base, b)[1]["loss"]) for b in padded],
              "packed": [float(step(state, base, b)[1]["loss"]) for b in packed]}
    compile_s = time.perf_counter() - t0
    tp, tk = C.time_pair(lambda: run(padded), lambda: run(packed), repeats=a.steps)
    rows = []
    for name, t, bs in (("padded", tp, padded), ("packed", tk, packed)):
        u = [useful(jax.device_get(b)) for b in bs]
        row = {"layout": name, "step_s": t["steady_s"] / a.batches, "examples_per_s": a.batch * a.batches /
               t["steady_s"], "shapes": u[0]["shapes"]}
        for k in ("useful_ctx", "useful_teacher", "useful_student", "useful_all"):
            row[k] = float(np.mean([x[k] for x in u]))
        row["row_tokens"] = float(np.mean([x["row_tokens"] for x in u]))
        rows.append(row)
    ratio = rows[1]["examples_per_s"] / rows[0]["examples_per_s"]
    loss_diff = max(abs(x - y) for x, y in zip(losses["padded"], losses["packed"]))
    pct = lambda v: f"{100 * v:.0f}%"
    print(C.table(rows, [("layout", "layout", ""), ("examples_per_s", "examples/s", ".2f"),
                         ("step_s", "s/step", ".3f"), ("useful_ctx", "useful ctx", pct),
                         ("useful_teacher", "useful teacher", pct), ("useful_student", "useful student", pct),
                         ("useful_all", "useful all", pct), ("row_tokens", "row tokens/step", ".0f"),
                         ("shapes", "shapes (first batch)", "")],
                  title=f"D2L KD step, {a.batch} SQuAD-like documents/step, base {a.base}, chunk {a.chunk}, "
                        f"query {a.query}, pack_docs {a.pack_docs}"))
    print(f"\npacked / padded examples/s: {ratio:.2f}x; |loss padded - packed| max {loss_diff:.2e} "
          f"(same examples, float32); compile + first steps {compile_s:.1f} s")
    # the same data at the real stage-1 preset shapes (no step run: token counts only)
    stage1 = []
    for name, layout in (("padded", False), ("packed", True)):
        us = [useful(b) for b in stage1_batches(layout, a.seed)]
        stage1.append({"layout": name, **{k: float(np.mean([u[k] for u in us])) for k in
                                          ("useful_ctx", "useful_teacher", "useful_student", "useful_all",
                                           "row_tokens")}, "shapes": us[0]["shapes"]})
    print(C.table(stage1, [("layout", "layout", ""), ("useful_ctx", "useful ctx", pct),
                           ("useful_teacher", "useful teacher", pct), ("useful_student", "useful student", pct),
                           ("useful_all", "useful all", pct), ("row_tokens", "row tokens/step", ".0f"),
                           ("shapes", "shapes (first batch)", "")],
                  title=f"The same length distribution at the gemma2_2b stage-1 preset's shapes (64 documents/step, "
                        f"chunk {STAGE1['chunk']}, query {STAGE1['query']}, "
                        f"teacher {STAGE1['chunk'] + STAGE1['query'] + 16}, "
                        f"pack_docs {STAGE1['pack_docs']}): row tokens the step computes"))
    C.write_json("packing", a.out, {"rows": rows, "ratio": ratio, "loss_abs_diff": loss_diff,
                                    "stage1_shapes": stage1, "args": vars(a), "compile_s": compile_s})


STAGE1 = dict(batch=64, pack_docs=8, chunk=4096, query=2048, batches=4)


def stage1_batches(packed: bool, seed: int):
    """Host batches of the gemma2_2b preset's shapes (numpy; for token counts)."""
    from hyperlora_jax.data.iterators import stack
    from hyperlora_jax.methods.d2l_pack import example_lengths, pack, row_shapes
    out = []
    for i in range(STAGE1["batches"]):
        exs = make_examples(STAGE1["batch"], 1000, STAGE1["chunk"], STAGE1["query"], 8, seed + 100 + i)
        if packed:
            d = STAGE1["pack_docs"]
            out.append(pack(exs, d, row_shapes([[example_lengths(e) for e in exs]], d)))
        else:
            out.append(stack(exs))
    return out


if __name__ == "__main__":
    main()
