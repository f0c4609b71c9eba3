"""D2L end to end: convert the golden reference run, internalise through the CLI, check against PEFT (torch) and the
fixtures; the notebook API; bad inputs (one clear error each, nothing written)."""
import json
import os
import pathlib
import shutil
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from hyperlora_jax.cli import convert
from hyperlora_jax.cli import internalize as cli
from hyperlora_jax.d2l import checkpoint as d2l_ckpt
from hyperlora_jax.d2l.checkpoint_map import config_from_state_dict, torch_to_flax
from hyperlora_jax.model import forward
from hyperlora_jax.io.peft_io import import_peft

DATA = pathlib.Path(__file__).parent.parent / "data" / "d2l"
RUN = DATA / "run_per_layer_activations"
MODEL = DATA / "tiny_gemma2"


@pytest.fixture(scope="module")
def golden():
    z = np.load(DATA / "per_layer_activations.npz")
    meta = json.loads((DATA / "per_layer_activations.json").read_text())
    return z, meta


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    dst = tmp_path_factory.mktemp("conv") / "d2l"
    assert convert.main(["d2l", str(RUN / "checkpoint-1"), str(dst)]) == 0
    return dst


@pytest.fixture(scope="module")
def internalized(converted, golden, tmp_path_factory):
    """doc1 of the fixture (3 chunks at chunk length 80) through the CLI."""
    _, meta = golden
    root = tmp_path_factory.mktemp("cli")
    doc = root / "doc1.txt"
    doc.write_text(meta["documents"][1], encoding="utf-8")
    out = root / "adapter"
    rc = cli.main(["--d2l", str(converted), "--document", str(doc), "--out", str(out), "--model", str(MODEL),
                   "--chunk-tokens", "80"])
    assert rc == 0
    return doc, out


def test_converted_checkpoint(converted, golden):
    z, meta = golden
    cfg_json = json.loads((converted / "config.json").read_text())
    assert cfg_json["format"] == "hyperlora_jax.d2l" and cfg_json["base_model"] == "d2l/tiny_gemma2"
    assert cfg_json["ctx_encoder_type"] == "per_layer_activations" and cfg_json["layer_idx"] is None
    assert cfg_json["r"] == 2 and cfg_json["target_modules"] == ["down_proj"]
    assert cfg_json["lora_alpha"] == pytest.approx(meta["lora_alpha"])
    assert cfg_json["chunk_tokens"] is None  # args.yaml max_ctx_chunk_len = -1 → base max_position_embeddings
    assert cfg_json["source"]["args_yaml"].endswith("run_per_layer_activations/args.yaml")
    params, cfg, m = d2l_ckpt.load(str(converted))
    sd = {k[len("hypernet/"):]: z[k] for k in z.files if k.startswith("hypernet/")}
    ref = torch_to_flax(sd, config_from_state_dict(sd, lora_alpha=meta["lora_alpha"]))
    assert cfg == config_from_state_dict(sd, lora_alpha=meta["lora_alpha"])
    flat = lambda t, p=(): sum((flat(v, p + (k,)) for k, v in t.items()), []) if isinstance(t, dict) else [(p, t)]
    got, want = dict(flat(params)), dict(flat(ref))
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg="/".join(k))
    assert not [p for p in os.listdir(converted.parent) if p.startswith(".tmp-")]  # no leftovers


def test_cli_adapter_equals_fixture_and_peft(internalized, golden):
    import peft
    import torch
    import transformers

    z, meta = golden
    _, out = internalized
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["r"] == 8 and conf["target_modules"] == ["down_proj"] and conf["use_rslora"] is False
    assert conf["lora_alpha"] / conf["r"] == pytest.approx(meta["lora_alpha"], rel=1e-6)
    assert conf["hyperlora_jax"]["n_chunks"] == 3
    from hyperlora_jax.io.hf_load import load_model

    cfg, params = load_model(str(MODEL))
    ad = import_peft(str(out), cfg)  # A [L, 1, 8, 96]: chunk blocks then the bias block
    np.testing.assert_allclose(np.asarray(ad.A["down_proj"][:, 0]), z["combined/A/down_proj"][1], atol=1e-5)
    np.testing.assert_allclose(np.asarray(ad.B["down_proj"][:, 0]), z["combined/B/down_proj"][1], atol=1e-5)
    q = z["query_input_ids"][1:2]
    ours = np.asarray(forward(params, cfg, jnp.asarray(q), adapter=ad)["logits"])
    assert np.abs(ours - z["logits_lora"][1:2]).max() < 1e-4
    base = transformers.AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.float32,
                                                             attn_implementation="eager").eval()
    model = peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        theirs = model(torch.tensor(q)).logits.float().numpy()
    assert np.abs(theirs - ours).max() < 1e-4


def test_recorded_base_model_path_and_api(converted, golden, monkeypatch):
    """No --model: the recorded relative path 'd2l/tiny_gemma2' resolves from tests/data; the notebook verbs."""
    from hyperlora_jax.d2l.api import DocToLoRA
    from hyperlora_jax.generation import generate

    z, meta = golden
    monkeypatch.chdir(DATA.parent)
    d2l = DocToLoRA.from_pretrained(str(converted), chunk_tokens=80)
    assert d2l.chunk_tokens == 80 and d2l.layer_idx is None
    ad = d2l.internalize(meta["documents"][1])
    assert ad.rank == 8 and ad.batch_size == 1
    np.testing.assert_allclose(np.asarray(ad.B["down_proj"][:, 0]), z["combined/B/down_proj"][1], atol=1e-5)
    q = z["query_input_ids"][1].tolist()
    assert d2l.prompt_ids(meta["queries"][1]) == q
    stop = list(d2l.base_cfg.eos_token_ids)
    with_doc = d2l.generate(meta["queries"][1], max_new_tokens=5, return_ids=True)
    assert with_doc == generate(d2l.base_params, d2l.base_cfg, [q], adapter=ad, max_new_tokens=5,
                                stop_tokens=stop)[0]
    d2l.reset()
    assert d2l.adapter is None
    plain = d2l.generate(meta["queries"][1], max_new_tokens=5, return_ids=True)
    assert plain == generate(d2l.base_params, d2l.base_cfg, [q], max_new_tokens=5, stop_tokens=stop)[0]
    assert d2l.tokenizer.decode(plain, skip_special_tokens=True) == \
        d2l.generate(meta["queries"][1], max_new_tokens=5)


# ------------------------------------------------------------------------------------------------ bad input
def _cli(converted, doc, out, *extra):
    return cli.main(["--d2l", str(converted), "--document", str(doc), "--out", str(out), "--model", str(MODEL),
                     *extra])


def test_empty_and_non_utf8_documents(converted, tmp_path, capsys):
    for name, data, msg in (("empty.txt", b"", "is empty"), ("blank.txt", b" \n\t\n", "is empty"),
                            ("latin1.txt", "caf\u00e9 cr\u00e8me".encode("latin-1"), "not valid UTF-8")):
        doc = tmp_path / name
        doc.write_bytes(data)
        out = tmp_path / f"out_{name}"
        assert _cli(converted, doc, out) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and msg in err, err
        assert not out.exists()


def test_chunk_length_smaller_than_affixes(converted, internalized, tmp_path, capsys):
    doc, _ = internalized
    out = tmp_path / "out"
    assert _cli(converted, doc, out, "--chunk-tokens", "10") == 2
    err = capsys.readouterr().err
    assert "chunk length 10 is not larger than the chat-template affixes" in err and "15 tokens" in err
    assert not out.exists()


def test_existing_out_refused_unless_overwrite(converted, internalized, capsys):
    doc, out = internalized
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}
    assert _cli(converted, doc, out, "--chunk-tokens", "80") == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before
    assert _cli(converted, doc, out, "--chunk-tokens", "80", "--overwrite") == 0  # same program: cached
    assert (out / "adapter_model.safetensors").read_bytes() == before["adapter_model.safetensors"]


def test_convert_refuses_existing_destination(converted, capsys):
    assert convert.main(["d2l", str(RUN / "checkpoint-1"), str(converted)]) == 2
    assert "not empty" in capsys.readouterr().err


def _run_with_pickle(tmp_path, data_pkl: bytes):
    """A run dir whose pytorch_model.bin is the golden archive with data.pkl replaced."""
    ck = tmp_path / "run" / "checkpoint-1"
    ck.mkdir(parents=True)
    shutil.copy(RUN / "args.yaml", ck.parent / "args.yaml")
    with zipfile.ZipFile(RUN / "checkpoint-1" / "pytorch_model.bin") as src, \
            zipfile.ZipFile(ck / "pytorch_model.bin", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else data)
    return ck


def _golden_pickle() -> bytes:
    with zipfile.ZipFile(RUN / "checkpoint-1" / "pytorch_model.bin") as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))


@pytest.mark.parametrize("case", ["os.system", "near-miss class", "unknown peft class"])
def test_convert_refuses_foreign_pickle_globals(tmp_path, capsys, case):
    marker = tmp_path / "pwned"
    pkl = _golden_pickle()
    if case == "os.system":
        payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    elif case == "near-miss class":
        assert pkl.count(b"CtxEncoderArguments") == 1
        payload = pkl.replace(b"CtxEncoderArguments", b"CtxEncoderArgumentz")
    else:
        assert pkl.count(b"LoraRuntimeConfig") == 1
        payload = pkl.replace(b"LoraRuntimeConfig", b"LoraRuntimeConfiX")
    ck = _run_with_pickle(tmp_path, payload)
    dst = tmp_path / "dst"
    assert convert.main(["d2l", str(ck), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not on the allow-list" in err and err.count("\n") == 1, err
    assert not marker.exists() and not dst.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
