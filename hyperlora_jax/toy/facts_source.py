"""Training source ``fictional_facts`` of the ``d2l`` method (registered in ``hyperlora_jax.data.sources``):
generated fictional-fact documents and questions (``hyperlora_jax.toy.fictional_facts``), no download.

The records have the text layout of ``d2l_qa`` and go through the same example builder (``TFDSExamples`` in
``methods/d2l_sources.py``): the reference's training chunking, one QA per visit, per-epoch shuffling, and for
``loss.kind == 'kd'`` the base model with the document in context as the teacher.

Config keys (``data.*``), besides the chunking / length keys of ``d2l_sources``:
  num_documents         records in the generated world (default 100000)
  facts_seed            the world's seed (default 0; independent of the training seed, which only shuffles)
  min_facts, max_facts  facts (= questions) per entity (default 3..7)
  min_entities, max_entities  entities (paragraphs) per document (default 1..1)
  closed_answers        only facts whose answers come from closed word lists (default False; a curriculum)
"""
from __future__ import annotations

from hyperlora_jax.data.sources import register_source
from hyperlora_jax.methods.d2l_data import D2LFormatter
from hyperlora_jax.methods.d2l_sources import TFDSExamples
from hyperlora_jax.toy.fictional_facts import FictionalFacts


class FactExamples(TFDSExamples):
    """``TFDSExamples`` over a generated ``FictionalFacts`` world instead of a prepared split."""

    def open_records(self, data_cfg, source_name: str):
        return FictionalFacts(int(data_cfg.get("num_documents", 100_000)), seed=int(data_cfg.get("facts_seed", 0)),
                              min_facts=int(data_cfg.get("min_facts", 3)), max_facts=int(data_cfg.get("max_facts", 7)),
                              min_entities=int(data_cfg.get("min_entities", 1)),
                              max_entities=int(data_cfg.get("max_entities", 1)),
                              closed_answers=bool(data_cfg.get("closed_answers", False)))


@register_source("d2l", "fictional_facts")
def fictional_facts(fmt: D2LFormatter, data_cfg, seed: int):
    """Generated fictional-fact documents (data.num_documents / facts_seed / min_facts / max_facts /
    min_entities / max_entities / closed_answers)."""
    return FactExamples(fmt, data_cfg, seed, "fictional_facts"), None
