"""Answering document questions with every method of the D2L comparison, in one harness (NIAH and QA use it).

Methods (``DOC_METHODS``):
  no_context            the question alone, plain base model
  in_context            chat(document + "\\n\\n" + question): the full document, even past the native window
  in_context_truncated  the same user turn middle-truncated (LongBench) so prompt + answer fit ``truncate_to``
                        tokens (default the native window ``max_position_embeddings``); identical to in_context
                        when the document fits
  d2l                   the question alone + the D2L adapter of its document, internalised on the fly in batches
  d2l_wrong_doc         control: the question alone + the D2L adapter of ANOTHER example's document (the next one
                        of the bin, cyclically): what the adapter alone does to answers (format, guessing from
                        closed answer lists) without the right facts; d2l minus this is what the document carried
  cd                    the question alone + a LoRA distilled per document (eval/cd.py); its ``adapt_s`` is the
                        distillation wall time (teacher responses + top-k + training) D2L's one forward replaces;
                        ``cd_first_loss`` (the LoRA starts at B = 0, so this is the no-context student's loss) and
                        ``cd_final_loss`` show what the distillation bought on its own documents
Every method answers greedily with ``max_new_tokens``; ``wall_s`` covers producing adapters and answering (JIT
compilation included unless ``warmup``).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import jax
import numpy as np

from hyperlora_jax.eval import answering as ans
from hyperlora_jax.eval import metrics
from hyperlora_jax.eval.cd import CDOptions, distill
from hyperlora_jax.eval.systems import RANDOM_INIT
from hyperlora_jax.lora import stack_adapters

DOC_METHODS = ("no_context", "in_context", "in_context_truncated", "d2l", "d2l_wrong_doc", "cd")


@dataclasses.dataclass(frozen=True)
class DocExample:
    """One question about one document. ``prompt``: the question turn as asked (template applied);
    ``answers``: gold answers; ``length``: the example's length bin (None where not binned);
    ``cd_queries``: distillation queries (None → the prompt itself, i.e. oracle CD)."""

    document: str
    prompt: str
    answers: tuple
    length: Optional[object] = None
    cd_queries: Optional[tuple] = None


@dataclasses.dataclass
class MethodRun:
    predictions: list
    wall_s: float
    adapt_s: Optional[float] = None
    extra: dict = dataclasses.field(default_factory=dict)
    per_example: dict = dataclasses.field(default_factory=dict)  # {field: [value per example]}, averaged per bin


def check_methods(methods: Sequence[str]) -> list[str]:
    bad = [m for m in methods if m not in DOC_METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {', '.join(bad)} for document suites (known: {', '.join(DOC_METHODS)})")
    return list(methods)


def run_methods(system, examples: Sequence[DocExample], methods: Sequence[str], *, batch_size: int,
                max_new_tokens: int, cd: CDOptions, truncate_to: Optional[int] = None, warmup: bool = False) -> dict:
    """{method: MethodRun} for ``examples`` (``system``: eval.systems.D2LSystem). Every batch has ``batch_size`` rows
    (the last one padded), so one compiled program per method and shape serves all of them; ``warmup`` first runs
    each method untimed on the first batch, so that ``wall_s`` / ``adapt_s`` leave JIT compilation out."""
    out = {}
    for m in check_methods(methods):
        if warmup:
            _run_one(system, m, list(examples[:batch_size]), batch_size, max_new_tokens, cd, truncate_to, {})
        used = {}
        t0 = time.perf_counter()
        out[m] = _run_one(system, m, examples, batch_size, max_new_tokens, cd, truncate_to, used)
        out[m].wall_s = time.perf_counter() - t0
        out[m].extra["timed_after_warmup"] = bool(warmup)
        out[m].per_example["answer_nll"] = answer_nll(system, examples, used["prompts"], used["adapter"], batch_size)
    return out


def answer_nll(system, examples: Sequence[DocExample], prompts: Sequence[Sequence[int]], adapter,
               batch_size: int) -> list[float]:
    """Per example: the mean negative log-likelihood (nats / token) of its first gold answer as the assistant's
    reply, teacher-forced after ``prompts[i]`` (token ids, template applied) with ``adapter`` (one row per example,
    or None). A graded view of the same comparison: lower = the method puts more mass on the right answer, even
    where greedy decoding says something else."""
    from hyperlora_jax.generation import score
    tok = system.tok
    golds = [tok(str(e.answers[0]), add_special_tokens=False)["input_ids"] or [tok.eos_token_id] for e in examples]
    out = []
    for idx in ans.padded_batches(len(examples), batch_size):  # fixed batch shape
        keep = len(dict.fromkeys(idx))
        lp = score(system.params, system.cfg, [prompts[i] for i in idx], [golds[i] for i in idx],
                   adapter=None if adapter is None else adapter.take(idx), dtype=system.d2l.dtype)
        out += [float(-np.mean(x)) for x in lp[:keep]]
    return out


def _run_one(system, m: str, examples: Sequence[DocExample], batch_size: int, max_new_tokens: int, cd: CDOptions,
             truncate_to: Optional[int], used: dict) -> MethodRun:
    """One method's answers; ``used`` receives the prompts and adapter it answered with (for ``answer_nll``)."""
    tok, params, cfg = system.tok, system.params, system.cfg
    dtype = system.d2l.dtype
    t0 = time.perf_counter()

    def gen(prompts, adapter=None):
        used.update(prompts=prompts, adapter=adapter)
        return ans.generate_texts(params, cfg, tok, prompts, adapter=adapter, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, dtype=dtype)
    q_prompts = lambda: [ans.chat_ids(tok, e.prompt) for e in examples]
    if m == "no_context":
        return MethodRun(gen(q_prompts()), 0.0)
    if m == "in_context":
        return MethodRun(gen([ans.chat_ids(tok, ans.in_context(e.document, e.prompt)) for e in examples]), 0.0)
    if m == "in_context_truncated":
        W = int(truncate_to or cfg.max_position_embeddings)
        contents = [ans.truncated_in_context(tok, e.document, e.prompt, W, max_new_tokens) for e in examples]
        cut = [float(c != ans.in_context(e.document, e.prompt)) for c, e in zip(contents, examples)]
        return MethodRun(gen([ans.chat_ids(tok, c) for c in contents]), 0.0, extra={"window": W},
                         per_example={"truncated_fraction": cut})
    if m in ("d2l", "d2l_wrong_doc"):
        docs = [e.document for e in examples]
        differs = [1.0] * len(docs)
        if m == "d2l_wrong_doc":  # example i gets the adapter of example i + 1's document (cyclically)
            docs = docs[1:] + docs[:1]
            differs = [float(d != e.document) for d, e in zip(docs, examples)]
        adapters, chunks = [], []
        for idx in ans.padded_batches(len(examples), batch_size):  # fixed shapes, as generation
            keep = len(dict.fromkeys(idx))  # distinct examples of this batch (the rest repeat the last one)
            a = system.d2l.make_adapter([docs[i] for i in idx])
            adapters.append(a.take(range(keep)) if keep < len(idx) else a)
            chunks += np.asarray(system.d2l.last_batch.n_ctx_chunks).tolist()[:keep]
        adapter = stack_adapters(adapters) if len(adapters) > 1 else adapters[0]
        jax.block_until_ready(adapter.A)
        t_ad = time.perf_counter() - t0
        per = {"mean_chunks": [float(c) for c in chunks]}
        if m == "d2l_wrong_doc":
            per["other_doc_fraction"] = differs
        return MethodRun(gen(q_prompts(), adapter), 0.0, t_ad, {"hypernet": system.source}, per)
    assert m == "cd", m
    adapters, stats = [], []
    for idx in ans.padded_batches(len(examples), batch_size):  # fixed shapes: one compiled train step
        part = [examples[i] for i in idx]
        qs = [list(e.cd_queries) if e.cd_queries else [e.prompt] for e in part]
        a, st = distill(params, cfg, tok, [e.document for e in part], qs, cd, batch_size=batch_size, dtype=dtype)
        keep = len(dict.fromkeys(idx))
        adapters.append(a.take(range(keep)))
        stats.append(st)
    adapter = stack_adapters(adapters) if len(adapters) > 1 else adapters[0]
    jax.block_until_ready(adapter.A)
    t_ad = time.perf_counter() - t0
    oracle = not any(e.cd_queries for e in examples)
    return MethodRun(gen(q_prompts(), adapter), 0.0, t_ad, {
        "cd_steps": cd.steps, "cd_lr": cd.lr,
        "cd_first_loss": float(np.mean([s["cd_first_loss"] for s in stats])),
        "cd_final_loss": float(np.mean([s["cd_final_loss"] for s in stats])),
        "cd_queries": "test question (oracle)" if oracle else "data cd_queries",
        "adapt_s_per_doc": t_ad / len(examples)})


def method_label(system, m: str) -> str:
    """Row label: the D2L row carries the hypernetwork's provenance in its name when it is untrained."""
    if m == "d2l_wrong_doc":
        return system.method_name.replace("d2l", m, 1)  # "d2l_wrong_doc" / "d2l_wrong_doc (random init)"
    return system.method_name if m == "d2l" else m


METRIC_FNS = {"f1": metrics.token_f1, "exact_match": metrics.exact_match, "rouge_l": metrics.rouge_l,
              "contains": metrics.contains}


def score(system, suite: str, dataset: str, examples: Sequence[DocExample], runs: dict, groups: dict,
          metric_names: Sequence[str]) -> list[dict]:
    """Result rows: one per (method, group); ``groups`` maps a length-bin label to example indices. Times are
    split over groups in proportion to their examples."""
    rows = []
    for m, run in runs.items():
        for b, idx in groups.items():
            preds = [run.predictions[i] for i in idx]
            golds = [examples[i].answers for i in idx]
            frac = len(idx) / len(examples)
            row = {"suite": suite, "dataset": dataset, "method": method_label(system, m), "length": b}
            for k in metric_names:
                row[k] = metrics.mean(METRIC_FNS[k](p, g) for p, g in zip(preds, golds))
            row.update({"n": len(idx), "wall_s": run.wall_s * frac})
            if run.adapt_s is not None:
                row["adapt_s"] = run.adapt_s * frac
            row.update(run.extra)
            row.update({k: metrics.mean(v[i] for i in idx) for k, v in run.per_example.items()})
            if m in ("d2l", "d2l_wrong_doc") and system.source == RANDOM_INIT:
                row["note"] = "d2l (random init): the hypernetwork is NOT trained (no --checkpoint given)"
            rows.append(row)
    return rows


def score_by_length(system, suite: str, dataset: str, examples: Sequence[DocExample], methods: Sequence[str],
                    metric_names: Sequence[str], *, batch_size: int, max_new_tokens: int, cd: CDOptions,
                    truncate_to: Optional[int] = None, warmup: bool = False, bin_fields=None) -> list[dict]:
    """Runs every method on each length bin (``DocExample.length``) separately, so ``wall_s`` / ``adapt_s`` are
    that bin's own cost, and scores it; ``bin_fields(examples) -> dict`` adds fields to every row of a bin. Rows
    ordered by method, then bin (bins in first-seen order)."""
    groups: dict = {}
    for e in examples:
        groups.setdefault(e.length, []).append(e)
    rows = []
    for b, exs in groups.items():
        runs = run_methods(system, exs, methods, batch_size=batch_size, max_new_tokens=max_new_tokens, cd=cd,
                           truncate_to=truncate_to, warmup=warmup)
        extra = bin_fields(exs) if bin_fields else {}
        for r in score(system, suite, dataset, exs, runs, {b: list(range(len(exs)))}, metric_names):
            rows.append({**r, **extra})
    order = {m: k for k, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    return sorted(rows, key=lambda r: order[r["method"]])  # stable: bins keep their order
