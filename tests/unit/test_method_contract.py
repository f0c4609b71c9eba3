"""The method contract (hyperlora_jax/methods/base.py): abstract methods are enforced, the registered methods
subclass Method, and the trainer runs periodic hooks every N steps (metrics rows) and end hooks once."""
import importlib
import json
import os

import pytest

from hyperlora_jax.methods import METHODS
from hyperlora_jax.methods.base import Hook, HookContext, Method
from hyperlora_jax.methods.lm import LMMethod


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


class HookedLM(LMMethod):
    """The lm method plus a hook every 2 steps and one at the end, recording what they saw."""
    seen = []

    def hooks(self):
        return super().hooks() + [Hook("probe", 2, self.probe), Hook("last", 0, self.last)]

    def probe(self, ctx: HookContext):
        HookedLM.seen.append((ctx.step, ctx.is_main, ctx.workdir))
        return {"seen_step": ctx.step, "n_params": len(ctx.params)}

    def last(self, ctx: HookContext):
        return {"final_step": ctx.step}


def test_periodic_hook_writes_metric_rows_and_end_hooks_return(tmp_path, monkeypatch):
    from repo_configs import get_config

    from hyperlora_jax import train
    monkeypatch.setitem(METHODS, "hooked_lm", f"{__name__}:HookedLM")
    cfg = get_config("lm", "tiny")
    cfg.method, cfg.num_train_steps, cfg.checkpoint_every_steps, cfg.log_every_steps = "hooked_lm", 5, 0, 5
    cfg.async_checkpoints = False
    HookedLM.seen.clear()
    wd = str(tmp_path / "wd")
    out = train.run(cfg, wd)
    assert out["reason"] == "done" and out["step"] == 5
    assert HookedLM.seen == [(2, True, wd), (4, True, wd)]
    assert out["final_eval"] == {"export": None, "last": {"final_step": 5}}
    rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    hook_rows = [r for r in rows if "probe/seen_step" in r]
    assert hook_rows == [{"step": 2, "probe/seen_step": 2.0, "probe/n_params": float(len(out["state"]["params"]))},
                         {"step": 4, "probe/seen_step": 4.0, "probe/n_params": float(len(out["state"]["params"]))}]
    assert [r["step"] for r in rows if "loss" in r] == [5]
