"""``python -m hyperlora_jax.cli.export``: a trained D2L / T2L workdir -> the checkpoint directory internalize /
generate_lora / evaluate read; the exported hypernetwork gives the same LoRAs as the trained parameters in memory;
T2L records its training LoRA scale and generate_lora applies it by default; bad workdirs / steps / outputs are one
``error:`` line, exit status 2, nothing written.

Fixtures train the toy presets (configs/d2l.py:toy, configs/t2l.py:toy) for 2 steps with a checkpoint per step
(no final evaluation): ~25 s each on 2 busy CPU cores.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repo_configs import get_config
from hyperlora_jax import train
from hyperlora_jax.cli import common as cli, export, generate, generate_lora, internalize
from hyperlora_jax.io.peft_io import import_peft

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(name, preset):
    return get_config(name, preset)


def _short(config, steps=2):
    config.num_train_steps, config.checkpoint_every_steps, config.keep_checkpoints = steps, 1, 3
    config.async_checkpoints, config.log_every_steps, config.warmup_steps = False, 1, 1
    return config


def _tree(d):
    """{relative path: bytes} of every file below ``d`` (to assert that nothing changed)."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = fh.read()
    return out


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def d2l_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2l_run")
    config = _short(_config("d2l", "toy"))
    config.eval.lengths = ()  # no NIAH table at the end
    result = train.run(config, str(root / "wd"))
    assert result["step"] == 2
    return root, config, jax.device_get(result["state"]["params"])


@pytest.fixture(scope="module")
def t2l_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2l_run")
    config = _short(_config("t2l", "toy"))
    config.eval.methods = ()  # no accuracy table at the end
    result = train.run(config, str(root / "wd"))
    assert result["step"] == 2
    return root, config, jax.device_get(result["state"]["params"])


# ============================================================================================ D2L
def test_d2l_export_internalize_generate(d2l_run, tmp_path, capsys):
    root, config, params = d2l_run
    wd, out = str(root / "wd"), str(tmp_path / "d2l")
    assert export.main(["--workdir", wd, "--out", out]) == 0
    assert f"(step 2) -> {out}" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["config.json", "params.safetensors"]
    cfg = json.loads(open(os.path.join(out, "config.json")).read())
    assert cfg["format"] == "hyperlora_jax.d2l" and cfg["chunk_tokens"] == 64 and cfg["source"]["step"] == 2
    assert cfg["ctx_encoder_type"] == "per_layer_activations" and os.path.isdir(cfg["base_model"])

    from hyperlora_jax.d2l import checkpoint as d2l_checkpoint
    loaded, _, _ = d2l_checkpoint.load(out)
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(loaded), jax.tree_util.tree_leaves_with_path(params)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(flat_a, flat_b))

    # internalize a toy NIAH document through the CLI, then ask with the adapter through the generate CLI
    from hyperlora_jax.toy.niah import QUESTION, make_example
    ex = make_example(3, 0, 200)  # ~200 tokens: 4 chunks of 64
    doc = tmp_path / "doc.txt"
    doc.write_text(ex.document, encoding="utf-8")
    adapter_dir = str(tmp_path / "adapter")
    assert internalize.main(["--d2l", out, "--document", str(doc), "--out", adapter_dir]) == 0
    assert "4 chunks of <= 64 tokens" in capsys.readouterr().out

    # the same LoRA from the in-memory trained parameters, built from the training method itself
    from hyperlora_jax.d2l.api import DocToLoRA
    from hyperlora_jax.methods.d2l import D2LMethod
    from hyperlora_jax.sharding import make_mesh
    m = D2LMethod(config, make_mesh({"data": -1}))
    mem = DocToLoRA(params, m.hyper_cfg, m.base_params, m.base_cfg, m.tok, ctx_encoder_layer_idx=m.layer_idx,
                    chunk_tokens=int(config.data.chunk_tokens), affixes=m.affixes)
    want = mem.make_adapter(ex.document)
    got = import_peft(adapter_dir, m.base_cfg)
    assert got.rank == want.rank == 5 * 8
    for mod in want.modules:  # float32 through safetensors: bit-exact
        np.testing.assert_array_equal(np.asarray(got.A[mod]), np.asarray(want.A[mod]))
        np.testing.assert_array_equal(np.asarray(got.B[mod]), np.asarray(want.B[mod]))
    np.testing.assert_allclose(np.asarray(got.scale), np.asarray(want.scale), rtol=1e-6)

    # generate: no --model, the adapter's recorded base model (the toy base) is used
    assert cli.run(generate.main, ["--lora", adapter_dir, "--prompt", QUESTION, "--chat", "--max-new-tokens", "6"],
                   exit=False) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    mem.adapter = want
    assert last["tokens"] == mem.generate(QUESTION, max_new_tokens=6, return_ids=True)
    assert last["prompt_tokens"] == mem.prompt_ids(QUESTION)


def test_d2l_export_step_and_overwrite(d2l_run, tmp_path, capsys):
    root, _, _ = d2l_run
    wd, out = str(root / "wd"), str(tmp_path / "d2l_step1")
    # the workdir's checkpoints/ directory names the same run
    assert export.main(["--workdir", os.path.join(wd, "checkpoints"), "--out", out, "--step", "1"]) == 0
    assert json.loads(open(os.path.join(out, "config.json")).read())["source"]["step"] == 1
    step1 = _tree(out)
    assert export.main(["--workdir", wd, "--out", out]) == 2  # non-empty --out
    assert "exists and is not empty (pass --overwrite" in _err(capsys)
    assert _tree(out) == step1
    assert export.main(["--workdir", wd, "--out", out, "--overwrite"]) == 0
    assert json.loads(open(os.path.join(out, "config.json")).read())["source"]["step"] == 2
    assert _tree(out)["params.safetensors"] != step1["params.safetensors"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary left behind


def test_d2l_chunk_tokens_bounds(d2l_run, tmp_path, capsys):
    root, _, _ = d2l_run
    out = str(tmp_path / "d2l")
    assert export.main(["--workdir", str(root / "wd"), "--out", out]) == 0
    doc = tmp_path / "doc.txt"
    doc.write_text("the magic number is 1234. " * 8, encoding="utf-8")
    for n, msg in (("0", "--chunk-tokens must be positive, got 0"), ("-3", "--chunk-tokens must be positive"),
                   ("65", "--chunk-tokens 65 is more than this hypernetwork reads in one chunk (64: its chunk "
                          "length 64, the base model's window 128"),
                   ("100000", "--chunk-tokens 100000 is more than")):
        a = tmp_path / f"a{n}"
        assert internalize.main(["--d2l", out, "--document", str(doc), "--out", str(a), "--chunk-tokens", n]) == 2
        assert msg in _err(capsys)
        assert not a.exists()
    assert internalize.main(["--d2l", out, "--document", str(doc), "--out", str(tmp_path / "ok"),
                             "--chunk-tokens", "32"]) == 0


def test_export_bad_workdirs_and_outputs(d2l_run, tmp_path, capsys):
    root, _, _ = d2l_run
    wd = str(root / "wd")
    before = _tree(wd)
    empty = tmp_path / "empty"
    empty.mkdir()
    nocfg = tmp_path / "nocfg"
    shutil.copytree(wd, nocfg)
    os.remove(nocfg / "config.json")
    parent = tmp_path / "parent"
    shutil.copytree(wd, parent / "wd")
    cases = [
        (["--workdir", str(tmp_path / "missing")], "does not exist or is not a directory"),
        (["--workdir", str(empty)], "holds no checkpoint (expected"),
        (["--workdir", wd, "--step", "7"], "has no step 7 (steps: 1, 2)"),
        (["--workdir", wd, "--step", "-1"], "--step must be >= 0, got -1"),
        (["--workdir", str(nocfg)], "has no config.json"),
    ]
    for args, msg in cases:
        out = tmp_path / "out"
        assert export.main([*args, "--out", str(out)]) == 2, args
        assert msg in _err(capsys), args
        assert not out.exists()
    for out, msg in ((wd, "is the training workdir itself"), (os.path.join(wd, "export"), "is inside the training "
                                                                                          "workdir"),
                     (os.path.join(wd, "checkpoints"), "is inside the training workdir")):
        assert export.main(["--workdir", wd, "--out", out, "--overwrite"]) == 2
        assert msg in _err(capsys)
    assert export.main(["--workdir", str(parent / "wd"), "--out", str(parent), "--overwrite"]) == 2
    assert "contains the training workdir" in _err(capsys)
    assert _tree(wd) == before and (parent / "wd" / "config.json").is_file()


def test_export_refuses_lm_run(tmp_path, capsys):
    config = _config("lm", "tiny")
    config.num_train_steps, config.async_checkpoints = 0, False
    train.run(config, str(tmp_path / "lm"))
    p = subprocess.run([sys.executable, "-m", "hyperlora_jax.cli.export", "--workdir", str(tmp_path / "lm"), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert "is a 'lm' run: only d2l and t2l runs have a hypernetwork to export" in p.stderr
    assert not (tmp_path / "out").exists()


# ============================================================================================ T2L
def test_t2l_export_generate_lora_uses_the_trained_scale(t2l_run, tmp_path, capsys):
    from hyperlora_jax.methods.t2l import T2LMethod
    from hyperlora_jax.sharding import make_mesh
    from hyperlora_jax.t2l.hypernet import generate_adapters

    root, config, params = t2l_run
    out = str(tmp_path / "t2l")
    assert export.main(["--workdir", str(root / "wd"), "--out", out]) == 0
    cfg = json.loads(open(os.path.join(out, "config.json")).read())
    assert cfg["format"] == "hyperlora_jax.t2l" and cfg["lora_scale"] == "alpha_over_r" == config.t2l.scale
    assert cfg["encoder_pooling"] == "mean" and os.path.isdir(cfg["emb_model"]) and os.path.isdir(cfg["model_dir"])

    m = T2LMethod(config, make_mesh({"data": -1}))
    desc = m.data.descriptions[0]
    lora = str(tmp_path / "lora")
    assert generate_lora.main(["--t2l", out, "--description", desc, "--out", lora]) == 0  # defaults only
    assert "(alpha_over_r)" in capsys.readouterr().out
    got = import_peft(lora, m.model_cfg)
    want = generate_adapters(params, m.hcfg, jnp.asarray(m.task_embs[:1]), m.scale)  # what training applied
    np.testing.assert_allclose(np.asarray(got.scale), np.asarray(want.scale), rtol=1e-6)
    assert float(got.scale[0]) == pytest.approx(m.hcfg.lora_alpha / m.hcfg.r)
    for mod in want.modules:  # the description embedded alone vs in the training batch of 400: ~1e-7 apart
        np.testing.assert_allclose(np.asarray(got.A[mod]), np.asarray(want.A[mod]), atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(got.B[mod]), np.asarray(want.B[mod]), atol=1e-5, rtol=1e-4)

    # an explicit --scale still overrides the recorded one
    lora2 = str(tmp_path / "lora_rs")
    assert generate_lora.main(["--t2l", out, "--description", desc, "--out", lora2, "--scale", "rslora"]) == 0
    assert float(import_peft(lora2, m.model_cfg).scale[0]) == pytest.approx(m.hcfg.scale("rslora"))

    # chat with it: no --model (the adapter records the toy strings base)
    capsys.readouterr()
    assert cli.run(generate.main, ["--lora", lora, "--prompt", "hello", "--chat", "--max-new-tokens", "8"],
                   exit=False) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"]


def test_t2l_export_evaluate_reads_it(t2l_run, tmp_path):
    """The exported directory is what ``evaluate --checkpoint`` / eval.systems.load_t2l read as a converted T2L."""
    from hyperlora_jax.eval.systems import checkpoint_kind, load_t2l

    root, config, params = t2l_run
    out = str(tmp_path / "t2l")
    assert export.main(["--workdir", str(root / "wd"), "--out", out]) == 0
    assert checkpoint_kind(out) == ("t2l", out)
    system = load_t2l(config, out)
    a, b = jax.tree_util.tree_leaves(system.params), jax.tree_util.tree_leaves(params)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
