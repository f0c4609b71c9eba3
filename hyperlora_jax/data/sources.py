"""The one registry of training data sources (and of the evaluations tied to a source), per method kind.

A *source* is ``fn(formatter, data_cfg, seed)``: ``data_cfg`` is the run's ``config.data``, ``seed`` the run seed, and
``formatter`` what examples need from the method, never the method itself:

  kind   formatter                                          returns
  lm     ``config.ModelConfig`` of the trained model          (example(i) -> dict, size or None)
  t2l    ``methods.t2l.ChatFormatter`` (SFT rows), or None     ``methods.t2l.TaskData``
         for reconstruction (task / description rows only)
  d2l    ``methods.d2l_data.D2LFormatter``                    (example(i) -> dict, size or None)

Examples are pure functions of (seed, i) returning fixed-shape numpy arrays, so a resumed run sees the same data. The
``lora`` method reads the ``t2l`` sources. An *evaluator* is ``fn(method, trainable, frozen, workdir) -> dict | None``,
registered for a method (``t2l``, ``d2l``, ``lora``) under a source name and run by that method after training.

Sources and evaluators register themselves with the decorators below when their module is imported; the first
lookup imports every module of ``SOURCE_MODULES`` (the methods' own sources and the toy worlds), so the methods never
import the toy package.
"""
from __future__ import annotations

import importlib
from typing import Callable

KINDS = ("lm", "t2l", "d2l")
EVALUATOR_KINDS = ("t2l", "d2l", "lora")
SOURCE_MODULES = ("hyperlora_jax.methods.lm", "hyperlora_jax.methods.t2l", "hyperlora_jax.methods.d2l_sources",
                  "hyperlora_jax.toy.niah_sources", "hyperlora_jax.toy.string_sources",
                  "hyperlora_jax.toy.facts_source")

_SOURCES: dict[str, dict[str, Callable]] = {k: {} for k in KINDS}
_EVALUATORS: dict[str, dict[str, Callable]] = {k: {} for k in EVALUATOR_KINDS}
_loaded = False


class UnknownSourceError(ValueError):
    """A data source name that no module registered for the method kind; the message lists the known ones."""


def _table(tables: dict, kind: str, what: str) -> dict:
    if kind not in tables:
        raise ValueError(f"unknown {what} kind {kind!r} (known: {', '.join(tables)})")
    return tables[kind]


def register_source(kind: str, name: str):
    """Decorator: registers ``fn(formatter, data_cfg, seed)`` as source ``name`` of method kind ``kind``."""
    table = _table(_SOURCES, kind, "data source")

    def deco(fn):
        table[name] = fn
        return fn
    return deco


def register_evaluator(kind: str, name: str):
    """Decorator: registers ``fn(method, trainable, frozen, workdir)`` run by method ``kind`` after training on
    source ``name``."""
    table = _table(_EVALUATORS, kind, "evaluator")

    def deco(fn):
        table[name] = fn
        return fn
    return deco


def _load_all():
    global _loaded
    if not _loaded:
        for module in SOURCE_MODULES:
            importlib.import_module(module)
        _loaded = True


def source_names(kind: str) -> list[str]:
    """Sorted names of every source of method kind ``kind``."""
    table = _table(_SOURCES, kind, "data source")
    _load_all()
    return sorted(table)


def get_source(kind: str, name: str) -> Callable:
    """Source ``name`` of method kind ``kind``; UnknownSourceError listing the known names if there is none."""
    table = _table(_SOURCES, kind, "data source")
    _load_all()
    if name not in table:
        raise UnknownSourceError(f"unknown {kind} data source {name!r} (known: {', '.join(sorted(table))})")
    return table[name]


def get_evaluator(kind: str, name: str) -> Callable | None:
    """The evaluator method ``kind`` runs after training on source ``name``, or None."""
    table = _table(_EVALUATORS, kind, "evaluator")
    _load_all()
    return table.get(name)
