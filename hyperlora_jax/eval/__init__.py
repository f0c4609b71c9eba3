"""The evaluation harness behind ``python -m hyperlora_jax.cli.evaluate`` (small files, one job each):

  metrics.py    exact match, SQuAD token F1, ROUGE-L (LCS F, Porter stemming), the references' answer extraction
  records.py    local JSONL reading, sampling, length bins; results JSON + Markdown tables
  systems.py    config + checkpoint (training workdir / converted D2L / converted T2L / random init) → loaded system
  answering.py  chat prompts, middle truncation, batched greedy answering with per-example adapters
  cd.py         per-document context distillation baseline (teacher = base with the document in context)
  doc_eval.py   the document methods side by side (no context, in context full / truncated, D2L, CD)
  niah.py       NIAH by length bin (toy generator or reference JSONL)
  qa.py         closed-book QA from JSONL
  t2l_bench.py  T2L benchmark prompts (multiple choice by log-likelihood or generation; free-form)
"""
