"""Closed-book QA with D2L adapters and the same baselines (spec D2L.md section 13): SQuAD / DROP / ROPES-style
token F1 (max over gold answers) and exact match, plus ROUGE-L, on LongBench-style sets too.

Input: local JSONL files (``--qa_file``, repeatable), one row per question:
  {"context": str, "question": str, "answers": str | [str, ...], "cd_queries"?: [str, ...]}
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
    rows = records.sample(records.read_jsonl(path, ("context", "question", "answers")), n, seed)
    out = []
    for r in rows:
        cdq = r.get("cd_queries")
        if cdq is not None and (not isinstance(cdq, list) or not all(isinstance(q, str) for q in cdq)):
            raise records.EvalDataError(f"{path}:{r['_line']}: 'cd_queries' must be a list of strings")
        out.append(DocExample(str(r["context"]), template.format(question=str(r["question"])),
                              tuple(records.answers_of(r, path)), None,
                              tuple(template.format(question=q) for q in cdq) if cdq else None))
    return out


def evaluate(system, examples: Sequence[DocExample], dataset: str, methods: Sequence[str], *, batch_size: int,
             max_new_tokens: int, cd, bins: Sequence[int] = ()) -> list[dict]:
    runs = run_methods(system, examples, methods, batch_size=batch_size, max_new_tokens=max_new_tokens, cd=cd)
    tok = system.tok
    lengths = [len(tok(e.document, add_special_tokens=False)["input_ids"]) for e in examples]
    groups = {"all": list(range(len(examples)))}
    if bins:
        for i, L in enumerate(lengths):
            groups.setdefault(records.length_bin(L, sorted(bins)), []).append(i)
    return score(system, "qa", dataset, examples, runs, groups, ("f1", "exact_match", "rouge_l"))
