"""Fictional-fact QA by document length: questions whose answers only the document holds, at growing lengths.

Documents are built from a ``FictionalFacts`` world (``hyperlora_jax.toy.fictional_facts``) that training does not
use: world seed ``WORLD_SEED_OFFSET + seed`` (training worlds use ``data.facts_seed``, 0 by default). For each
length ``L`` (document tokens under the base tokenizer) and example ``j``, entity paragraphs are drawn from
``rng([seed, L, j])`` and joined by blank lines while the document stays within ``L`` tokens (at least one entity);
the question asks about one fact of one of its entities, bare (the question turn of ``data.source
fictional_facts`` training). Scores: SQuAD exact match and token F1, and ``contains`` (the normalised gold answer
appears in the normalised output: an instruct model may answer in a sentence).
Rows: {"suite": "facts", "dataset": "fictional_facts", "method", "length", "exact_match", "f1", "contains", "n",
"doc_tokens" (mean), "wall_s", ...}.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from hyperlora_jax.eval.doc_eval import DocExample, score_by_length

WORLD_SEED_OFFSET = 7919
METRICS = ("exact_match", "f1", "contains")


def _n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def facts_examples(tok, lengths: Sequence[int], n: int, seed: int, max_entities: int = 64) -> list[DocExample]:
    """``n`` examples per length; ``DocExample.length`` is the requested length ``L`` (the document has at most
    ``L`` tokens, or one entity when a single paragraph is longer)."""
    from hyperlora_jax.toy.fictional_facts import FictionalFacts

    world = FictionalFacts(1, seed=WORLD_SEED_OFFSET + int(seed))
    out = []
    for L in lengths:
        if int(L) < 1:
            raise ValueError(f"facts: lengths must be positive token counts, got {L}")
        for j in range(int(n)):
            rng = np.random.default_rng([int(seed), int(L), j, 13])
            paras = [world.entity(rng)]
            while len(paras) < max_entities:
                nxt = world.entity(rng)
                if _n_tokens(tok, "\n\n".join(p["context"] for p in paras + [nxt])) > int(L):
                    break
                paras.append(nxt)
            which = paras[int(rng.integers(len(paras)))]
            q = int(rng.integers(len(which["prompts"])))
            out.append(DocExample("\n\n".join(p["context"] for p in paras), which["prompts"][q],
                                  (which["responses"][q],), int(L)))
    return out


def evaluate(system, examples: Sequence[DocExample], methods: Sequence[str], *, batch_size: int,
             max_new_tokens: int, cd, truncate_to: Optional[int] = None, warmup: bool = False) -> list[dict]:
    """Every method on each length separately (``score_by_length``), each row with the mean document token count
    ``doc_tokens`` of its length."""
    def doc_tokens(exs):
        return {"doc_tokens": float(np.mean([_n_tokens(system.tok, e.document) for e in exs]))}
    return score_by_length(system, "facts", "fictional_facts", examples, methods, METRICS, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, cd=cd, truncate_to=truncate_to, warmup=warmup,
                           bin_fields=doc_tokens)
