"""Tokenisation with the model's own chat template, response-only loss masks and the references' truncation rules.

D2L (spec 2.1, 11.1, 11.2):
  * context → ``apply_chat_template([system "", user ctx.strip()], add_generation_prompt=True,
    add_special_tokens=False)``; contexts longer than ``max_ctx_len`` go through a pluggable chunker
    (``chunker(ids, rng) -> [chunk ids, ...]``, e.g. the exact reference chunking of ``hyperlora_jax.d2l.context``)
    or are truncated (``truncate_middle`` = the reference's ``t[:h] + t[-h:]`` with ``h = max_len // 2``, or keep the
    left / right end) — always counted in the stats, never dropped silently;
  * each QA → ``[system "", user question.strip(), assistant answer]`` through the chat template, loss on the
    assistant tokens (the template's ``{% generation %}`` mask when it has one, else the tokens after the generation
    prompt — the answer and the end-of-turn); pre-tokenised self-generated QAs keep their ids and their
    ``response_start_end`` span and teacher top-k rows;
  * a QA longer than ``max_qas_len`` tokens is skipped and counted (``split_too_long_qas``); at most
    ``max_qas_per_sample`` QAs share one sample (default 1: each (context, QA) is one sample).
T2L examples are tokenised by ``hyperlora_jax.methods.t2l.ChatFormatter`` (the one T2L path).

Masks here are per token: ``target[t] = 1`` when token t is a loss target. Packing converts them to the trainer's
next-token convention.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hyperlora_jax.data.stats import DataStats

Chunker = Callable[[np.ndarray, np.random.Generator], Sequence[Sequence[int]]]


def load_tokenizer(tok_or_dir):
    if isinstance(tok_or_dir, str):
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(tok_or_dir)
    return tok_or_dir


def _ids(out) -> list[int]:
    """apply_chat_template's return value → list of ids (transformers 4.x returns a list, 5.x a BatchEncoding)."""
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


class ChatTokenizer:
    """A Hugging Face tokenizer used through its own chat template."""

    def __init__(self, tokenizer):
        self.tok = load_tokenizer(tokenizer)
        if not getattr(self.tok, "chat_template", None):
            raise NotImplementedError("only chat-templated tokenizers are supported (D2L spec 2.1)")
        self.has_generation_mask = re.search(r"{%-?\s*generation\s*-?%}", self.tok.chat_template) is not None

    def render(self, messages, add_generation_prompt: bool) -> list[int]:
        return _ids(self.tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                                 add_special_tokens=False, return_dict=True))

    def encode_context(self, text: str) -> np.ndarray:
        return np.asarray(self.render([{"role": "system", "content": ""}, {"role": "user", "content": text.strip()}],
                                      add_generation_prompt=True), np.int32)

    def _conversation(self, prompt, response, system):
        return [{"role": "system", "content": system.strip()}, {"role": "user", "content": prompt.strip()},
                {"role": "assistant", "content": response}]

    def encode_qa(self, prompt: str, response: str, system: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(ids, target) of one D2L student QA turn; target marks the assistant tokens."""
        msgs = self._conversation(prompt, response, system)
        if self.has_generation_mask:
            out = self.tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False,
                                               add_special_tokens=False, return_dict=True,
                                               return_assistant_tokens_mask=True)
            ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
            return np.asarray(ids, np.int32), np.asarray(mask, bool)
        head = self.render(msgs[:2], add_generation_prompt=True)
        return self._split(head, self.render(msgs, add_generation_prompt=False))

    @staticmethod
    def _split(head, full):
        if full[:len(head)] != head:
            raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
        target = np.zeros(len(full), bool)
        target[len(head):] = True
        return np.asarray(full, np.int32), target


def truncate(ids: np.ndarray, max_len: int, mode: str) -> np.ndarray:
    if len(ids) <= max_len:
        return ids
    if mode == "truncate_middle":  # reference truncate_middle_if_too_long with max_new_tokens = 0
        half = max_len // 2
        return np.concatenate([ids[:half], ids[len(ids) - half:]])
    if mode == "truncate_left":
        return ids[len(ids) - max_len:]
    if mode == "truncate_right":
        return ids[:max_len]
    raise ValueError(f"unknown truncation mode {mode!r}")


# ---------------------------------------------------------------------------------------------------------------- D2L

@dataclasses.dataclass
class D2LTokenizeConfig:
    max_ctx_len: int = 8192            # total context tokens of one sample (all chunks); the packed ctx row bound
    ctx_overflow: str = "truncate_middle"  # "chunk" | "truncate_middle" | "truncate_left" | "truncate_right"
    chunker: Chunker | None = None     # used when ctx_overflow == "chunk" (or always, if chunk_always)
    max_chunk_len: int = 0             # "chunk" mode: contexts longer than this are chunked (0 = max_ctx_len)
    chunk_always: bool = False         # call the chunker on every context (training with num_chunk_probs)
    max_qas_len: int = 2048            # QA longer than this (tokens) is skipped, as in the reference
    max_qas_per_sample: int = 1
    system: str = ""
    top_k: int = 0                     # keep this many teacher log-probs per response token (0 = none)


@dataclasses.dataclass
class QA:
    ids: np.ndarray                    # [n] int32
    target: np.ndarray                 # [n] bool, token is a loss target
    topk_vals: np.ndarray | None = None  # [n, K] float32 log-probs of the distribution *of* token t (rows
    topk_ids: np.ndarray | None = None   # where target is set), zero elsewhere


@dataclasses.dataclass
class Sample:
    ctx_chunks: list                   # [np.ndarray int32]
    qas: list                          # [QA]
    example: int = -1                  # index of the source record

    @property
    def ctx_len(self):
        return sum(len(c) for c in self.ctx_chunks)

    @property
    def qa_len(self):
        return sum(len(q.ids) for q in self.qas)


def _is_text(x):
    return isinstance(x, str)


class D2LTokenizer:
    """Turns a d2l_qa / niah record into Samples; everything skipped or altered is counted in ``stats``."""

    def __init__(self, tokenizer, cfg: D2LTokenizeConfig | None = None):
        self.chat = tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer(tokenizer)
        self.cfg = cfg or D2LTokenizeConfig()
        if self.cfg.ctx_overflow == "chunk" and self.cfg.chunker is None:
            raise ValueError("ctx_overflow='chunk' needs a chunker callable (e.g. from hyperlora_jax.d2l.context)")

    # -- context
    def context_chunks(self, ctx_ids: np.ndarray, rng, stats: DataStats) -> list:
        cfg = self.cfg
        too_long = len(ctx_ids) > cfg.max_ctx_len
        chunk_at = cfg.max_chunk_len if cfg.max_chunk_len > 0 else cfg.max_ctx_len
        if cfg.chunker is not None and (cfg.chunk_always or (len(ctx_ids) > chunk_at and cfg.ctx_overflow == "chunk")):
            chunks = [np.asarray(c, np.int32) for c in cfg.chunker(np.asarray(ctx_ids, np.int32), rng)]
            if len(chunks) > 1:
                stats.add("tokenize/ctx_chunked")
            total = sum(len(c) for c in chunks)
            if total > cfg.max_ctx_len:  # the chunks with their affixes must still fit the context row
                stats.add("tokenize/ctx_chunks_truncated")
                kept, used = [], 0
                for c in chunks:
                    if used + len(c) > cfg.max_ctx_len:
                        if not kept:
                            kept.append(c[:cfg.max_ctx_len])
                        break
                    kept.append(c)
                    used += len(c)
                chunks = kept
            return chunks
        if too_long:
            stats.add("tokenize/ctx_truncated")
            mode = cfg.ctx_overflow if cfg.ctx_overflow != "chunk" else "truncate_middle"
            return [truncate(np.asarray(ctx_ids, np.int32), cfg.max_ctx_len, mode)]
        return [np.asarray(ctx_ids, np.int32)]

    # -- QAs
    def _text_qas(self, record, stats) -> list:
        if "prompts" in record and len(record.get("prompts") or []) or "prompt" in record:
            prompts = record["prompts"] if "prompts" in record else [record.get("prompt")]
            responses = record.get("responses") if "responses" in record else [record.get("response")]
        else:
            return []
        prompts, responses = list(prompts), list(responses or [])
        out = []
        for j, q in enumerate(prompts):
            a = responses[j] if j < len(responses) else None
            if a is None or (_is_text(a) and not a.strip()):
                stats.add("tokenize/missing_answer")
            elif not _is_text(q) or not _is_text(a):
                stats.add("tokenize/non_text")
            else:
                ids, target = self.chat.encode_qa(q, a, self.cfg.system)
                out.append(QA(ids, target))
        return out

    def _token_qas(self, record, stats) -> list:
        lens = np.asarray(record["qa_lens"], np.int64).reshape(-1)
        qa_ids = np.asarray(record["qa_ids"], np.int32).reshape(-1)
        spans = np.asarray(record["response_start_end"], np.int64).reshape(-1, 2)
        if (not len(lens) or (lens < 0).any() or lens.sum() != len(qa_ids) or len(spans) != len(lens)
                or ((spans[:, 0] < 0) | (spans[:, 0] >= spans[:, 1]) | (spans[:, 1] > lens)).any()):
            stats.add("tokenize/bad_token_record")
            return []
        seqs = np.split(qa_ids, np.cumsum(lens)[:-1])
        vals, idx = np.asarray(record.get("logprobs_vals", np.zeros((0, 0)))), \
            np.asarray(record.get("logprobs_indices", np.zeros((0, 0))))
        has_lp = (self.cfg.top_k > 0 and vals.ndim == 2 and vals.shape == idx.shape
                  and vals.shape[1] >= self.cfg.top_k and len(vals) == int((spans[:, 1] - spans[:, 0]).sum()))
        if self.cfg.top_k > 0 and not has_lp:
            stats.add("tokenize/missing_teacher_logprobs")
        out, row = [], 0
        for ids, (s, e) in zip(seqs, spans):
            target = np.zeros(len(ids), bool)
            target[s:e] = True
            qa = QA(ids, target)
            if has_lp:
                k = self.cfg.top_k
                qa.topk_vals = np.zeros((len(ids), k), np.float32)
                qa.topk_ids = np.zeros((len(ids), k), np.int32)
                qa.topk_vals[s:e] = vals[row:row + e - s, :k]
                qa.topk_ids[s:e] = idx[row:row + e - s, :k]
            row += e - s
            out.append(qa)
        return out

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator, stats: DataStats,
                 example: int = -1) -> list:
        cfg = self.cfg
        pretokenized = len(record.get("ctx_ids", ())) > 0
        if pretokenized:
            ctx_ids = np.asarray(record["ctx_ids"], np.int32)
            qas = self._token_qas(record, stats)
        else:
            ctx = record.get("context")
            if not _is_text(ctx):
                stats.add("tokenize/non_text")
                return []
            if not ctx.strip():
                stats.add("tokenize/empty_context")
                return []
            qas = self._text_qas(record, stats)
            ctx_ids = None
        if cfg.max_qas_len > 0:
            n = len(qas)
            qas = [q for q in qas if len(q.ids) <= cfg.max_qas_len]
            if n - len(qas):
                stats.add("tokenize/qa_too_long", n - len(qas))
        if not qas:
            stats.add("tokenize/no_valid_qa")
            return []
        if ctx_ids is None:
            ctx_ids = self.chat.encode_context(ctx)
        chunks = self.context_chunks(ctx_ids, rng, stats)
        per = cfg.max_qas_per_sample if cfg.max_qas_per_sample > 0 else len(qas)
        samples = []
        for i in range(0, len(qas), per):  # greedy groups (max_qas_len bounds each QA, rows bound the sum)
            samples.append(Sample(chunks, qas[i:i + per], example))
        stats.add("tokenize/samples", len(samples))
        stats.add("tokenize/qas", len(qas))
        return samples


def reference_chunker(tokenizer, chunk_tokens: int) -> Chunker:
    """A chunker from ``hyperlora_jax.d2l.context`` (reference eval-mode ``split_too_long_ctx``: ceil(len / chunk)
    chunks with the template's affixes re-added). The training-time ``num_chunk_probs`` sampling is not there yet:
    pass your own callable ``(ids, rng) -> chunks`` for it."""
    from hyperlora_jax.d2l.context import chunk_ids, template_affixes
    tok = tokenizer.tok if isinstance(tokenizer, ChatTokenizer) else load_tokenizer(tokenizer)
    affixes = template_affixes(tok)
    return lambda ids, rng: chunk_ids(list(ids), chunk_tokens, affixes)
