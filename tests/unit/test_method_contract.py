"""The method contract (hyperlora_jax/methods/base.py): abstract methods are enforced, the defaults, the
registered methods subclass Method, Hook.every is checked. The trainer running hooks: tests/e2e/test_method_hooks.py."""
import importlib

import pytest

from hyperlora_jax.methods import METHODS
from hyperlora_jax.methods.base import Hook, Method


def test_method_needs_every_abstract_method():
    with pytest.raises(TypeError, match="abstract"):
        Method()

    class Partial(Method):  # no loss, no data_iterator, ...
        def __init__(self, config, mesh):
            pass

        def init_trainable(self, rng):
            return {}

    with pytest.raises(TypeError, match="loss"):
        Partial(None, None)


def test_defaults_and_registered_methods():
    class Minimal(Method):
        def __init__(self, config, mesh):
            pass

        def init_trainable(self, rng):
            return {}

        def frozen(self):
            return {}

        def loss(self, trainable, frozen, batch, rng):
            return 0.0, {"loss": 0.0}

        def fingerprint(self):
            return {"method": "minimal"}

        def data_iterator(self, process_index, process_count):
            return iter(())

    import numpy as np
    m = Minimal(None, None)
    assert m.flops_per_step(1000) == 0.0 and m.hooks() == []
    assert m.decay_mask({"w": np.zeros((2, 2)), "bias": np.zeros(2)}) == {"w": True, "bias": False}
    for name, target in METHODS.items():
        module, cls = target.split(":")
        assert issubclass(getattr(importlib.import_module(module), cls), Method), name


def test_hook_every_must_be_a_non_negative_int():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="every must be an integer >= 0"):
            Hook("h", bad, lambda ctx: None)
