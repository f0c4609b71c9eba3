"""The Colab notebooks (colab/*.ipynb) run headless on the toy default, offline, and print their answer tables.

Each notebook is executed top to bottom in a fresh ipykernel (nbclient) from colab/, with HYPERLORA_NO_INSTALL=1 (the
install cell must find the installed package and not touch the network) and a short training run. The SmolLM2
notebook runs on a tiny random llama standing in for SmolLM2 (its settings come from the environment). The committed
notebooks carry no outputs.
"""
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

COLAB = pathlib.Path(__file__).resolve().parent.parent.parent / "colab"
TIMEOUT_S = 900   # whole notebook; each one takes about 2 minutes on 2 busy CPU cores


def _smollm2_stand_in(tmp_path) -> dict:
    """colab/smollm2_d2l.ipynb's settings for a tiny random llama (the tests' chat tokenizer) standing in for the
    converted GGUF, with configs/d2l.py:smollm2 shrunk to fit it (as tests/e2e/test_d2l_facts.py): 2 training
    steps (padded batches: one compilation), one evaluation length, 2 questions."""
    from hf_tiny import copy_tokenizer, make_tiny
    base = make_tiny("llama", str(tmp_path / "stand_in"), vocab_size=256)
    copy_tokenizer(base)
    overrides = ("model.layer_idx=1 model.latent_size=16 model.n_latent_queries=4 model.num_blocks=1 model.n_heads=2 "
                 "model.head_dim=8 model.num_kv_heads=1 loss.top_k=4 data.chunk_tokens=96 data.num_documents=64 "
                 "data.max_facts=4 data.query_len=128 data.max_response_tokens=24 data.max_entities=1 "
                 "data.pack_docs=0 compute_dtype=float32 batch_size=2 warmup_steps=0 log_every_steps=1")
    return {"SMOL_BASE_MODEL": base, "SMOL_WORK_DIR": str(tmp_path / "smol"), "SMOL_TRAIN_STEPS": "2",
            "SMOL_CONFIG_OVERRIDES": " ".join("--config." + o for o in overrides.split()),
            "SMOL_EVAL_LENGTHS": "200", "SMOL_EVAL_N": "2", "SMOL_EVAL_BATCH": "2", "SMOL_EVAL_MAX_NEW_TOKENS": "3",
            "SMOL_MAX_NEW_TOKENS": "4"}


NOTEBOOKS = {
    # notebook: (environment, or a function of tmp_path returning it; texts its outputs must contain)
    "d2l_demo.ipynb": ({"D2L_TRAIN_STEPS": "10"},
                       ["ANSWER TABLE", "| question | expected | no context | in context | D2L adapter |",
                        "magic number?", "adapter bytes", "KV-cache bytes"]),
    "t2l_demo.ipynb": ({},
                       ["ANSWER TABLE", "| prompt | base model |", "LOG-PROB TABLE"]),
    "smollm2_d2l.ipynb": (_smollm2_stand_in,
                          ["trained to step 2", "ANSWER TABLE",
                           "| question | expected | base alone | document in prompt | D2L adapter |",
                           "captain of the Quorvath?", "ACCURACY BY DOCUMENT LENGTH", "| method | L=200 |",
                           "| d2l | "]),
}


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_without_outputs(name):
    nb = nbformat.read(COLAB / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), f"{name}: clear its outputs"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_headless(name, monkeypatch, tmp_path):
    env, expected = NOTEBOOKS[name]
    env = env(tmp_path) if callable(env) else env
    monkeypatch.setenv("HYPERLORA_NO_INSTALL", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))          # the toy training workdirs land here
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(COLAB / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(COLAB)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:   # names the cell and the traceback
        pytest.fail(f"{name} failed:\n{str(e)[-4000:]}")
    text = _outputs_text(nb)
    for want in expected:
        assert want in text, f"{name}: {want!r} missing from its outputs:\n{text[-3000:]}"
