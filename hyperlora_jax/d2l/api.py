"""Notebook API for Doc-to-LoRA with the reference's verbs: ``internalize(doc)``, ``generate(prompt)``, ``reset()``.

    d2l = DocToLoRA.from_pretrained("ckpt/d2l_gemma", model_dir="models/gemma-2-2b-it")
    d2l.internalize(open("doc.txt").read())     # document → combined adapter (chunked when longer than a chunk)
    print(d2l.generate("What does the document say about X?", max_new_tokens=64))
    d2l.reset()                                  # forget: generate() uses the plain base model again

Unlike the reference's ``internalize`` (which never chunks), documents longer than ``chunk_tokens`` are chunked as
in the reference's evaluation path; a document that fits one chunk gives the same adapter either way.
A thin layer over :mod:`hyperlora_jax.d2l.context`, :mod:`~hyperlora_jax.d2l.internalize` and
:func:`hyperlora_jax.generation.generate`.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from hyperlora_jax.d2l import checkpoint as d2l_checkpoint
from hyperlora_jax.d2l.context import Affixes, ContextBatch, load_tokenizer, prepare_documents, template_affixes
from hyperlora_jax.d2l.internalize import check_compatible, internalize_batch
from hyperlora_jax.generation import generate as _generate
from hyperlora_jax.lora import Adapter


class D2LSetupError(ValueError):
    """The D2L checkpoint, base model or settings cannot be put together."""


def resolve_base_model(recorded: Optional[str], d2l_dir: str, override: Optional[str] = None) -> str:
    """The base-model directory: ``override`` if given, else the recorded path (as given, then relative to the
    D2L checkpoint directory)."""
    if override is not None:
        if not os.path.isdir(override):
            raise D2LSetupError(f"base model directory {override!r} does not exist")
        return override
    if not recorded:
        raise D2LSetupError(f"{d2l_dir!r} records no base model; pass the base-model directory (--model)")
    for cand in (recorded, os.path.join(d2l_dir, recorded)):
        if os.path.isdir(cand):
            return cand
    raise D2LSetupError(f"the recorded base model {recorded!r} is not a local directory (tried it as given and "
                        f"relative to {d2l_dir!r}); pass the base-model directory (--model)")


class DocToLoRA:
    """A loaded D2L hypernetwork + frozen base model + tokenizer, holding at most one internalised context."""

    def __init__(self, hyper_params, hyper_cfg, base_params, base_cfg, tokenizer, *, ctx_encoder_layer_idx=None,
                 chunk_tokens: Optional[int] = None, affixes: Optional[Affixes] = None, chunk_group: int = 1,
                 dtype=jnp.float32, base_model_dir: Optional[str] = None):
        check_compatible(hyper_cfg, base_cfg, ctx_encoder_layer_idx)
        self.hyper_params, self.hyper_cfg = hyper_params, hyper_cfg
        self.base_params, self.base_cfg = base_params, base_cfg
        self.tokenizer = tokenizer
        self.layer_idx = ctx_encoder_layer_idx
        self.chunk_tokens = int(chunk_tokens if chunk_tokens is not None else base_cfg.max_position_embeddings)
        self.affixes = affixes if affixes is not None else template_affixes(tokenizer)
        self.chunk_group, self.dtype = chunk_group, dtype
        self.base_model_dir = base_model_dir
        self.adapter: Optional[Adapter] = None
        self.last_batch: Optional[ContextBatch] = None

    @classmethod
    def from_pretrained(cls, d2l_dir: str, model_dir: Optional[str] = None, *, chunk_tokens: Optional[int] = None,
                        **kw) -> "DocToLoRA":
        """Loads a project D2L checkpoint (``convert d2l`` output) and its base model (``model_dir`` overrides the
        recorded path). ``chunk_tokens`` overrides the recorded chunk length."""
        from hyperlora_jax.io.hf_load import load_model

        params, cfg, meta = d2l_checkpoint.load(d2l_dir)
        base_dir = resolve_base_model(meta.base_model, d2l_dir, model_dir)
        base_cfg, base_params = load_model(base_dir)
        tok = load_tokenizer(base_dir)
        affixes = Affixes(**meta.ctx_affixes) if meta.ctx_affixes else None
        return cls(params, cfg, base_params, base_cfg, tok, ctx_encoder_layer_idx=meta.layer_idx,
                   chunk_tokens=chunk_tokens if chunk_tokens is not None else meta.chunk_tokens, affixes=affixes,
                   base_model_dir=base_dir, **kw)

    # ----- the reference's verbs -------------------------------------------------------------------------
    def prepare(self, documents: Sequence[str]) -> ContextBatch:
        return prepare_documents(self.tokenizer, documents, self.chunk_tokens, self.affixes)

    def make_adapter(self, documents: Union[str, Sequence[str]], *, chunk_scalers=None, bias_scaler=None
                     ) -> Adapter:
        """Documents → combined adapter (row c = document c), without storing it."""
        docs = [documents] if isinstance(documents, str) else list(documents)
        batch = self.prepare(docs)
        self.last_batch = batch
        return internalize_batch(self.hyper_params, self.hyper_cfg, self.base_params, self.base_cfg, batch,
                                 layer_idx=self.layer_idx, chunk_scalers=chunk_scalers, bias_scaler=bias_scaler,
                                 chunk_group=self.chunk_group, dtype=self.dtype)

    def internalize(self, documents: Union[str, Sequence[str]], *, chunk_scalers=None, bias_scaler=None) -> Adapter:
        """Internalises one document (or one per later prompt) and keeps the adapter for ``generate``."""
        self.adapter = self.make_adapter(documents, chunk_scalers=chunk_scalers, bias_scaler=bias_scaler)
        return self.adapter

    def reset(self) -> None:
        """Forgets the internalised context."""
        self.adapter = None
        self.last_batch = None

    def prompt_ids(self, prompt: str) -> list:
        """Chat-templated ids of one user turn + generation prompt."""
        from hyperlora_jax.d2l.context import _ids

        out = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                 add_generation_prompt=True, add_special_tokens=False)
        return _ids(out)

    def generate(self, prompt: Union[str, Sequence[str]], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, chat_template: bool = True, return_ids: bool = False):
        """Answers ``prompt`` (str, or a list) with the internalised adapter (the base model after ``reset``).

        A one-document adapter serves every prompt; an n-document adapter needs n prompts (row c ↔ prompt c).
        Returns the decoded text (a list for a list), or the new token ids with ``return_ids``.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        ids = [self.prompt_ids(p) if chat_template else
               [int(i) for i in self.tokenizer(p, add_special_tokens=True)["input_ids"]] for p in prompts]
        adapter = self.adapter
        if adapter is not None and adapter.batch_size != len(prompts):
            if adapter.batch_size != 1:
                raise ValueError(f"{adapter.batch_size} documents are internalised but {len(prompts)} prompts given")
            rows = np.zeros((len(prompts),), np.int32)
            adapter = adapter.take(rows)
        stop = list(self.base_cfg.eos_token_ids)  # config + generation_config eos ids
        if getattr(self.tokenizer, "eos_token_id", None) is not None and self.tokenizer.eos_token_id not in stop:
            stop.append(int(self.tokenizer.eos_token_id))
        out = _generate(self.base_params, self.base_cfg, ids, adapter=adapter, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, stop_tokens=stop, seed=seed, dtype=self.dtype)
        if return_ids:
            return out if not isinstance(prompt, str) else out[0]
        texts = [self.tokenizer.decode(o, skip_special_tokens=True) for o in out]
        return texts[0] if isinstance(prompt, str) else texts
