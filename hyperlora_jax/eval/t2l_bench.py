"""T2L benchmark prompts (spec T2L.md section 9): adapters generated on the fly from task descriptions.

Input: local JSONL files (``--bench_file``, repeatable; dataset = file name), one row per question:
  {"description": str | [str, ...], "prompt": str, "answer": str | int | [str, ...],
   "choices"?: [str, ...], "labels"?: [str, ...] (default a, b, c, ...),
   "answer_type"?: "number" | "yes_no" | "text", "prefill"?: str}
A list of descriptions evaluates the question once per description (the references generate one LoRA for each of
a task's held-out descriptions and average the scores, spec T2L.md 9.3); ``n`` counts questions before that.
``prefill`` is text the assistant turn starts with, after the chat template's generation prompt (the references'
"Let's think step by step." for GSM8K, "Answer:" with ICL); it is part of the prompt for every method.
Multiple choice (rows with ``choices``; ``answer`` = index, choice text or label):
  loglik    argmax over choices of the summed log-probability of the choice tokens after the prompt
            (``generation.score``); ``accuracy_norm`` uses the per-token mean instead of the sum
  generate  greedy answer, the reference's choice extraction (``metrics.extract_choice``) against the label
Free-form rows: greedy answer; ``answer_type: "number"`` → the last number must equal the answer (GSM8K);
``"yes_no"`` → the first yes/no/true/false word must agree with the answer (BoolQ); otherwise SQuAD-normalised exact
match against any gold answer.
Methods: ``base`` (no adapter), ``description_in_prompt`` (description + "\\n\\n" + prompt, the references' baseline)
and ``t2l`` (one adapter per distinct description, generated in batches; ``adapt_s`` is their generation time).
Prompts are chat-templated user turns (with an empty system turn when the config's ``data.system_turn``).
Rows: {"suite": "t2l_bench", "dataset", "method", "length": null, "accuracy", ["accuracy_norm"], "n" (question ×
description pairs), "questions", "wall_s", ...}.
"""
from __future__ import annotations

import time
from typing import Sequence

import jax
import numpy as np

from hyperlora_jax.eval import answering as ans
from hyperlora_jax.eval import metrics, records
from hyperlora_jax.eval.systems import RANDOM_INIT
from hyperlora_jax.lora import stack_adapters

T2L_METHODS = ("base", "description_in_prompt", "t2l")
MC_MODES = ("loglik", "generate")
ANSWER_TYPES = ("text", "number", "yes_no")


def load_rows(path: str, n, seed: int) -> list[dict]:
    """Validated rows: adds ``_target`` (choice index) for multiple-choice rows and ``_answers`` for free-form."""
    rows = records.sample(records.read_jsonl(path, ("description", "prompt", "answer")), n, seed)
    for q, r in enumerate(rows):
        where = f"{path}:{r['_line']}"
        d = r["description"]
        if not (isinstance(d, str) and d.strip()) and not (isinstance(d, list) and d and
                                                           all(isinstance(x, str) and x.strip() for x in d)):
            raise records.EvalDataError(f"{where}: 'description' must be a non-empty string or a non-empty list of "
                                        "them")
        if not isinstance(r.get("prompt"), str):
            raise records.EvalDataError(f"{where}: 'prompt' must be a string")
        if not isinstance(r.get("prefill", ""), str):
            raise records.EvalDataError(f"{where}: 'prefill' must be a string")
        if r.get("answer_type", "text") not in ANSWER_TYPES:
            raise records.EvalDataError(f"{where}: unknown answer_type {r['answer_type']!r} (known: "
                                        f"{', '.join(ANSWER_TYPES)})")
        r["_question"] = q
        ch = r.get("choices")
        if ch is None:
            r["_answers"] = records.answers_of(r, path, "answer")
            if r.get("answer_type") == "yes_no":
                bad = [a for a in r["_answers"] if metrics.extract_yes_no(a) is None]
                if bad:
                    raise records.EvalDataError(f"{where}: yes_no answer {bad[0]!r} is not yes/no/true/false")
            continue
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c for c in ch):
            raise records.EvalDataError(f"{where}: 'choices' must be a list of at least two non-empty strings")
        labels = r.get("labels") or list(metrics.CHOICE_LABELS[:len(ch)])
        if len(labels) != len(ch):
            raise records.EvalDataError(f"{where}: {len(labels)} labels for {len(ch)} choices")
        r["labels"] = [str(x).lower() for x in labels]
        a = r["answer"]
        if isinstance(a, int) and not isinstance(a, bool) and 0 <= a < len(ch):
            r["_target"] = a
        elif isinstance(a, str) and a in ch:
            r["_target"] = ch.index(a)
        elif isinstance(a, str) and a.strip().lower() in r["labels"]:
            r["_target"] = r["labels"].index(a.strip().lower())
        else:
            raise records.EvalDataError(f"{where}: answer {a!r} is neither a choice index, a choice nor a label")
    out = []
    for r in rows:  # one row per (question, description)
        for d in ([r["description"]] if isinstance(r["description"], str) else r["description"]):
            out.append(dict(r, description=d))
    return out


def _content(row: dict, method: str) -> str:
    return f"{row['description']}\n\n{row['prompt']}" if method == "description_in_prompt" else row["prompt"]


def prompt_ids(system, row: dict, method: str) -> list[int]:
    """The chat-templated user turn + generation prompt, then the row's assistant prefill (if any)."""
    ids = ans.chat_ids(system.tok, _content(row, method), system.system_turn)
    if row.get("prefill"):
        ids += [int(t) for t in system.tok(row["prefill"], add_special_tokens=False)["input_ids"]]
    return ids


def _loglik(system, prompts, rows, adapter, desc_idx, batch_size) -> tuple[list, list]:
    """(pred by summed log-prob, pred by mean log-prob) per multiple-choice row."""
    from hyperlora_jax.generation import score

    pairs = [(i, j) for i, r in enumerate(rows) for j in range(len(r["choices"]))]
    conts = [[int(t) for t in system.tok(rows[i]["choices"][j], add_special_tokens=False)["input_ids"]]
             for i, j in pairs]
    for (i, j), c in zip(pairs, conts):
        if not c:
            raise records.EvalDataError(f"choice {j} of row {rows[i]['_line']} tokenizes to nothing")
    sums, means = {}, {}
    for batch in ans.padded_batches(len(pairs), batch_size):
        part = [pairs[k] for k in batch]
        ad = None if adapter is None else adapter.take([desc_idx[i] for i, _ in part])
        lps = score(system.base_params, system.base_cfg, [prompts[i] for i, _ in part], [conts[k] for k in batch],
                    adapter=ad, dtype=system.dtype)
        for (i, j), lp in zip(part, lps):
            sums[(i, j)], means[(i, j)] = float(lp.sum()), float(lp.mean())
    best = lambda d, i: int(np.argmax([d[(i, j)] for j in range(len(rows[i]["choices"]))]))
    return [best(sums, i) for i in range(len(rows))], [best(means, i) for i in range(len(rows))]


def evaluate(system, rows: Sequence[dict], dataset: str, methods: Sequence[str], *, batch_size: int,
             max_new_tokens: int, mc_mode: str = "loglik") -> list[dict]:
    """Result rows, one per method (``system``: eval.systems.T2LSystem)."""
    bad = [m for m in methods if m not in T2L_METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {', '.join(bad)} for t2l_bench (known: {', '.join(T2L_METHODS)})")
    if mc_mode not in MC_MODES:
        raise ValueError(f"unknown multiple-choice mode {mc_mode!r} (known: {', '.join(MC_MODES)})")
    descs = list(dict.fromkeys(r["description"] for r in rows))
    desc_idx = [descs.index(r["description"]) for r in rows]
    mc = [i for i, r in enumerate(rows) if "choices" in r]
    ff = [i for i, r in enumerate(rows) if "choices" not in r]
    out = []
    for m in methods:
        t0 = time.perf_counter()
        adapter, adapt_s = None, None
        if m == "t2l":
            parts = [system.adapters(descs[s:s + batch_size]) for s in range(0, len(descs), batch_size)]
            adapter = stack_adapters(parts) if len(parts) > 1 else parts[0]
            jax.block_until_ready(adapter.A)
            adapt_s = time.perf_counter() - t0
        prompts = [prompt_ids(system, r, m) for r in rows]
        correct = np.zeros(len(rows))
        norm = None
        if mc and mc_mode == "loglik":
            p_sum, p_mean = _loglik(system, [prompts[i] for i in mc], [rows[i] for i in mc], adapter,
                                    [desc_idx[i] for i in mc], batch_size)
            norm = correct.copy()
            for k, i in enumerate(mc):
                correct[i] = float(p_sum[k] == rows[i]["_target"])
                norm[i] = float(p_mean[k] == rows[i]["_target"])
        gen_idx = ff + (mc if mc_mode == "generate" else [])
        if gen_idx:
            texts = ans.generate_texts(system.base_params, system.base_cfg, system.tok, [prompts[i] for i in gen_idx],
                                       adapter=None if adapter is None else adapter.take([desc_idx[i] for i in gen_idx]),
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, dtype=system.dtype)
            for i, t in zip(gen_idx, texts):
                r = rows[i]
                if "choices" in r:
                    correct[i] = float(metrics.extract_choice(t, r["labels"]) == r["labels"][r["_target"]])
                elif r.get("answer_type") == "number":
                    correct[i] = max(metrics.number_match(t, a) for a in r["_answers"])
                elif r.get("answer_type") == "yes_no":
                    got = metrics.extract_yes_no(t)
                    correct[i] = float(got is not None and any(got == metrics.extract_yes_no(a)
                                                               for a in r["_answers"]))
                else:
                    correct[i] = metrics.exact_match(t, r["_answers"])
                if norm is not None and "choices" not in r:
                    norm[i] = correct[i]
        row = {"suite": "t2l_bench", "dataset": dataset, "method": system.method_name if m == "t2l" else m,
               "length": None, "accuracy": float(correct.mean()), "n": len(rows),
               "questions": len({r["_question"] for r in rows}),
               "wall_s": time.perf_counter() - t0, "mc_mode": mc_mode if mc else None}
        if norm is not None:
            row["accuracy_norm"] = float(norm.mean())
        if adapt_s is not None:
            row.update({"adapt_s": adapt_s, "adapters": len(descs), "scale": system.scale, "hypernet": system.source})
            if system.source == RANDOM_INIT:
                row["note"] = "t2l (random init): the hypernetwork is NOT trained (no --checkpoint given)"
        out.append(row)
    return out
