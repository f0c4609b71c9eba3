"""The trainer runs a method's hooks (hyperlora_jax/methods/base.py): a periodic hook after every N-th step, its
dict as metrics rows, and the end hooks once, their results in ``run()``'s ``final_eval``. One tiny lm run."""
import json
import os

from hyperlora_jax.methods import METHODS
from hyperlora_jax.methods.base import Hook, HookContext
from hyperlora_jax.methods.lm import LMMethod


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
