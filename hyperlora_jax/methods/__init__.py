"""Training methods: the method-specific part of the trainer (batch -> loss and metrics) as plug-ins.

A method is a class with:
  __init__(config, mesh)               build frozen models, tokenizers, data sources
  fingerprint() -> dict                what a checkpoint must match to be resumed by this run
  init_trainable(rng) -> params        trainable parameter tree (float32 master copy); jit-able
  frozen() -> pytree                   frozen arrays (already placed on the mesh); never differentiated/saved
  loss(trainable, frozen, batch, rng) -> (loss, metrics)   per micro-batch; metrics: dict of scalars
  data_iterator(process_index, process_count) -> IndexedBatchIterator (host-local batches)
  flops_per_step(batch) -> float       model FLOPs of one optimizer step (for the MFU estimate), or 0
  evaluate(trainable, frozen, workdir, step) -> dict   (optional)
"""
from __future__ import annotations

import importlib

METHODS = {"lm": "hyperlora_jax.methods.lm:LMMethod", "t2l": "hyperlora_jax.methods.t2l:T2LMethod",
           "d2l": "hyperlora_jax.methods.d2l:D2LMethod", "lora": "hyperlora_jax.methods.lora_bank:LoRABankMethod"}


def register(name: str, target: str):
    METHODS[name] = target


def get_method(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)
