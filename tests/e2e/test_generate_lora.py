"""``python -m hyperlora_jax.cli.generate_lora``: parity with the reference's own adapter, text -> embedding -> adapter,
tiny-base logits at both scales (model.forward, import_peft, and PEFT loading the written directory), determinism,
refusals. Fixtures: tests/data/t2l (run_L, tiny_gte_bert, base_model_llama, L.npz, text_to_lora.npz)."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DATA
from hyperlora_jax.cli import convert, generate_lora as gl
from hyperlora_jax.io import safetensors_io
from hyperlora_jax.t2l import checkpoint as ckpt
from hyperlora_jax.t2l import hypernet as hn

T2L = os.path.join(DATA, "t2l")
BASE = os.path.join(T2L, "base_model_llama")
BERT = os.path.join(T2L, "tiny_gte_bert")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL_W, TOL_LOGITS = 1e-5, 1e-4
DESCS = json.load(open(os.path.join(T2L, "text_to_lora.json")))["descriptions"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("conv") / "t2l_L")
    assert convert.main(["t2l", os.path.join(T2L, "run_L"), dst]) == 0
    return dst


def _gen(converted, out, *descs, extra=()):
    return gl.main(["--t2l", converted, *sum((["--description", d] for d in descs), []), "--out", str(out),
                    "--encoder", BERT, "--model", BASE, *extra])


def test_cli_desc0_matches_reference_peft_adapter(converted, tmp_path):
    """As a user runs it: the encoder and base model come from the paths recorded in the checkpoint
    (relative to the working directory, here tests/data)."""
    out = tmp_path / "a0"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "hyperlora_jax.cli.generate_lora", "--t2l", converted, "--description",
                        DESCS[0], "--out", str(out)], capture_output=True, text=True, env=env, cwd=DATA, timeout=120)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors", "config.json"]
    ours = safetensors_io.load_file(str(out / "adapter_model.safetensors"))
    ref = safetensors_io.load_file(os.path.join(T2L, "peft_adapter_L_desc0", "adapter_model.safetensors"))
    assert sorted(ours) == sorted(ref) and len(ref) == 8
    for k in ref:
        assert ours[k].dtype == np.float32 and ours[k].shape == ref[k].shape
        np.testing.assert_allclose(ours[k], ref[k], atol=TOL_W, rtol=0)
    cfg = json.load(open(out / "adapter_config.json"))
    assert cfg["r"] == 8 and cfg["use_rslora"] is False and cfg["lora_alpha"] == pytest.approx(16 / 8 ** 0.5 * 8)
    meta = cfg["hyperlora_jax"]
    assert meta["scale_convention"] == "rslora" and meta["scale"] == pytest.approx(16 / 8 ** 0.5)
    assert meta["description"] == DESCS[0] and meta["trained_lora_alpha"] == 16.0
    assert json.load(open(out / "config.json")) == json.load(open(os.path.join(BASE, "config.json")))


def test_text_embedding_adapter_match_golden(converted):
    params, cfg, _ = ckpt.load(converted)
    t = np.load(os.path.join(T2L, "text_to_lora.npz"))
    emb, warns = gl.embed_descriptions(BERT, DESCS)
    assert warns == []
    for i in range(3):
        np.testing.assert_allclose(emb[i], t[f"desc{i}/task_emb"][0], atol=TOL_W, rtol=0)
    np.testing.assert_allclose(np.asarray(hn.encode_task(params, cfg, jnp.asarray(emb))),
                               np.concatenate([t[f"desc{i}/encoded_task_emb"] for i in range(3)]), atol=TOL_W)
    ad = hn.generate_adapters(params, cfg, jnp.asarray(emb))
    for m in cfg.target_modules:
        for i in range(3):
            np.testing.assert_allclose(np.asarray(ad.A[m][:, i]), t[f"desc{i}/A/{m}"], atol=TOL_W, rtol=0)
            np.testing.assert_allclose(np.asarray(ad.B[m][:, i]).transpose(0, 2, 1), t[f"desc{i}/B/{m}"],
                                       atol=TOL_W, rtol=0)


def test_several_descriptions_one_dir_each_and_deterministic(converted, tmp_path):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    assert _gen(converted, out1, *DESCS, extra=["--scale", "alpha_over_r"]) == 0
    assert _gen(converted, out2, *DESCS, extra=["--scale", "alpha_over_r"]) == 0
    assert sorted(os.listdir(out1)) == ["0", "1", "2"]
    t = np.load(os.path.join(T2L, "text_to_lora.npz"))
    for i in range(3):
        for name in ("adapter_config.json", "adapter_model.safetensors", "config.json"):
            assert (out1 / str(i) / name).read_bytes() == (out2 / str(i) / name).read_bytes(), (i, name)
        c = json.load(open(out1 / str(i) / "adapter_config.json"))
        assert c["lora_alpha"] == pytest.approx(16.0) and c["hyperlora_jax"]["scale_convention"] == "alpha_over_r"
        assert c["hyperlora_jax"]["description_index"] == i
        w = safetensors_io.load_file(str(out1 / str(i) / "adapter_model.safetensors"))
        np.testing.assert_allclose(w["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"],
                                   t[f"desc{i}/B/v_proj"][1], atol=TOL_W, rtol=0)
    # --overwrite replaces the whole tree atomically; no temp leftovers
    assert _gen(converted, out1, DESCS[1], extra=["--overwrite"]) == 0
    assert sorted(os.listdir(out1)) == ["adapter_config.json", "adapter_model.safetensors", "config.json"]
    assert sorted(os.listdir(tmp_path)) == ["one", "two"]


@pytest.fixture(scope="module")
def golden_adapter_dirs(converted, tmp_path_factory):
    """L.npz's task embeddings -> adapters at both scales, written as PEFT directories."""
    params, cfg, _ = ckpt.load(converted)
    z = np.load(os.path.join(T2L, "L.npz"))
    root = tmp_path_factory.mktemp("peft")
    out = {}
    for scale in hn.SCALES:
        ad = hn.generate_adapters(params, cfg, jnp.asarray(z["task_emb"]), scale)
        dirs = gl.write_peft_dirs(ad, str(root / scale), base_model_dir=BASE,
                                  metadata=[{"scale_convention": scale}] * 2)
        out[scale] = (ad, dirs)
    return out


def test_logits_both_scales_model_forward(golden_adapter_dirs):
    from hyperlora_jax.io.hf_load import load_model
    from hyperlora_jax.model import forward
    from hyperlora_jax.lora import stack_adapters
    from hyperlora_jax.io.peft_io import import_peft

    mcfg, mparams = load_model(BASE)
    z = np.load(os.path.join(T2L, "L.npz"))
    ids = jnp.asarray(z["input_ids"], jnp.int32)
    np.testing.assert_allclose(np.asarray(forward(mparams, mcfg, ids)["logits"]), z["logits_base"], atol=TOL_LOGITS)
    for scale, (ad, dirs) in golden_adapter_dirs.items():
        want = z[f"logits_lora_{scale}"]
        got = np.asarray(forward(mparams, mcfg, ids, adapter=ad)["logits"])
        np.testing.assert_allclose(got, want, atol=TOL_LOGITS, rtol=0, err_msg=scale)
        re = stack_adapters([import_peft(d, mcfg) for d in dirs])
        got2 = np.asarray(forward(mparams, mcfg, ids, adapter=re)["logits"])
        np.testing.assert_allclose(got2, want, atol=TOL_LOGITS, rtol=0, err_msg=scale)
    assert np.abs(z["logits_lora_rslora"] - z["logits_lora_alpha_over_r"]).max() > 0.1   # the scales differ


def test_logits_both_scales_peft_loads_written_dirs(golden_adapter_dirs):
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    z = np.load(os.path.join(T2L, "L.npz"))
    base = AutoModelForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32)
    base.eval()
    for scale, (_, dirs) in golden_adapter_dirs.items():
        for t, d in enumerate(dirs):
            model = PeftModel.from_pretrained(base, d)
            model.eval()
            with torch.no_grad():
                logits = model(torch.as_tensor(z["input_ids"][t:t + 1])).logits.numpy()
            np.testing.assert_allclose(logits[0], z[f"logits_lora_{scale}"][t], atol=TOL_LOGITS, rtol=0,
                                       err_msg=f"{scale} task {t}")
            base = model.unload()


def test_refusals_one_line_exit_2(converted, tmp_path, capsys):
    def err_of(code):
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    assert "empty" in err_of(_gen(converted, tmp_path / "e", DESCS[0], "   "))
    keep = tmp_path / "busy"
    keep.mkdir()
    (keep / "x.txt").write_text("precious")
    assert "not empty" in err_of(_gen(converted, keep, DESCS[0]))
    assert (keep / "x.txt").read_text() == "precious"
    # a base model with other shapes: hidden 128 (in features) and 3 layers
    bad = tmp_path / "bad_base"
    bad.mkdir()
    c = json.load(open(os.path.join(BASE, "config.json")))
    c.update(hidden_size=128, num_hidden_layers=3)
    (bad / "config.json").write_text(json.dumps(c))
    msg = err_of(gl.main(["--t2l", converted, "--description", DESCS[0], "--out", str(tmp_path / "m"),
                          "--encoder", BERT, "--model", str(bad)]))
    assert "does not fit" in msg and "n_layers 2" in msg and "q_proj in/out 64x64" in msg
    assert "encoder" in err_of(gl.main(["--t2l", converted, "--description", "x", "--out", str(tmp_path / "n"),
                                        "--encoder", str(tmp_path / "nowhere"), "--model", BASE]))
    assert sorted(os.listdir(tmp_path)) == ["bad_base", "busy"]     # nothing (half-)written


def test_long_description_truncated_with_warning(converted, tmp_path, capsys):
    long = " ".join(["translate the sentence"] * 40)
    assert _gen(converted, tmp_path / "o", long) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and "truncated" in err[0]
    assert os.path.isfile(tmp_path / "o" / "adapter_model.safetensors")
