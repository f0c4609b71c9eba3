"""``python -m hyperlora_jax.cli.convert t2l``: import of the golden official run, the project format, refusals."""
import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DATA
from hyperlora_jax.cli import convert
from hyperlora_jax.io import safetensors_io
from hyperlora_jax.t2l import checkpoint as ckpt
from hyperlora_jax.t2l import hypernet as hn

T2L = os.path.join(DATA, "t2l")
RUN = os.path.join(T2L, "run_L")
TOL = 1e-5
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*argv):
    """Runs the converter as a user would; returns (exit code, stdout, stderr)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "hyperlora_jax.cli.convert", *argv], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=120)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("conv") / "t2l_L")
    assert convert.main(["t2l", RUN, dst]) == 0
    return dst


def test_convert_reproduces_golden_L(converted):
    params, cfg, config = ckpt.load(converted)
    assert sorted(os.listdir(converted)) == ["config.json", "params.safetensors"]
    assert cfg.variant == "L" and cfg.target_modules == ("v_proj", "q_proj")   # adapter_config.json order
    assert cfg.features == {"v_proj": (64, 32), "q_proj": (64, 64)} and cfg.n_layers == 2 and cfg.r == 8
    assert config["emb_model"] == "t2l/tiny_gte_bert" and config["model_dir"] == "t2l/base_model_llama"
    assert config["lora_alpha"] == 16.0 and config["r"] == 8 and config["target_modules"] == ["v_proj", "q_proj"]
    z = np.load(os.path.join(T2L, "L.npz"))
    for source, fn in (("task_emb", hn.generate_adapters), ("encoded_task_emb", hn.generate_adapters_from_encoded)):
        ad = fn(params, cfg, jnp.asarray(z[source]))
        for m in cfg.target_modules:
            a = np.asarray(ad.A[m]).transpose(1, 0, 2, 3)       # -> [task, layer, r, in]
            b = np.asarray(ad.B[m]).transpose(1, 0, 3, 2)       # -> [task, layer, out, r] (PEFT)
            np.testing.assert_allclose(a, z[f"A/{m}"], atol=TOL, rtol=0)
            np.testing.assert_allclose(b, z[f"B/{m}"], atol=TOL, rtol=0)
    flat = safetensors_io.load_file(os.path.join(converted, "params.safetensors"))
    sd = np.load(os.path.join(T2L, "L.npz"))
    np.testing.assert_array_equal(flat["mixer/fc1/kernel"], sd["hypermod/mixer.1.weight"].T)
    np.testing.assert_array_equal(flat["type_emb/embedding"], sd["hypermod/layer_type_encoder.0.weight"])


def test_converted_text_to_lora_and_peft_adapter(converted):
    """Descriptions' task embeddings -> the reference gen_lora outputs and the saved PEFT adapter of description 0."""
    params, cfg, _ = ckpt.load(converted)
    t = np.load(os.path.join(T2L, "text_to_lora.npz"))
    emb = np.concatenate([t[f"desc{i}/task_emb"] for i in range(3)])
    ad = hn.generate_adapters(params, cfg, jnp.asarray(emb))
    peft = safetensors_io.load_file(os.path.join(T2L, "peft_adapter_L_desc0", "adapter_model.safetensors"))
    for m in cfg.target_modules:
        for i in range(3):
            np.testing.assert_allclose(np.asarray(ad.A[m][:, i]), t[f"desc{i}/A/{m}"], atol=TOL, rtol=0)
            np.testing.assert_allclose(np.asarray(ad.B[m][:, i]).transpose(0, 2, 1), t[f"desc{i}/B/{m}"],
                                       atol=TOL, rtol=0)
        for layer in range(cfg.n_layers):
            key = f"base_model.model.model.layers.{layer}.self_attn.{m}"
            np.testing.assert_allclose(np.asarray(ad.A[m][layer, 0]), peft[f"{key}.lora_A.weight"], atol=TOL)
            np.testing.assert_allclose(np.asarray(ad.B[m][layer, 0]).T, peft[f"{key}.lora_B.weight"], atol=TOL)


def test_project_format_roundtrip_is_exact(converted, tmp_path):
    params, cfg, config = ckpt.load(converted)
    dst = str(tmp_path / "again")
    ckpt.save(dst, params, cfg, {"emb_model": config["emb_model"], "model_dir": config["model_dir"]})
    p2, cfg2, config2 = ckpt.load(dst)
    assert cfg2 == cfg and config2["emb_model"] == config["emb_model"]
    for k, v in safetensors_io.load_file(os.path.join(converted, "params.safetensors")).items():
        np.testing.assert_array_equal(v, safetensors_io.load_file(os.path.join(dst, "params.safetensors"))[k])
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []     # no temp leftovers
    with pytest.raises(ValueError, match="not empty"):
        ckpt.save(dst, params, cfg)


def test_refuses_non_empty_destination(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("precious")
    code, out, err = _cli("t2l", RUN, str(dst))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "not empty" in err and "--overwrite" in err
    assert (dst / "keep.txt").read_text() == "precious"
    assert convert.main(["t2l", RUN, str(dst), "--overwrite"]) == 0
    assert sorted(os.listdir(dst)) == ["config.json", "params.safetensors"]
    assert [n for n in os.listdir(tmp_path) if n != "dst"] == []


def _copy_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    for f in run.iterdir():
        f.chmod(0o644)
    return run


def test_refuses_wrong_shapes(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    run = _copy_run(tmp_path)
    sd = torch.load(run / "hypermod.pt", weights_only=True)
    sd["mixer.1.weight"] = sd["mixer.1.weight"][:-1]               # [127, 32] instead of [128, 32]
    sd["heads.q_proj.bias"] = torch.zeros(1000)                     # instead of [1024]
    del sd["mlp2.mlp.0.bias"]
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, run / "hypermod.pt")
    with pytest.raises(ValueError) as exc:
        ckpt.import_run(str(run))
    msg = str(exc.value)
    for part in ("mixer.1.weight: shape (127, 32), expected (128, 32)", "heads.q_proj.bias: shape (1000,)",
                 "missing mlp2.mlp.0.bias", "unexpected key extra.weight"):
        assert part in msg, msg
    dst = tmp_path / "out"
    assert convert.main(["t2l", str(run), str(dst)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "mixer.1.weight" in err and "heads.q_proj.bias" in err
    assert not dst.exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_pickle_with_foreign_global(tmp_path):
    torch = pytest.importorskip("torch")
    run = _copy_run(tmp_path)
    marker = tmp_path / "pwned"
    sd = torch.load(run / "hypermod.pt", weights_only=True)
    sd["mixer.1.weight"] = _Evil(marker)
    torch.save(sd, run / "hypermod.pt")
    dst = tmp_path / "out"
    code, _, err = _cli("t2l", str(run), str(dst))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "not on the allow-list" in err and "system'" in err
    assert not marker.exists() and not dst.exists()


def test_module_order_override_and_missing_files(tmp_path):
    code_default = ckpt.import_run(RUN)
    swapped = ckpt.import_run(RUN, module_order=["q_proj", "v_proj"])
    assert swapped[1].target_modules == ("q_proj", "v_proj") and swapped[2]["source"]["module_order_from"] == "argument"
    # the same type-embedding rows, now bound to the other module
    np.testing.assert_array_equal(np.asarray(code_default[0]["type_emb"]["embedding"]),
                                  np.asarray(swapped[0]["type_emb"]["embedding"]))
    with pytest.raises(ValueError, match="permutation|does not match"):
        ckpt.import_run(RUN, module_order=["q_proj", "k_proj"])
    with pytest.raises(ValueError, match="missing args.yaml"):
        empty = tmp_path / "r"
        empty.mkdir()
        (empty / "hypermod.pt").write_bytes(b"")
        (empty / "adapter_config.json").write_text("{}")
        ckpt.import_run(str(empty))


def test_safe_yaml(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("exp: !!python/object/apply:ctx_to_lora.configs.ExperimentSetup\n- hyper_lora\n"
                 "t: !!python/tuple [1, 2]\nx: 3\n")
    assert ckpt.load_yaml(str(p)) == {"exp": "hyper_lora", "t": (1, 2), "x": 3}
    marker = tmp_path / "pwned"
    for bad in (f"x: !!python/object/new:os.system [touch {marker}]\n", "x: !!python/name:os.system\n",
                f"x: !!python/object/apply:os.system [touch {marker}, 2]\n"):
        p.write_text(bad)
        with pytest.raises(ValueError):
            ckpt.load_yaml(str(p))
    assert not marker.exists()


def test_variant_flags():
    assert ckpt._variant({}, "x") == "L"
    assert ckpt._variant({"shared_AB_head": True}, "x") == "M"
    assert ckpt._variant({"shared_AB_head": True, "autoreg_gen": True, "learnable_pos_emb": True}, "x") == "S"
    with pytest.raises(ValueError, match="unsupported"):
        ckpt._variant({"shared_AB_head": True, "autoreg_gen": True}, "x")      # RoPE S


def test_json_config_is_plain(converted):
    with open(os.path.join(converted, "config.json")) as f:
        config = json.load(f)
    assert config["format"] == "hyperlora_jax.t2l" and config["hypernet"]["variant"] == "L"
    assert config["scales"] == {"rslora": pytest.approx(16 / 8 ** 0.5), "alpha_over_r": 2.0}


def test_checkpoint_subdirectory_uses_run_configs(tmp_path):
    run = _copy_run(tmp_path)
    sub = run / "checkpoints" / "it_10"
    sub.mkdir(parents=True)
    (run / "hypermod.pt").rename(sub / "hypermod.pt")
    params, cfg, meta = ckpt.import_run(str(sub))
    assert cfg.target_modules == ("v_proj", "q_proj") and meta["emb_model"] == "t2l/tiny_gte_bert"
