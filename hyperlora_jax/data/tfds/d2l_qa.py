"""D2L question-answering data in the reference's "compact" form: one record per context with all its QAs.

Inputs are local files the user provides (JSON / JSONL / parquet; globs and directories allowed), per split and per
named source, e.g. ``inputs={"train": {"squad": "/data/squad/train-v1.1.json", "self_gen": "/data/sg/*.parquet"}}``.
Recognised row layouts (detected per row):

* SQuAD: Hugging Face rows ``context, question, answers{text}`` or the original nested JSON
  ``data[].paragraphs[].{context, qas[].{question, answers[].text}}``;
* DROP: ``passage, question, answers_spans{spans}`` or the original ``{id: {passage, qa_pairs[].answer{spans}}}``;
* ROPES: ``background, situation, question, answers{text}`` (context = background + "\\n" + situation);
* compact: ``context, prompts[], responses[]`` (the output of the reference's ``build_*_compact.py``);
* flat: ``context, question|prompt, answer|response``;
* self-generated (the released ``self_gen_qa_d2l`` parquet files, ``data/self_generate_qa.py``): pre-tokenised
  ``ctx_ids, input_ids[], response_start_end[], logprobs_vals[], logprobs_indices[]`` (teacher top-k log-probs per
  response token). These keep their token ids; the tokenizer they were made with must be the base model's.

As in the reference, the first answer is the target, QAs are grouped by exact context text in first-seen order.
Rows with a missing answer, an empty context or non-text fields are skipped and counted in
``info.metadata["skipped"][split]`` (keys ``<source>/<reason>``); they never stop the build.

Record: ``source, context, prompts[], responses[]`` (text rows) or ``ctx_ids, qa_ids, qa_lens,
response_start_end[n, 2], logprobs_vals[Σ response, K], logprobs_indices`` (pre-tokenised rows; ``qa_ids`` is the
concatenation of the QAs' ``input_ids`` and ``qa_lens`` their lengths; log-prob rows are the QAs' response rows in
order). Unused fields are empty.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import tensorflow_datasets as tfds

from hyperlora_jax.data.tfds.common import (BuildCounter, _BadRow, expand_paths, flat,
                                            read_rows, tensor, text_feature)


@dataclasses.dataclass(eq=False)
class D2LQAConfig(tfds.core.BuilderConfig):
    # split -> {source name -> path / glob / directory / list of them}
    inputs: dict = dataclasses.field(default_factory=dict)
    top_k: int = 16  # teacher log-probs kept per response token (self-generated rows)


def _first(x):
    """First answer text of an ``answers`` field in any of the usual layouts, else None."""
    if isinstance(x, dict):
        for key in ("text", "spans"):
            if key in x:
                return _first(x[key])
        return None
    if isinstance(x, (list, tuple, np.ndarray)):
        return _first(x[0]) if len(x) else None
    return x


def text_qas(row) -> tuple[str, list[tuple]] | None:
    """(context, [(question, answer), ...]) of a text row; None if the layout is not recognised."""
    if "prompts" in row and "responses" in row and "context" in row:
        p, r = row["prompts"], row["responses"]
        p = p.tolist() if isinstance(p, np.ndarray) else p
        r = r.tolist() if isinstance(r, np.ndarray) else r
        if not isinstance(p, list) or not isinstance(r, list):
            return row["context"], [(p, r)]
        return row["context"], list(zip(p, r)) + [(q, None) for q in p[len(r):]]
    if "background" in row and "situation" in row:
        ctx = (f"{row['background']}\n{row['situation']}"
               if isinstance(row["background"], str) and isinstance(row["situation"], str) else None)
        return ctx, [(row.get("question"), _first(row.get("answers")))]
    if "passage" in row and "answers_spans" in row:
        return row["passage"], [(row.get("question"), _first(row["answers_spans"]))]
    if "passage" in row and "qa_pairs" in row:  # original DROP json
        qas = []
        for qa in row["qa_pairs"] or []:
            ans = qa.get("answer") or {}
            a = _first(ans.get("spans")) or (ans.get("number") or None)
            qas.append((qa.get("question"), a))
        return row["passage"], qas
    if "context" in row and ("question" in row or "prompt" in row):
        q = row.get("question", row.get("prompt"))
        a = _first(row["answers"]) if "answers" in row else row.get("answer", row.get("response"))
        return row["context"], [(q, a)]
    return None


def expand_row(row):
    """Original SQuAD articles and DROP id-keyed dicts become flat rows; anything else passes through."""
    if isinstance(row, dict) and "paragraphs" in row:
        for para in row["paragraphs"] or []:
            qas = [(qa.get("question"), _first(qa.get("answers"))) for qa in (para.get("qas") or [])]
            yield {"context": para.get("context"), "prompts": [q for q, _ in qas],
                   "responses": [a for _, a in qas]}
    elif isinstance(row, dict) and row and all(isinstance(v, dict) and "passage" in v for v in row.values()):
        yield from row.values()
    else:
        yield row


def self_gen_record(row, top_k: int, count) -> dict | None:
    ctx = row.get("ctx_ids")
    if ctx is None or len(ctx) == 0:
        count("empty_context")
        return None
    try:
        ctx = np.asarray(ctx, np.int32).reshape(-1)
    except (TypeError, ValueError):
        count("non_token_ids")
        return None
    inputs, spans = row.get("input_ids") or [], row.get("response_start_end") or []
    vals, idxs = row.get("logprobs_vals"), row.get("logprobs_indices")
    has_lp = vals is not None and idxs is not None and len(vals) == len(inputs)
    keep_ids, keep_spans, keep_vals, keep_idx = [], [], [], []
    for j, ids in enumerate(inputs):
        try:
            ids = np.asarray(ids, np.int32).reshape(-1)
            s, e = (int(v) for v in spans[j])
        except (TypeError, ValueError, IndexError):
            count("non_token_ids")
            continue
        if not 0 <= s < e <= len(ids):
            count("missing_answer")
            continue
        if has_lp:
            v = np.asarray(vals[j] if not isinstance(vals[j], list) else [np.asarray(r) for r in vals[j]],
                           np.float32)
            ix = np.asarray(idxs[j] if not isinstance(idxs[j], list) else [np.asarray(r) for r in idxs[j]],
                            np.int32)
            if v.ndim != 2 or v.shape != ix.shape or v.shape[0] != e - s or v.shape[1] < top_k:
                count("bad_logprobs")
                continue
            keep_vals.append(v[:, :top_k])
            keep_idx.append(ix[:, :top_k])
        keep_ids.append(ids)
        keep_spans.append((s, e))
    if not keep_ids:
        count("no_valid_qa")
        return None
    qa_ids, qa_lens = flat(keep_ids, np.int32)
    lv = flat(keep_vals, np.float16, top_k)[0] if has_lp else np.zeros((0, top_k), np.float16)
    li = flat(keep_idx, np.int32, top_k)[0] if has_lp else np.zeros((0, top_k), np.int32)
    return {"context": "", "prompts": [], "responses": [], "ctx_ids": ctx, "qa_ids": qa_ids, "qa_lens": qa_lens,
            "response_start_end": np.asarray(keep_spans, np.int32).reshape(-1, 2), "logprobs_vals": lv,
            "logprobs_indices": li}


class D2lQa(tfds.core.GeneratorBasedBuilder):
    """Contexts with grouped QAs (SQuAD / DROP / ROPES / compact / self-generated) from local files."""

    name = "d2l_qa"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIG_CLASS = D2LQAConfig
    BUILDER_CONFIGS = [D2LQAConfig(name="default", description="pass inputs= in a D2LQAConfig of your own")]

    def _info(self):
        k = self.builder_config.top_k
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "source": text_feature(), "context": text_feature(),
                "prompts": tfds.features.Sequence(text_feature()),
                "responses": tfds.features.Sequence(text_feature()),
                "ctx_ids": tensor((None,), np.int32), "qa_ids": tensor((None,), np.int32),
                "qa_lens": tensor((None,), np.int32), "response_start_end": tensor((None, 2), np.int32),
                "logprobs_vals": tensor((None, k), np.float16), "logprobs_indices": tensor((None, k), np.int32),
            }),
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        if not self.builder_config.inputs:
            raise ValueError("d2l_qa needs local inputs: D2LQAConfig(name=..., inputs={split: {source: path}})")
        return {split: self._generate_examples(split, sources)
                for split, sources in self.builder_config.inputs.items()}

    def _generate_examples(self, split, sources):
        counter = BuildCounter(self, split)
        top_k = self.builder_config.top_k
        empty_tok = {"ctx_ids": np.zeros(0, np.int32), "qa_ids": np.zeros(0, np.int32),
                     "qa_lens": np.zeros(0, np.int32), "response_start_end": np.zeros((0, 2), np.int32),
                     "logprobs_vals": np.zeros((0, top_k), np.float16),
                     "logprobs_indices": np.zeros((0, top_k), np.int32)}
        for source, patterns in sources.items():
            def count(reason, source=source):
                counter.add(f"{source}/{reason}")
            grouped: dict[str, tuple[list, list]] = {}
            n_self_gen = 0
            for path in expand_paths(patterns if isinstance(patterns, (list, tuple)) else [patterns]):
                for raw in read_rows(path):
                    if isinstance(raw, _BadRow) or not isinstance(raw, dict):
                        count("malformed")
                        continue
                    for row in expand_row(raw):
                        if "ctx_ids" in row and "input_ids" in row:
                            rec = self_gen_record(row, top_k, count)
                            if rec is not None:
                                n_self_gen += 1
                                yield f"{source}/sg/{n_self_gen}", {"source": source, **rec}
                            continue
                        parsed = text_qas(row)
                        if parsed is None:
                            count("unknown_layout")
                            continue
                        ctx, qas = parsed
                        if not isinstance(ctx, str):
                            count("non_text")
                            continue
                        if not ctx.strip():
                            count("empty_context")
                            continue
                        for q, a in qas:
                            if isinstance(a, (int, float)) and not isinstance(a, bool):
                                a = str(a)
                            if a is None or (isinstance(a, str) and not a.strip()):
                                count("missing_answer")
                            elif not isinstance(q, str) or not isinstance(a, str):
                                count("non_text")
                            elif not q.strip():
                                count("missing_question")
                            else:
                                p, r = grouped.setdefault(ctx, ([], []))
                                p.append(q)
                                r.append(a)
            for ctx, (p, r) in grouped.items():
                key = hashlib.sha1(ctx.encode()).hexdigest()
                yield f"{source}/{key}", {"source": source, "context": ctx, "prompts": p, "responses": r,
                                          **empty_tok}
