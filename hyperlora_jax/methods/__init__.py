"""Training methods: the method-specific part of the trainer (batch -> loss and metrics) as plug-ins.

A method subclasses ``hyperlora_jax.methods.base.Method`` (the contract: constructor, init_trainable, frozen, loss,
fingerprint, data_iterator; defaults for decay_mask, flops_per_step and hooks) and is registered here by name
(``config.method``).
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
