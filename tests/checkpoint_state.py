"""The trainer's saved state of a workdir step, as flat numpy arrays (for bitwise resume comparisons)."""
import os

import numpy as np


def saved_state(workdir, step):
    """{keystr: array} of WORKDIR/checkpoints/<step>/state."""
    import jax
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as c:
        state = c.restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state)}
