"""The Colab notebooks (colab/*.ipynb) run headless on the toy default, offline, and print their answer tables.

Each notebook is executed top to bottom in a fresh ipykernel (nbclient) from colab/, with HYPERLORA_NO_INSTALL=1 (the
install cell must find the installed package and not touch the network) and a short training run. The committed
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

NOTEBOOKS = {
    # notebook: (environment, texts its outputs must contain)
    "d2l_demo.ipynb": ({"D2L_TRAIN_STEPS": "10"},
                       ["ANSWER TABLE", "| question | expected | no context | in context | D2L adapter |",
                        "magic number?", "adapter bytes", "KV-cache bytes"]),
    "t2l_demo.ipynb": ({},
                       ["ANSWER TABLE", "| prompt | base model |", "LOG-PROB TABLE"]),
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
