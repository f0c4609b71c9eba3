"""The method contract (hyperlora_jax/methods/base.py): abstract methods are enforced, the defaults, the
registered methods subclass Method, Hook.every is checked, config keys of the removed periodic-eval plumbing are
refused. The trainer running hooks: tests/e2e/test_method_hooks.py."""
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


@pytest.mark.parametrize("key, value", [("eval_every_steps", 100), ("best_metric", "loss"), ("best_mode", "min")])
def test_a_config_still_setting_a_removed_key_is_refused_by_name(key, value):
    """Config files written for the removed periodic-eval / best-checkpoint plumbing get one error naming the key
    and pointing at hooks, instead of being silently ignored."""
    from hyperlora_jax.config_defaults import TrainConfigError, trainer_defaults, validate
    c = trainer_defaults()
    c.method = "lm"
    validate(c)
    c[key] = value
    with pytest.raises(TrainConfigError, match=rf"^--config\.{key} was removed: .*Hook.*, got {value!r}$"):
        validate(c)
