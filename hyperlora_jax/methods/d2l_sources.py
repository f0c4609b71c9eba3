"""Training sources ``d2l_qa`` and ``niah`` of the ``d2l`` method: prepared TFDS datasets read by random access.

Both read a split prepared earlier by ``hyperlora_jax.data.tfds`` (``D2lQa`` / ``Niah``, array_record) through
``tfds.data_source`` — no TensorFlow, random access — so an example is a pure function of (seed, stream position)
and a resumed run sees exactly the examples it would have seen.

Config keys (``data.*``):
  tfds_dir              directory the dataset was prepared in (required)
  tfds_name             ``builder[/config[/version]]``; '' = ``d2l_qa`` (its ``default`` config) resp.
                        ``niah/reference``
  split                 a TFDS split string (``train``, ``train_32_128+train_128_256``, ``train[:90%]`` ...)
  chunk_tokens, max_chunks, chunk_probs, min_chunk_tokens   chunking (below)
  query_len             student row length Tq (the reference's ``max_qas_len``)
  max_response_tokens   R of the response position arrays (capped at query_len - 1; the reference's teacher wrote
                        at most 256 new tokens); a longer response is skipped and counted
  teacher_len           teacher row length Tt (0 = max_chunks·chunk_tokens + query_len + 16)

Stream: epoch e = i // n (n records) visits the records in ``np.random.default_rng([seed, e]).permutation(n)``
(the trainer's own per-epoch shuffle). A record holds one context and all its QAs; each visit trains on ONE QA
(the reference's ``max_qas_per_sample = 1``): the record's QAs in a fixed per-record random order, rotated by the
epoch, so n_qas consecutive epochs visit every (context, QA) pair once. Unlike the reference, which shuffles
(context, QA) pairs, every context weighs the same within an epoch whatever its QA count.

Per example (spec 2.1, 2.2, 11.2):
  * context → the chat template over [system "", user ctx.strip()] + generation prompt (pre-tokenised records
    keep their ``ctx_ids``), then the reference's TRAINING chunking: with L templated ids, the chunk count n is drawn
    from ``data.chunk_probs`` (counts 1..len) restricted to ``ceil(L / chunk_tokens) <= n <= ceil(L /
    min_chunk_tokens)`` (renormalised; if no allowed count has mass, the smallest allowed count), chunk length
    ``ceil(L / n)``, template affixes re-added, so the realised count can be smaller than n;
  * a document needing more than ``data.max_chunks`` chunks (L > max_chunks·chunk_tokens) is SKIPPED and counted
    (``d2l/ctx_too_long``), as the reference's packing skips items over its context bound — never truncated;
  * QA → the chat template (loss on the assistant tokens: answer + end of turn) or the pre-tokenised ids and
    response span; a QA longer than ``query_len`` is skipped and counted (the reference's ``split_too_long_qas``);
  * a record without a usable QA is replaced by the next record (index + 1, + 2, ... mod n), so every example is
    real; ``MAX_TRIES`` records in a row without one is a ValueError (the data or the lengths are wrong).
Everything skipped is counted in ``example.stats`` (a ``DataStats``), logged every ``LOG_EVERY`` examples.

Fields: ctx_ids / ctx_mask [K, T] (K = max_chunks, T = chunk_tokens + |affixes|), n_chunks; tokens / loss_mask /
segment_ids [Tq] (loss_mask in next-token convention: position t predicts token t+1); student_idx / resp_valid [R]:
loss_mask's positions (the only rows of the student's LM head the loss computes). For ``loss.kind == 'kd'``
also teacher_tokens / teacher_segment_ids / teacher_idx [Tt, Tt, R]: the teacher is the
frozen base model with the document in context, run on the fly by ``D2LMethod.loss`` (stored teacher top-k rows
of self-generated data are not used). Teacher row:
  * text records: the chat template over [system "", user ``ctx.strip() + "\\n\\n" + question.strip()``] + the
    same answer;
  * pre-tokenised records (a token-level splice; the document text is not stored): the templated context without
    its generation-prompt suffix, then ``"\\n\\n"``, then the student ids after their common prefix with the
    context ids (the shared template head), i.e. the question turn and response.
Response token r sits at student position s_r and teacher position t_r (equal token ids, checked; a mismatch is
skipped and counted); ``student_idx = s_r − 1`` and ``teacher_idx = t_r − 1`` are the positions whose logits
predict it. A teacher row longer than ``teacher_len`` is skipped and counted.
"""
from __future__ import annotations

import glob
import logging
import math
import os

import numpy as np

from hyperlora_jax.data.sources import register_source
from hyperlora_jax.methods.d2l_data import D2LFormatter, response_budget, response_index

log = logging.getLogger(__name__)

DEFAULT_TFDS_NAME = {"d2l_qa": "d2l_qa", "niah": "niah/reference"}
MAX_TRIES = 64      # consecutive records without a usable QA before giving up
LOG_EVERY = 10_000  # examples between two stats log lines
TEACHER_SEP = "\n\n"  # between the document and the question in the teacher's user turn


# ----- opening the prepared split --------------------------------------------------------------------------------

def _default_config(builder: str) -> str:
    from hyperlora_jax.data import tfds as hd
    cls = {"d2l_qa": hd.D2lQa, "niah": hd.Niah, "t2l_tasks": hd.T2lTasks}.get(builder)
    return cls.BUILDER_CONFIGS[0].name if cls is not None and cls.BUILDER_CONFIGS else ""


def open_split(data_cfg, source_name: str):
    """Random-access decoded view (``DecodedSource``) of ``data.split`` of the prepared ``data.tfds_name``."""
    from hyperlora_jax.data.tfds.common import DecodedSource
    tfds_dir = str(data_cfg.get("tfds_dir", "") or "")
    name = str(data_cfg.get("tfds_name", "") or "") or DEFAULT_TFDS_NAME[source_name]
    split = str(data_cfg.get("split", "") or "")
    if not tfds_dir:
        raise ValueError(f"d2l data source {source_name!r} needs data.tfds_dir: the directory a {name!r} dataset was "
                         "prepared in (hyperlora_jax.data.tfds)")
    tfds_dir = os.path.expanduser(tfds_dir)
    if not os.path.isdir(tfds_dir):
        raise ValueError(f"data.tfds_dir {tfds_dir!r} does not exist")
    if not split:
        raise ValueError("data.split is empty (e.g. 'train')")
    parts = name.split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise ValueError(f"data.tfds_name {name!r} is not 'builder[/config[/version]]'")
    builder, config = parts[0], parts[1] if len(parts) > 1 else _default_config(parts[0])
    version = parts[2] if len(parts) > 2 else "*"
    pattern = os.path.join(tfds_dir, builder, *([config] if config else []), version, "dataset_info.json")
    if not glob.glob(pattern):
        found = sorted({os.path.relpath(os.path.dirname(os.path.dirname(p)), tfds_dir)
                        for p in glob.glob(os.path.join(tfds_dir, "*", "*", "*", "dataset_info.json"))})
        raise ValueError(f"no prepared dataset {name!r} in data.tfds_dir {tfds_dir!r} (prepared there: "
                         f"{', '.join(found) or 'none'}); set data.tfds_name")
    import tensorflow_datasets as tfds

    import hyperlora_jax.data.tfds  # noqa: F401  (registers the builders)
    try:
        ds = tfds.data_source(name, split=split, data_dir=tfds_dir, download=False)
    except ValueError as e:
        msg = " ".join(str(e).split())
        if "split" in msg.lower():
            raise ValueError(f"data.split {split!r} of {name!r} in {tfds_dir!r}: {msg}") from None
        raise ValueError(f"cannot read {name!r} from {tfds_dir!r}: {msg[:500]}") from None
    except (NotImplementedError, RuntimeError) as e:
        raise ValueError(f"cannot read {name!r} from {tfds_dir!r} by random access (prepare it with "
                         f"file_format='array_record'): {' '.join(str(e).split())[:300]}") from None
    src = DecodedSource(ds)
    if len(src) == 0:
        raise ValueError(f"split {split!r} of {name!r} in {tfds_dir!r} is empty")
    return src


# ----- chunking (reference training rule, spec 2.2) ----------------------------------------------------------------

def chunk_count(n_ids: int, chunk_tokens: int, min_chunk_tokens: int, probs, rng) -> int:
    """Chunk count of a templated context of ``n_ids`` tokens: drawn from ``probs`` (counts 1..len(probs))
    restricted to ``ceil(n / chunk_tokens) <= count <= ceil(n / min_chunk_tokens)``; the smallest allowed count
    when none of those has mass. (May exceed max_chunks: the caller skips such documents.)"""
    need = max(1, math.ceil(n_ids / chunk_tokens))
    hi = max(need, math.ceil(n_ids / min_chunk_tokens))
    p = np.asarray(probs, np.float64)
    counts = np.arange(1, len(p) + 1)
    ok = (counts >= need) & (counts <= hi) & (p > 0)
    if not ok.any():
        return need
    w = p * ok
    return int(rng.choice(counts, p=w / w.sum()))


def split_chunks(ids, n: int, affixes) -> list:
    """``n`` requested chunks of length ``ceil(len / n)`` (possibly fewer), affixes re-added (spec 2.2)."""
    ids = [int(i) for i in ids]
    if n <= 1:
        return [ids]
    step = math.ceil(len(ids) / n)
    chunks = [ids[i:i + step] for i in range(0, len(ids), step)]
    pre, suf = list(affixes.prefix), list(affixes.suffix)
    return [(pre if i else []) + c + (suf if i < len(chunks) - 1 else []) for i, c in enumerate(chunks)]


# ----- the source --------------------------------------------------------------------------------------------------

class TFDSExamples:
    """``example(i)`` of a prepared d2l_qa / niah split; see the module docstring."""

    def __init__(self, fmt: D2LFormatter, data_cfg, seed: int, source_name: str):
        from hyperlora_jax.d2l.context import check_chunk_tokens
        from hyperlora_jax.data.iterators import ExampleStream
        from hyperlora_jax.data.stats import DataStats
        from hyperlora_jax.data.tokenize import ChatTokenizer, D2LTokenizeConfig, D2LTokenizer

        self.seed = int(seed)
        self.kd = fmt.loss_kind == "kd"
        if fmt.loss_kind not in ("ce", "kd"):
            raise ValueError(f"unknown loss.kind {fmt.loss_kind!r} (ce, kd)")
        self.affixes = fmt.affixes
        self.chunk_tokens = check_chunk_tokens(int(data_cfg.chunk_tokens), self.affixes)
        self.max_chunks = int(data_cfg.max_chunks)
        self.chunk_len = int(fmt.chunk_len)
        self.min_chunk_tokens = int(data_cfg.get("min_chunk_tokens", 25))
        self.probs = tuple(float(p) for p in data_cfg.get("chunk_probs", (1.0,)))
        self.query_len = int(data_cfg.query_len)
        self.max_resp = response_budget(data_cfg)
        tl = int(data_cfg.get("teacher_len", 0))
        self.teacher_len = tl if tl > 0 else self.max_chunks * self.chunk_tokens + self.query_len + 16
        if self.max_chunks < 1:
            raise ValueError(f"data.max_chunks must be >= 1, got {self.max_chunks}")
        if not 1 <= self.min_chunk_tokens <= self.chunk_tokens:
            raise ValueError(f"data.min_chunk_tokens {self.min_chunk_tokens} must be in [1, data.chunk_tokens "
                             f"{self.chunk_tokens}]")
        if not self.probs or len(self.probs) > self.max_chunks or min(self.probs) < 0 or sum(self.probs) <= 0:
            raise ValueError(f"data.chunk_probs {self.probs} must be {self.max_chunks} or fewer non-negative "
                             "weights (chunk counts 1, 2, ...) with a positive sum")
        if self.query_len < 2:
            raise ValueError(f"data.query_len must be >= 2, got {self.query_len}")

        self.records = self.open_records(data_cfg, source_name)
        self.n = len(self.records)
        self.stream = ExampleStream(self.n, self.seed, shuffle=True)
        self.chat = ChatTokenizer(fmt.tok)
        self.tokenizer = D2LTokenizer(self.chat, D2LTokenizeConfig(
            max_ctx_len=1 << 62, ctx_overflow="chunk", chunker=self._chunker, chunk_always=True,
            max_qas_len=self.query_len, max_qas_per_sample=1, top_k=0))
        self.sep_ids = [int(t) for t in fmt.tok(TEACHER_SEP, add_special_tokens=False)["input_ids"]]
        self.stats = DataStats()
        self.vocab = int(fmt.vocab_size)
        self.calls = 0
        self.source_name = source_name

    def open_records(self, data_cfg, source_name: str):
        """The records (``len`` + ``[i]`` -> record dict): here a prepared TFDS split; generated sources override."""
        return open_split(data_cfg, source_name)

    # -- pieces
    def _chunker(self, ids, rng):
        n = chunk_count(len(ids), self.chunk_tokens, self.min_chunk_tokens, self.probs, rng)
        return split_chunks(ids, n, self.affixes)

    @staticmethod
    def _qa_count(rec) -> int:
        if len(rec.get("ctx_ids", ())) > 0:
            return len(rec.get("qa_lens", ()))
        if "prompts" in rec and len(rec.get("prompts") or []):
            return len(rec["prompts"])
        return 1 if "prompt" in rec else 0

    @staticmethod
    def _one_qa(rec, j: int) -> dict:
        """The record reduced to its QA j (the tokenizer then encodes only that one)."""
        if len(rec.get("ctx_ids", ())) > 0:
            lens = np.asarray(rec["qa_lens"], np.int64).reshape(-1)
            off = int(lens[:j].sum())
            spans = np.asarray(rec["response_start_end"], np.int64).reshape(-1, 2)
            return {"ctx_ids": rec["ctx_ids"], "qa_ids": np.asarray(rec["qa_ids"]).reshape(-1)[off:off + lens[j]],
                    "qa_lens": lens[j:j + 1], "response_start_end": spans[j:j + 1]}
        if "prompts" in rec and len(rec.get("prompts") or []):
            resp = list(rec.get("responses") or [])
            return {"context": rec.get("context"), "prompts": [rec["prompts"][j]],
                    "responses": [resp[j] if j < len(resp) else None]}
        return {"context": rec.get("context"), "prompt": rec.get("prompt"), "response": rec.get("response")}

    def _teacher(self, one: dict, qa) -> tuple:
        """(teacher ids, target mask) of the document in context + the same QA; None if it cannot be built."""
        if "ctx_ids" in one:
            ctx = [int(t) for t in np.asarray(one["ctx_ids"]).reshape(-1)]
            suf = list(self.affixes.suffix)
            if suf and ctx[len(ctx) - len(suf):] != suf:
                self.stats.add("d2l/kd_ctx_ids_without_template_suffix")
                return None
            doc = ctx[:len(ctx) - len(suf)]
            ids = [int(t) for t in qa.ids]
            h = 0
            while h < min(len(doc), len(ids)) and doc[h] == ids[h]:
                h += 1
            first = int(np.argmax(qa.target))
            if h > first:
                h = first
            tids = np.asarray(doc + self.sep_ids + ids[h:], np.int32)
            target = np.concatenate([np.zeros(len(doc) + len(self.sep_ids), bool), qa.target[h:]])
            return tids, target
        q = one["prompts"][0] if "prompts" in one else one["prompt"]
        a = one["responses"][0] if "responses" in one else one["response"]
        return self.chat.encode_qa(one["context"].strip() + TEACHER_SEP + q.strip(), a, self.tokenizer.cfg.system)

    def _build(self, one: dict, rng):
        """Example dict from a one-QA record, or a skip reason (str)."""
        samples = self.tokenizer(one, rng, self.stats)
        if not samples:
            return "no_valid_qa"
        s = samples[0]
        if len(s.ctx_chunks) > self.max_chunks:
            return "ctx_too_long"
        qa = s.qas[0]
        n = len(qa.ids)
        top = max(int(qa.ids.max()), max(int(np.max(c)) for c in s.ctx_chunks))
        if top >= self.vocab:
            raise ValueError(f"d2l data source {self.source_name!r}: token id {top} >= the base model's vocabulary "
                             f"size {self.vocab} (pre-tokenised data made with another tokenizer?)")
        if n < 2 or not qa.target[1:].any():
            return "empty_response"
        ctx_ids = np.zeros((self.max_chunks, self.chunk_len), np.int32)
        ctx_mask = np.zeros((self.max_chunks, self.chunk_len), np.int32)
        for k, c in enumerate(s.ctx_chunks):
            if len(c) > self.chunk_len:  # cannot happen with the chunking above; kept as a guard
                return "chunk_too_long"
            ctx_ids[k, :len(c)] = c
            ctx_mask[k, :len(c)] = 1
        tokens = np.zeros(self.query_len, np.int32)
        tokens[:n] = qa.ids
        loss_mask = np.zeros(self.query_len, np.float32)
        loss_mask[:n - 1] = qa.target[1:n]
        seg = (np.arange(self.query_len) < n).astype(np.int32)
        resp = response_index(loss_mask, self.max_resp)
        if resp is None:
            return "response_too_long"
        ex = {"ctx_ids": ctx_ids, "ctx_mask": ctx_mask, "n_chunks": np.int32(len(s.ctx_chunks)), "tokens": tokens,
              "loss_mask": loss_mask, "segment_ids": seg, "student_idx": resp[0], "resp_valid": resp[1]}
        if not self.kd:
            return ex
        r = int(resp[1].sum())
        s_pos = resp[0][:r] + 1  # the response tokens' student positions (loss_mask's positions + 1)
        t = self._teacher(one, qa)
        if t is None:
            return "kd_bad_teacher"
        tids, ttarget = t
        if len(tids) > self.teacher_len:
            return "kd_teacher_too_long"
        t_pos = np.nonzero(ttarget)[0]
        t_pos = t_pos[t_pos >= 1]
        if len(t_pos) != len(s_pos) or not np.array_equal(tids[t_pos], qa.ids[s_pos]):
            return "kd_response_mismatch"
        teacher = np.zeros(self.teacher_len, np.int32)
        teacher[:len(tids)] = tids
        t_idx = np.zeros(self.max_resp, np.int32)
        t_idx[:r] = t_pos - 1
        ex.update(teacher_tokens=teacher,
                  teacher_segment_ids=(np.arange(self.teacher_len) < len(tids)).astype(np.int32), teacher_idx=t_idx)
        return ex

    # -- the example function
    def __call__(self, i: int) -> dict:
        i = int(i)
        epoch = i // self.n
        first = self.stream(i)
        rng = np.random.default_rng([self.seed, i, 29])
        self.calls += 1
        if self.calls % LOG_EVERY == 0:
            log.info("d2l %s data after %d examples: %s", self.source_name, self.calls, self.stats.summary())
        for attempt in range(min(MAX_TRIES, self.n)):
            rec_i = (first + attempt) % self.n
            if attempt:
                self.stats.add("d2l/replaced_by_next_record")
            rec = self.records[rec_i]
            nq = self._qa_count(rec)
            if nq == 0:
                self.stats.add("d2l/no_qa")
                continue
            order = np.random.default_rng([self.seed, rec_i, 31]).permutation(nq)
            order = np.roll(order, -(epoch % nq))
            for j in order:
                out = self._build(self._one_qa(rec, int(j)), rng)
                if isinstance(out, dict):
                    return out
                self.stats.add(f"d2l/{out}")
                if out == "ctx_too_long":
                    break  # the same context for every QA of the record
        raise ValueError(f"d2l data source {self.source_name!r}: {min(MAX_TRIES, self.n)} records in a row from "
                         f"record {first} have no usable (context, QA) pair ({self.stats.summary()}); check "
                         "data.chunk_tokens x data.max_chunks, data.query_len and the dataset")


def _make(name):
    def build(fmt: D2LFormatter, data_cfg, seed: int):
        ex = TFDSExamples(fmt, data_cfg, seed, name)
        return ex, None  # an infinite stream: TFDSExamples shuffles per epoch itself (see the module docstring)
    build.__name__ = name
    build.__doc__ = f"Prepared TFDS {name!r} split (data.tfds_dir / tfds_name / split); see d2l_sources."
    return build


register_source("d2l", "d2l_qa")(_make("d2l_qa"))
register_source("d2l", "niah")(_make("niah"))
