"""D2L context preparation: chat-templated document ids, chunking with template affixes, batching.

Pipeline (spec D2L.md section 2; golden README section 5.2, steps 1-3)::

  document text
    │ tokenize_document: tokenizer's own chat template on [system "", user doc.strip()] + generation prompt,
    │                    add_special_tokens=False, no truncation                        → ids_full
    │ chunk_ids: n = ceil(len / chunk_tokens); step = ceil(len / n); slices ids[i : i + step] of the templated ids;
    │            every chunk but the last gets the template suffix appended, every chunk but the first the
    │            template prefix prepended (a one-chunk document is kept as is)         → chunks (≤ n of them)
    │ pad_chunks: all chunks of all documents, in document order, right-padded with 0   → ContextBatch
    ▼
  ctx_ids [K, T], ctx_attn_mask [K, T], n_ctx_chunks [n_docs]

Chunks exceed ``chunk_tokens`` by at most ``len(prefix) + len(suffix)`` ids, so ``T <= chunk_tokens + |affixes|``
whatever the document length (``padded_chunk_len``).

The affixes are derived from the chat template (``template_affixes``): the template is rendered around a marker
user text and split there; the text before the marker is the prefix, the text after it the suffix, each tokenized
with ``add_special_tokens=False``. The reference keeps them in a table keyed by model name (``CTX_AFFIXES``); for
the reference's own models and the fixtures' tiny model the derivation gives the same ids.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

_MARKER = "\u2063D2L\u2063DOCUMENT\u2063MARKER\u2063"  # invisible separators: never produced by a real template


class ContextError(ValueError):
    """A document or chunking setting that cannot be turned into context ids (one clear message)."""


@dataclasses.dataclass(frozen=True)
class Affixes:
    """Template ids around the document: ``prefix`` (e.g. <bos><start_of_turn>user\\n\\n\\n) and ``suffix``."""

    prefix: tuple
    suffix: tuple

    def __post_init__(self):
        object.__setattr__(self, "prefix", tuple(int(i) for i in self.prefix))
        object.__setattr__(self, "suffix", tuple(int(i) for i in self.suffix))

    def __len__(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def to_dict(self) -> dict:
        return {"prefix": list(self.prefix), "suffix": list(self.suffix)}


@dataclasses.dataclass(frozen=True)
class ContextBatch:
    """All chunks of a batch of documents, right-padded.

    ctx_ids [K, T] int32 (padding 0), ctx_attn_mask [K, T] int32 (1 = token), n_ctx_chunks [n_docs] int32
    (document c owns rows sum(n[:c]) .. sum(n[:c+1]) - 1).
    """

    ctx_ids: np.ndarray
    ctx_attn_mask: np.ndarray
    n_ctx_chunks: np.ndarray

    @property
    def n_docs(self) -> int:
        return int(self.n_ctx_chunks.shape[0])

    @property
    def max_chunks(self) -> int:
        return int(self.n_ctx_chunks.max())


def load_tokenizer(model_dir: str):
    """The base model's tokenizer (``transformers.AutoTokenizer``, local files only); it must have a chat template."""
    import transformers

    if not os.path.isdir(model_dir):
        raise ContextError(f"tokenizer directory {model_dir!r} does not exist")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ContextError(f"cannot load a tokenizer from {model_dir!r}: {' '.join(str(e).split())}") from None
    _require_chat_template(tok)
    return tok


def _require_chat_template(tokenizer):
    if not getattr(tokenizer, "chat_template", None):
        raise ContextError("the tokenizer has no chat template: D2L only supports chat models (the reference raises "
                           "NotImplementedError too)")


def _messages(text: str) -> list:
    return [{"role": "system", "content": ""}, {"role": "user", "content": text}]


def _ids(out: Any) -> list:
    """apply_chat_template's token output (a list, or a BatchEncoding / dict with input_ids) as a flat list."""
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    out = list(out)
    if out and isinstance(out[0], (list, tuple, np.ndarray)):
        if len(out) != 1:
            raise ContextError("apply_chat_template returned a batch for one conversation")
        out = list(out[0])
    return [int(i) for i in out]


def check_document(tokenizer, text: str) -> str:
    """Returns ``text.strip()``; raises ContextError for a non-string, empty or token-less document."""
    if not isinstance(text, str):
        raise ContextError(f"a document must be text (str), got {type(text).__name__}")
    doc = text.strip()
    if not doc:
        raise ContextError("the document is empty (nothing but whitespace)")
    if not tokenizer(doc, add_special_tokens=False)["input_ids"]:
        raise ContextError(f"the document ({len(doc)} characters) tokenizes to no tokens")
    return doc


def tokenize_document(tokenizer, text: str) -> list:
    """Templated ids of one document: chat template on [system "", user text.strip()] + generation prompt."""
    _require_chat_template(tokenizer)
    doc = check_document(tokenizer, text)
    out = tokenizer.apply_chat_template(_messages(doc), tokenize=True, add_generation_prompt=True,
                                        add_special_tokens=False, truncation=False, padding=False)
    return _ids(out)


def template_affixes(tokenizer) -> Affixes:
    """Prefix / suffix ids of the chat template around a user document (see the module docstring)."""
    _require_chat_template(tokenizer)
    text = tokenizer.apply_chat_template(_messages(_MARKER), tokenize=False, add_generation_prompt=True)
    if text.count(_MARKER) != 1:
        raise ContextError("cannot derive the chunk affixes: the chat template does not render the user text "
                           "verbatim exactly once")
    before, after = text.split(_MARKER)
    enc = lambda s: [int(i) for i in tokenizer(s, add_special_tokens=False)["input_ids"]] if s else []
    return Affixes(enc(before), enc(after))


def check_chunk_tokens(chunk_tokens: int, affixes: Affixes) -> int:
    """Validates the nominal chunk length: an int larger than the affixes (which every chunk may carry)."""
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, (int, np.integer)):
        raise ContextError(f"chunk length must be an integer, got {chunk_tokens!r}")
    if chunk_tokens <= len(affixes):
        raise ContextError(f"chunk length {int(chunk_tokens)} is not larger than the chat-template affixes "
                           f"({len(affixes.prefix)} prefix + {len(affixes.suffix)} suffix = {len(affixes)} tokens)")
    return int(chunk_tokens)


def chunk_ids(ids: Sequence[int], chunk_tokens: int, affixes: Affixes) -> list:
    """Eval-mode chunking of templated ids (the reference's ``split_too_long_ctx`` without sampling).

    Returns a list of chunks (lists of ints); their count can be smaller than ceil(len / chunk_tokens).
    """
    chunk_tokens = check_chunk_tokens(chunk_tokens, affixes)
    ids = [int(i) for i in ids]
    if not ids:
        raise ContextError("no context ids to chunk")
    n = max(1, math.ceil(len(ids) / chunk_tokens))
    if n == 1:
        return [ids]
    step = math.ceil(len(ids) / n)
    chunks = [ids[i:i + step] for i in range(0, len(ids), step)]
    pre, suf = list(affixes.prefix), list(affixes.suffix)
    return [(pre if i else []) + c + (suf if i < len(chunks) - 1 else []) for i, c in enumerate(chunks)]


def padded_chunk_len(chunk_tokens: int, affixes: Affixes) -> int:
    """Upper bound of any chunk's length: ``chunk_tokens + |prefix| + |suffix|``."""
    return int(chunk_tokens) + len(affixes)


def pad_chunks(per_doc_chunks: Sequence[Sequence[Sequence[int]]], length: Optional[int] = None) -> ContextBatch:
    """Stacks the chunks of every document (document order) and right-pads them with 0 to ``length``
    (default: the longest chunk)."""
    rows = [c for doc in per_doc_chunks for c in doc]
    if not rows:
        raise ContextError("no documents")
    longest = max(len(c) for c in rows)
    length = longest if length is None else int(length)
    if longest > length:
        raise ContextError(f"a chunk has {longest} ids > the padded length {length}")
    ids = np.zeros((len(rows), length), np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, c in enumerate(rows):
        ids[i, :len(c)] = c
        mask[i, :len(c)] = 1
    n = np.asarray([len(doc) for doc in per_doc_chunks], np.int32)
    return ContextBatch(ids, mask, n)


def prepare_documents(tokenizer, documents: Sequence[str], chunk_tokens: int, affixes: Optional[Affixes] = None,
                      *, pad_to_chunk_len: bool = True) -> ContextBatch:
    """Documents → ``ContextBatch``. ``pad_to_chunk_len``: pad to ``padded_chunk_len`` (one compiled shape per
    chunk length, independent of the documents) instead of the longest chunk."""
    if isinstance(documents, str):
        raise ContextError("prepare_documents takes a list of documents, not one string")
    if not documents:
        raise ContextError("no documents")
    affixes = template_affixes(tokenizer) if affixes is None else affixes
    chunk_tokens = check_chunk_tokens(chunk_tokens, affixes)
    per_doc = []
    for i, doc in enumerate(documents):
        try:
            per_doc.append(chunk_ids(tokenize_document(tokenizer, doc), chunk_tokens, affixes))
        except ContextError as e:
            raise ContextError(f"document {i}: {e}" if len(documents) > 1 else str(e)) from None
    return pad_chunks(per_doc, padded_chunk_len(chunk_tokens, affixes) if pad_to_chunk_len else None)
