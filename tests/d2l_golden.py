"""The D2L golden fixtures (tests/data/d2l): float32 reference outputs of doc-to-lora 1abe8ae on CPU, one per
context-encoder type. Shared by the perceiver and head parity tests (fixture ``d2l_golden`` in conftest.py)."""
import json
import pathlib

import numpy as np

DATA = pathlib.Path(__file__).parent / "data" / "d2l"
KINDS = ("per_layer_activations", "early_exit")


def load(kind):
    """(arrays of ``{kind}.npz``, metadata of ``{kind}.json``, the reference hypernetwork state dict)."""
    z = dict(np.load(DATA / f"{kind}.npz"))
    meta = json.loads((DATA / f"{kind}.json").read_text())
    sd = {k[len("hypernet/"):]: v for k, v in z.items() if k.startswith("hypernet/")}
    return z, meta, sd


def run(kind):
    """(kind, z, meta, config, params, intermediates): the fixture imported into the project and run once."""
    import jax.numpy as jnp

    from hyperlora_jax.d2l import hypernet_intermediates
    from hyperlora_jax.d2l.checkpoint_map import config_from_state_dict, torch_to_flax

    z, meta, sd = load(kind)
    config = config_from_state_dict(sd)
    params = torch_to_flax(sd, config)
    inter = hypernet_intermediates(params, config, jnp.asarray(z["features"]), jnp.asarray(z["ctx_attn_mask"]))
    inter = {k: np.asarray(v) for k, v in inter.items()}
    return kind, z, meta, config, params, inter
