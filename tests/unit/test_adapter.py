"""lora.Adapter.take / zeros_like: rows along the batch axis and the all-zero adapter of the same layout."""
import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.lora import Adapter

L, N, R = 2, 4, 3
SHAPES = {"q_proj": (5, 6), "down_proj": (7, 5)}


def _adapter(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    return Adapter({m: jnp.asarray(rng.normal(size=(L, N, R, i)), dtype) for m, (i, o) in SHAPES.items()},
                   {m: jnp.asarray(rng.normal(size=(L, N, R, o)), dtype) for m, (i, o) in SHAPES.items()},
                   jnp.asarray([1.0, 2.0, 3.0, 4.0], jnp.float32))


def test_take_rows_in_order_with_repeats():
    ad = _adapter(jnp.bfloat16)
    idx = [3, 0, 3]
    for ix in (idx, np.asarray(idx), jnp.asarray(idx), range(1, 3)):
        got = ad.take(ix)
        want = np.asarray(list(ix))
        assert got.batch_size == len(want) and got.modules == ad.modules
        for m in SHAPES:
            assert got.A[m].dtype == jnp.bfloat16 and got.A[m].shape == (L, len(want), R, SHAPES[m][0])
            np.testing.assert_array_equal(np.asarray(got.A[m]), np.asarray(ad.A[m])[:, want])
            np.testing.assert_array_equal(np.asarray(got.B[m]), np.asarray(ad.B[m])[:, want])
        np.testing.assert_array_equal(np.asarray(got.scale), np.asarray(ad.scale)[want])


def test_take_under_jit():
    ad = _adapter()
    got = jax.jit(lambda a, ix: a.take(ix))(ad, jnp.asarray([2, 1], jnp.int32))
    np.testing.assert_array_equal(np.asarray(got.B["q_proj"]), np.asarray(ad.B["q_proj"])[:, [2, 1]])


def test_zeros_like():
    ad = _adapter(jnp.bfloat16)
    for n, want_n in ((None, N), (6, 6)):
        z = ad.zeros_like(n)
        assert z.batch_size == want_n and z.modules == ad.modules and z.rank == R
        for m, (i, o) in SHAPES.items():
            assert z.A[m].shape == (L, want_n, R, i) and z.B[m].shape == (L, want_n, R, o)
            assert z.A[m].dtype == z.B[m].dtype == jnp.bfloat16
            assert not np.asarray(z.A[m], np.float32).any() and not np.asarray(z.B[m], np.float32).any()
        assert z.scale.dtype == jnp.float32 and not np.asarray(z.scale).any()
