"""The T2L trainer plug-in (method 't2l'): SFT steps of the tiny preset through ``train.run`` lower the loss; the SFT
loss of one batch equals a direct NumPy computation (label-smoothed CE on response tokens + L2 on A/B); the
reconstruction mode moves the generated LoRAs toward oracle LoRAs; chat formatting, truncation and masks."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DATA
from repo_configs import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = os.path.join(DATA, "t2l", "base_model_llama")


def tiny_config(preset="tiny"):
    return get_config("t2l", preset)

def _losses(workdir, key="loss"):
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r[key] for r in rows if key in r]


def test_published_presets_build():
    for p, (latent, head) in {"llama": (512, 2048), "mistral": (128, 512), "gemma": (512, 2048)}.items():
        c = tiny_config(p)
        assert (c.t2l.latent_size, c.t2l.head_in_size, c.learning_rate, c.batch_size) == (latent, head, 2.5e-5, 8)
        assert c.num_train_steps == 1_180_000 and c.warmup_steps == 236_000 and c.weight_decay == 1e-2
        assert (c.sft.label_smoothing, c.sft.l2_reg_generated_w, c.sft.neftune_noise_alpha) == (0.1, 1e-3, 5.0)
        assert c.t2l.r == 8 and c.t2l.lora_alpha == 16.0 and tuple(c.t2l.target_modules) == ("q_proj", "v_proj")


def test_sft_steps_decrease_loss(tmp_path):
    from hyperlora_jax.train import run
    c = tiny_config()
    c.num_train_steps = 12
    out = run(c, str(tmp_path / "w"))
    assert out["reason"] == "done" and out["step"] == 12
    ls = _losses(str(tmp_path / "w"))
    assert len(ls) == 12 and all(np.isfinite(ls))
    assert np.mean(ls[-3:]) < np.mean(ls[:3]) - 0.3, ls


@pytest.fixture(scope="module")
def method():
    from hyperlora_jax.methods.t2l import T2LMethod
    from hyperlora_jax.sharding import make_mesh
    c = tiny_config()
    c.t2l.dropout_rate = 0.0
    c.sft.neftune_noise_alpha = 0.0
    return T2LMethod(c, make_mesh(dict(c.mesh)))


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_sft_loss_equals_direct_computation(method):
    from hyperlora_jax.model import forward
    from hyperlora_jax.t2l.hypernet import generate_adapters

    frozen = method.frozen()
    params = method.init_trainable(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)   # perturb the heads so that B != 0 (a fresh L head gives delta W = 0)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
        if "heads" in jax.tree_util.keystr(p) else x, params)
    batch = {k: jnp.asarray(v) for k, v in next(method.data_iterator(0, 1)).items()}
    assert len(set(np.asarray(batch["task_index"]).tolist())) == 4          # 4 distinct tasks per batch
    loss, metrics = jax.jit(method.loss)(params, frozen, batch, jax.random.PRNGKey(1))

    emb = np.asarray(method.task_embs)[np.asarray(batch["desc_index"])]
    ad = generate_adapters(params, method.hcfg, jnp.asarray(emb), "rslora")
    assert float(jnp.abs(ad.B["q_proj"]).max()) > 1e-3
    logits = np.asarray(forward(frozen["base"], method.model_cfg, batch["tokens"], adapter=ad)["logits"], np.float64)
    tokens, mask = np.asarray(batch["tokens"]), np.asarray(batch["loss_mask"])
    logp = _np_log_softmax(logits[:, :-1])
    eps, per_ex = 0.1, []
    for b in range(tokens.shape[0]):
        pos = np.nonzero(mask[b, :-1])[0]
        assert len(pos) > 0
        target = np.full(logp.shape[-1], eps / logp.shape[-1])
        losses = []
        for t in pos:
            q = target.copy()
            q[tokens[b, t + 1]] += 1 - eps
            losses.append(-(q * logp[b, t]).sum())
        per_ex.append(np.mean(losses))
    l2 = sum(np.mean(np.asarray(ad.A[m], np.float64) ** 2) + np.mean(np.asarray(ad.B[m], np.float64) ** 2)
             for m in ("q_proj", "v_proj"))
    want = np.mean(per_ex) + 1e-3 * l2
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(metrics["l2"]), l2, rtol=1e-5)
    assert float(metrics["tokens"]) == mask[:, :-1].sum()


def test_sft_lora_dropout_is_applied(method):
    """sft.lora_dropout (the reference's 0.05 on every generated LoRA term's input) changes the loss, as a
    function of the step's rng."""
    frozen = method.frozen()
    r = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.05 * r.standard_normal(x.shape).astype(np.float32)
        if "heads" in jax.tree_util.keystr(p) else x, method.init_trainable(jax.random.PRNGKey(0)))
    batch = {k: jnp.asarray(v) for k, v in next(method.data_iterator(0, 1)).items()}
    loss = lambda key: float(method.loss(params, frozen, batch, jax.random.PRNGKey(key))[0])
    off = loss(1)
    method.sft_cfg.lora_dropout = 0.5
    try:
        on1, on1b, on2 = loss(1), loss(1), loss(2)
    finally:
        method.sft_cfg.lora_dropout = 0.0
    assert on1 == on1b and abs(on1 - off) > 1e-5 and abs(on1 - on2) > 1e-5


def test_neftune_noise_magnitude():
    from hyperlora_jax.neftune import neftune_noise
    x = jnp.zeros((2, 16, 64))
    n = np.asarray(neftune_noise(x, jax.random.PRNGKey(0), 5.0))
    bound = 5.0 / np.sqrt(16 * 64)
    assert np.abs(n).max() <= bound and np.abs(n).max() > 0.9 * bound and abs(n.mean()) < 0.1 * bound
    assert neftune_noise(x, jax.random.PRNGKey(0), 0.0) is x


def test_chat_format_truncation_and_mask(method):
    from hyperlora_jax.methods.t2l import truncate_longest_first_left
    p, r = truncate_longest_first_left(list(range(30)), list(range(100, 110)), 16)
    assert p == list(range(22, 30)) and r == list(range(102, 110))               # 8 + 8, beginnings dropped
    assert truncate_longest_first_left([1, 2], [3], 5) == ([1, 2], [3])
    ex = method.format_pair("hello world", "HELLO WORLD")
    tok = method.format_pair.tok
    n = int(ex["segment_ids"].sum())
    resp_positions = np.nonzero(ex["loss_mask"])[0] + 1
    assert resp_positions[-1] == n - 1
    assert tok.decode(ex["tokens"][resp_positions]) == "<|start_header_id|>assistant<|end_header_id|>\n\nHELLO " \
                                                        "WORLD<|eot_id|>"
    assert tok.decode(ex["tokens"][:resp_positions[0]]).startswith("<|begin_of_text|><|start_header_id|>system")


def _write_oracles(root, n_tasks, cfg):
    """Oracle LoRAs with a shared component plus a smaller task-specific one (as real per-task LoRAs)."""
    from hyperlora_jax.lora import Adapter
    from hyperlora_jax.io.peft_io import export_peft
    shapes = cfg.projection_shapes()
    common = np.random.default_rng(99)
    shared = {(m, w): common.normal(0, 0.1, (cfg.num_layers, 1, 8, shapes[m][0 if w == "A" else 1]))
              for m in ("q_proj", "v_proj") for w in "AB"}
    dirs = []
    for t in range(n_tasks):
        rng = np.random.default_rng(100 + t)
        ab = {w: {m: jnp.asarray(shared[m, w] + rng.normal(0, 0.02, shared[m, w].shape), jnp.float32)
                  for m in ("q_proj", "v_proj")} for w in "AB"}
        d = os.path.join(root, f"oracle{t}")
        export_peft(Adapter(ab["A"], ab["B"], jnp.ones((1,), jnp.float32)), d)
        dirs.append(d)
    return dirs


def _recon_config(tmp_path, z_score):
    from hyperlora_jax.config import ModelConfig
    c = tiny_config("tiny_recon")
    dirs = _write_oracles(str(tmp_path), 4, ModelConfig.from_pretrained(BASE))
    for k, d in zip(sorted(c.data.tasks.keys()), dirs):
        c.data.tasks[k].oracle_lora = d
    c.recon.z_score = z_score
    return c


def test_recon_moves_toward_oracles(tmp_path):
    from hyperlora_jax.train import run
    c = _recon_config(tmp_path, False)
    c.num_train_steps = 20
    out = run(c, str(tmp_path / "w"))
    ls = _losses(str(tmp_path / "w"))
    assert out["step"] == 20 and len(ls) == 20 and all(np.isfinite(ls))
    assert np.mean(ls[-3:]) < 0.5 * np.mean(ls[:3]), ls


def test_recon_z_score_targets_and_denormalisation(tmp_path):
    """A hypernet output equal to the z-scored oracle has zero loss; de-normalising recovers the oracle."""
    from hyperlora_jax.lora import Adapter
    from hyperlora_jax.methods.t2l import T2LMethod
    from hyperlora_jax.io.peft_io import import_peft
    from hyperlora_jax.sharding import make_mesh
    c = _recon_config(tmp_path, True)
    meth = T2LMethod(c, make_mesh(dict(c.mesh)))
    frozen = meth.frozen()
    idx = np.array([2, 0, 3], np.int32)
    st = meth._recon_stats
    A, B = {}, {}
    for m in ("q_proj", "v_proj"):
        s = st["stats"][m]
        A[m] = jnp.asarray(((st["A"][m][idx] - s["mean_A"]) / (s["std_A"] + 1e-10)).swapaxes(0, 1))
        B[m] = jnp.asarray(((st["B"][m][idx] - s["mean_B"]) / (s["std_B"] + 1e-10)).swapaxes(0, 1))
        assert abs(float(A[m].std()) - 1.0) < 0.2
    ad = Adapter(A, B, jnp.ones((3,), jnp.float32))
    loss, metrics = meth._recon_loss(ad, frozen, {"task_index": jnp.asarray(idx)})
    assert float(loss) < 1e-5 and float(metrics["raw_l1"]) < 1e-6
    task = sorted(c.data.tasks.keys()).index(sorted(c.data.tasks.keys())[2])
    oracle = import_peft(c.data.tasks[sorted(c.data.tasks.keys())[task]].oracle_lora, meth.model_cfg)
    s = st["stats"]["q_proj"]
    raw = A["q_proj"][:, :1] * (s["std_A"][:, None] + 1e-10) + s["mean_A"][:, None]
    np.testing.assert_allclose(np.asarray(raw), np.asarray(oracle.A["q_proj"]), atol=1e-6)
