"""Closed-book QA with D2L adapters and the same baselines (spec D2L.md section 13): SQuAD / DROP / ROPES-style
token F1 (max over gold answers) and exact match, plus ROUGE-L, on LongBench-style sets too.

Input: local JSONL files (``--qa_file``, repeatable), one row per question:
  {"context": str, "question": str, "answers": str | [str, ...], "cd_queries"?: [str, ...]}
with the usual dumps accepted as they are: LongBench's ``input`` for the question, SQuAD / ROPES ``answers``
objects ``{"text": [...]}`` and DROP-style ``{"spans": [...]}`` (DROP's passage / ROPES' background + situation go
into ``context`` when exporting).
The question turn is ``template.format(question=...)``: by default the reference's closed-QA instruction
(``QA_TEMPLATE``); the toy world asks the bare question. ``n`` rows are sampled per file (seed), as the reference's
``max_test_samples_per_ds``; ``--length_bins`` adds per-bin rows by context tokens besides the "all" row.
Rows: {"suite": "qa", "dataset", "method", "length", "f1", "exact_match", "rouge_l", "n", "wall_s", ...}.
"""
from __future__ import annotations

from typing import Optional, Sequence

from hyperlora_jax.eval import records
from hyperlora_jax.eval.doc_eval import DocExample, run_methods, score

QA_TEMPLATE = ("Answer the following question. Output only the answer and do not output any other words.\n\n"
               "Question: {question}")


def file_examples(path: str, n: Optional[int], seed: int, template: str = QA_TEMPLATE) -> list[DocExample]:
    if "{question}" not in template:
        raise ValueError(f"the QA template must contain {{question}}, got {template!r}")
    rows = records.sample(records.read_jsonl(path, ("context", "answers")), n, seed)
    out = []
    for r in rows:
        if "question" not in r:  # LongBench names the question "input"
            if "input" not in r:
                raise records.EvalDataError(f"{path}:{r['_line']}: missing field question (or LongBench's input)")
            r["question"] = r["input"]
        cdq = r.get("cd_queries")
        if cdq is not None and (not isinstance(cdq, list) or not all(isinstance(q, str) for q in cdq)):
            raise records.EvalDataError(f"{path}:{r['_line']}: 'cd_queries' must be a list of strings")
        out.append(DocExample(str(r["context"]), template.format(question=str(r["question"])),
                              tuple(records.answers_of(r, path)), None,
                              tuple(template.format(question=q) for q in cdq) if cdq else None))
    return out


def evaluate(system, examples: Sequence[DocExample], dataset: str, methods: Sequence[str], *, batch_size: int,
             max_new_tokens: int, cd, bins: Sequence[int] = (), truncate_to: Optional[int] = None,
             warmup: bool = False) -> list[dict]:
    """One run of every method over all examples; rows "all" and, with ``bins``, per context-length bin (times of a
    bin row are the run's times in proportion to its examples)."""
    runs = run_methods(system, examples, methods, batch_size=batch_size, max_new_tokens=max_new_tokens, cd=cd,
                       truncate_to=truncate_to, warmup=warmup)
    tok = system.tok
    lengths = [len(tok(e.document, add_special_tokens=False)["input_ids"]) for e in examples]
    groups = {"all": list(range(len(examples)))}
    if bins:
        for i, L in enumerate(lengths):
            groups.setdefault(records.length_bin(L, sorted(bins)), []).append(i)
    return score(system, "qa", dataset, examples, runs, groups, ("f1", "exact_match", "rouge_l"))
