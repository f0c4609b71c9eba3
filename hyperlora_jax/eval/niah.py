"""NIAH accuracy by length bin: exact match and ROUGE-L (spec D2L.md section 13) for every document method.

Example sources:
  toy generator (default in the toy world): ``hyperlora_jax.toy.niah`` documents whose whole in-context sequence
      (chat template + document + question + answer) has exactly ``length`` tokens for each requested length
      (the training-time table's convention; lengths default to the config's ``eval.lengths``);
  JSONL files (``--niah_file``): the reference's records ``{"context", "prompt", "response"}``; the bin of a row is
      its context's token count under the base tokenizer, binned by ``--length_bins`` edges (or one bin "all").
Rows: {"suite": "niah", "dataset", "method", "length", "exact_match", "rouge_l", "n", "wall_s", ...}.
"""
from __future__ import annotations

from typing import Optional, Sequence

from hyperlora_jax.eval import records
from hyperlora_jax.eval.doc_eval import DocExample, score_by_length


def toy_examples(tok, lengths: Sequence[int], n: int, seed: int) -> list[DocExample]:
    from hyperlora_jax.toy.eval_niah import examples_for_length
    out = []
    for L in lengths:
        out += [DocExample(e.document, e.question, (e.answer,), int(L)) for e in examples_for_length(tok, L, n, seed)]
    return out


def file_examples(tok, path: str, n: Optional[int], seed: int, bins: Sequence[int] = ()) -> list[DocExample]:
    rows = records.read_jsonl(path, ("context", "prompt", "response"))
    out = []
    by_bin: dict = {}
    for r in rows:
        ans = records.answers_of(r, path, "response")
        L = len(tok(r["context"], add_special_tokens=False)["input_ids"])
        b = records.length_bin(L, sorted(bins)) if bins else "all"
        by_bin.setdefault(b, []).append(DocExample(str(r["context"]), str(r["prompt"]), tuple(ans), b))
    for b, exs in by_bin.items():
        out += records.sample(exs, n, seed)
    return out


def evaluate(system, examples: Sequence[DocExample], dataset: str, methods: Sequence[str], *, batch_size: int,
             max_new_tokens: int, cd, truncate_to: Optional[int] = None, warmup: bool = False) -> list[dict]:
    """Every method on each length bin separately, scored by exact match and ROUGE-L (``score_by_length``)."""
    return score_by_length(system, "niah", dataset, examples, methods, ("exact_match", "rouge_l"),
                           batch_size=batch_size, max_new_tokens=max_new_tokens, cd=cd, truncate_to=truncate_to,
                           warmup=warmup)
