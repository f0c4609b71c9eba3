"""Attention kernels (hyperlora_jax/attention.py) against the dense path.

CPU (always): Pallas splash attention in interpret mode, the cuDNN path's mask / causal construction through
``jax.nn.dot_product_attention(implementation="xla")``, splash's block-sparse mask vs the dense mask, kernel
selection, and full-model forward parity with ``attention`` set each way on tiny gemma2 / llama configs. Float32,
tolerances stated per test (the kernels sum in different orders; the dense path is the reference).

GPU (``HYPERLORA_GPU_TESTS=1`` on a CUDA machine; bench/gpu_check.sh runs them): the real cuDNN kernel against the
dense path in bfloat16, forward and gradients, and the full model with attention='cudnn' vs 'xla'.
"""
import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperlora_jax import attention
from hyperlora_jax.config import ConfigError, ModelConfig
from hyperlora_jax.model import forward, init_params

GPU = pytest.mark.skipif(not (os.environ.get("HYPERLORA_GPU_TESTS") == "1" and jax.default_backend() == "gpu"),
                         reason="GPU-only: set HYPERLORA_GPU_TESTS=1 on a CUDA machine (bench/gpu_check.sh)")

F32_OUT, F32_GRAD = 2e-5, 5e-5  # float32 |kernel - dense| bounds (outputs O(1), gradients O(1..10))


def packed(batch_rows, t):
    """(positions, segment_ids) [B, T]: row 0 packs three segments (crossing the 128-token splash block edge) and
    ends in padding; row 1 is left-padded (one segment); further rows alternate."""
    seg = np.zeros((batch_rows, t), np.int32)
    for r in range(batch_rows):
        if r % 2 == 0:
            a, b, c = int(t * 0.4), int(t * 0.7), int(t * 0.9)
            seg[r, :a], seg[r, a:b], seg[r, b:c] = 1, 2, 3
        else:
            seg[r, int(t * 0.2):] = 1
    pos = np.zeros_like(seg)
    for r in range(batch_rows):
        for i in range(1, t):
            pos[r, i] = pos[r, i - 1] + 1 if seg[r, i] == seg[r, i - 1] and seg[r, i] else 0
    return jnp.asarray(pos), jnp.asarray(seg)


def kernel_cfg(nq=4, nkv=2, hd=16, window=None, softcap=None, sliding=False):
    n_layers = 1
    return ModelConfig(model_type="gemma2" if softcap else "llama", vocab_size=8, hidden_size=nq * hd,
                       intermediate_size=8, num_layers=n_layers, num_heads=nq, num_kv_heads=nkv, head_dim=hd,
                       attn_logit_softcap=softcap, sliding_window=window,
                       layer_types=(("sliding_attention",) if sliding else ("full_attention",)))


def qkv(cfg, b, t, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    mk = lambda n: jnp.asarray(rng.standard_normal((b, t, n, cfg.head_dim)), dtype)
    return mk(cfg.num_heads), mk(cfg.num_kv_heads), mk(cfg.num_kv_heads)


def fwd_and_grads(fn, q, k, v, valid):
    """fn(q, k, v) -> [B, T, nq*hd]; returns its output and d(sum(out * w))/d(q, k, v), w random on valid rows."""
    w = jnp.asarray(np.random.default_rng(7).standard_normal((q.shape[0], q.shape[1], q.shape[2] * q.shape[3])),
                    jnp.float32) * valid[:, :, None]
    loss = lambda q, k, v: (fn(q, k, v).astype(jnp.float32) * w).sum()
    return jax.jit(fn)(q, k, v), jax.jit(jax.grad(loss, (0, 1, 2)))(q, k, v)


def dense(cfg, pos, seg, sliding):
    full, slid = attention.attention_masks(cfg, pos, seg, pos, seg)
    return lambda q, k, v: attention.xla_attention(cfg, q, k, v, slid if sliding else full, jnp.float32)


def assert_close(got, want, valid, out_tol, grad_tol):
    (o1, g1), (o2, g2) = got, want
    v = np.asarray(valid)
    err = np.abs(np.asarray(o1) - np.asarray(o2))[v].max()
    assert err < out_tol, f"outputs differ by {err}"
    for name, a, b in zip("qkv", g1, g2):
        err = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max()
        assert err < grad_tol * max(1.0, np.abs(np.asarray(b)).max()), f"d{name} differs by {err}"


# ----- splash (Pallas, interpret mode on CPU) -------------------------------------------------------------------

@pytest.mark.parametrize("nq,nkv,window,softcap", [
    (4, 2, 40, 5.0),      # GQA, sliding window, gemma2 soft-cap
    (2, 1, None, None),   # MQA, causal
])
def test_splash_matches_dense(nq, nkv, window, softcap):
    cfg = kernel_cfg(nq, nkv, window=window, softcap=softcap, sliding=window is not None)
    pos, seg = packed(2, 256)
    q, k, v = qkv(cfg, 2, 256)
    valid = seg != 0  # outputs at padding are unspecified (see attention.py)
    got = fwd_and_grads(lambda q, k, v: attention.splash_attention(cfg, q, k, v, seg, seg, jnp.asarray(True)),
                        q, k, v, valid)
    want = fwd_and_grads(dense(cfg, pos, seg, window is not None), q, k, v, valid)
    assert_close(got, want, valid, F32_OUT, F32_GRAD)


def test_splash_mask_matches_dense_mask():
    """The block-sparse causal / local masks equal the dense mask of one unpacked segment, block by block."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask_info as mi
    t = 512
    pos = jnp.broadcast_to(jnp.arange(t), (1, t))
    seg = jnp.ones((1, t), jnp.int32)
    cfg = kernel_cfg(window=100)
    full, slid = attention.attention_masks(cfg, pos, seg, pos, seg)
    for window, want in ((None, full[0]), (100, slid[0])):
        mask = attention.splash_mask(t, t, 2, window)
        assert mask.shape == (2, t, t)
        for h in range(2):
            np.testing.assert_array_equal(mask[h, :, :], np.asarray(want))
        info, _ = mi.process_mask(mask, (128, 128))
        blocks = np.asarray(want).reshape(4, 128, 4, 128).transpose(0, 2, 1, 3)
        kind = np.where(blocks.all((2, 3)), 2, np.where(blocks.any((2, 3)), 1, 0))  # 0 empty, 1 partial, 2 full
        # the kernel's grid keeps only non-empty kv blocks per q block: block_mask[i, j] is kv block data_next[i, j]
        got = np.zeros((4, 4), np.int64)
        bm, nxt = np.asarray(info.block_mask)[0], np.asarray(info.data_next)[0]
        for i, j in zip(*np.nonzero(bm)):
            got[i, nxt[i, j]] = bm[i, j]
        np.testing.assert_array_equal(got, kind)
    assert (kind == 0).sum() == 9  # window 100 < block 128: only the diagonal and first sub-diagonal are visited


# ----- the cuDNN path's mask construction (through JAX's reference implementation) ------------------------------

@pytest.mark.parametrize("nq,nkv,window", [(4, 2, 30), (4, 4, None), (4, 1, 30)])
def test_cudnn_path_mask_matches_dense(nq, nkv, window):
    """cudnn_attention builds is_causal + a boolean [B, 1, T, S] mask; run through implementation='xla' it must
    equal the dense path (GQA / MHA / MQA, packing, padding, window)."""
    cfg = kernel_cfg(nq, nkv, window=window, sliding=window is not None)
    pos, seg = packed(3, 64)
    q, k, v = qkv(cfg, 3, 64)
    full, slid = attention.attention_masks(cfg, pos, seg, pos, seg)
    mask = slid if window is not None else full
    valid = seg != 0
    got = fwd_and_grads(lambda q, k, v: attention.cudnn_attention(cfg, q, k, v, mask, implementation="xla"),
                        q, k, v, valid)
    want = fwd_and_grads(dense(cfg, pos, seg, window is not None), q, k, v, valid)
    assert_close(got, want, valid, 1e-5, 2e-5)


# ----- kernel selection -----------------------------------------------------------------------------------------

def test_resolve():
    llama, gemma = kernel_cfg(), kernel_cfg(softcap=5.0)
    bf16, f32 = jnp.bfloat16, jnp.float32
    auto = lambda c: c.replace(attention="auto")
    assert attention.resolve(auto(llama), bf16, 256, 256, 2, backend="cpu") == "xla"
    assert attention.resolve(auto(llama), bf16, 256, 256, 2, backend="gpu") == "cudnn"
    assert attention.resolve(auto(llama), f32, 256, 256, 2, backend="gpu") == "xla"     # cuDNN: no float32
    assert attention.resolve(auto(gemma), bf16, 256, 256, 2, backend="gpu") == "xla"    # no soft-cap
    assert attention.resolve(auto(gemma), f32, 256, 256, 2, backend="tpu") == "splash"
    assert attention.resolve(auto(gemma), f32, 200, 200, 2, backend="tpu") == "xla"     # not a block multiple
    assert attention.resolve(auto(llama), bf16, 256, 256, 2, cached=True, backend="gpu") == "xla"
    assert attention.resolve(llama.replace(attention="splash"), f32, 1, 300, 1, cached=True) == "xla"  # decode
    assert attention.resolve(llama.replace(attention="splash"), f32, 256, 256, 1, backend="cpu") == "splash"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        attention.resolve(llama.replace(attention="cudnn"), bf16, 256, 256, 2, backend="cpu")
    with pytest.raises(ValueError, match="bfloat16/float16 compute, got float32"):
        attention.resolve(llama.replace(attention="cudnn"), f32, 256, 256, 2, backend="gpu")
    with pytest.raises(ValueError, match="multiples of 128, got 100 queries"):
        attention.resolve(llama.replace(attention="splash"), f32, 100, 100, 2, backend="tpu")


def test_config_field():
    cfg = kernel_cfg()
    assert cfg.attention == "xla"
    with pytest.raises(ConfigError, match="model.attention must be one of xla, cudnn, splash, auto, got 'flash'"):
        cfg.replace(attention="flash")
    with pytest.raises(ConfigError, match="cuDNN attention has no logit soft-cap"):
        kernel_cfg(softcap=50.0).replace(attention="cudnn")
    assert cfg.with_run_options({"attention": "auto"}).attention == "auto"
    assert cfg.replace(attention="splash").with_run_options({}).attention == "splash"
    assert cfg.with_run_options(None) is cfg


# ----- the whole model ------------------------------------------------------------------------------------------

TINY = {
    # gemma2: soft-caps, alternating sliding (window 40) / full layers, GQA 4 -> 2
    "gemma2": dict(model_type="gemma2", vocab_size=96, hidden_size=64, intermediate_size=96, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16, norm_weight_offset=1.0, embed_scale=True,
                   sandwich_norms=True, hidden_act="gelu_pytorch_tanh", query_pre_attn_scalar=24.0,
                   attn_logit_softcap=5.0, final_logit_softcap=3.0, sliding_window=40,
                   layer_types=("sliding_attention", "full_attention")),
    # llama: MQA-ish GQA 4 -> 1, no window, no cap
    "llama": dict(model_type="llama", vocab_size=96, hidden_size=64, intermediate_size=96, num_layers=2,
                  num_heads=4, num_kv_heads=1, head_dim=16),
}


@functools.lru_cache(maxsize=None)
def tiny(family):
    cfg = ModelConfig(**TINY[family])
    params = jax.tree_util.tree_map(lambda x: x * 3.0, init_params(cfg, jax.random.PRNGKey(1)))  # peakier attention
    return cfg, params


def model_logits(cfg, params, kernel, t=128, monkeypatch=None):
    pos, seg = packed(2, t)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (2, t)))
    f = jax.jit(lambda p: forward(p, cfg.replace(attention=kernel), tokens, positions=pos, segment_ids=seg)["logits"])
    return np.asarray(f(params)), np.asarray(seg != 0)


@pytest.mark.parametrize("family", ["gemma2", "llama"])
def test_model_splash_matches_xla(family):
    """Full forward, attention='splash' (interpret mode) vs 'xla'; packed + padded rows; float32, logits |diff| <
    1e-4 (logits O(1..10); two layers of float32 reassociation)."""
    cfg, params = tiny(family)
    want, valid = model_logits(cfg, params, "xla")
    got, _ = model_logits(cfg, params, "splash")
    err = np.abs(got - want)[valid].max()
    assert err < 1e-4, err


def test_model_splash_on_two_devices():
    """Several devices: splash runs under shard_map over the batch (Mosaic kernels are not auto-partitioned); a
    batch sharded over 2 emulated CPU devices gives the xla path's logits (float32, < 1e-4)."""
    script = textwrap.dedent("""
        import sys, jax, jax.numpy as jnp, numpy as np
        sys.path.insert(0, "tests/e2e")
        from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
        import test_attention as ta
        from hyperlora_jax.model import forward
        assert jax.device_count() == 2
        cfg, params = ta.tiny("gemma2")
        pos, seg = ta.packed(4, 128)
        tok = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (4, 128)))
        mesh = jax.make_mesh((2,), ("data",), axis_types=(AxisType.Auto,))
        tok, pos, seg = (jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (tok, pos, seg))
        run = lambda k: np.asarray(jax.jit(lambda p, t, ps, sg: forward(
            p, cfg.replace(attention=k), t, positions=ps, segment_ids=sg)["logits"])(params, tok, pos, seg))
        err = np.abs(run("splash") - run("xla"))[np.asarray(seg) != 0].max()
        assert err < 1e-4, err
        print("OK")
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": root}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-3000:]


def test_model_cudnn_path_matches_xla(monkeypatch):
    """The model's cudnn plumbing on CPU: resolve() allows it and cudnn_attention runs through JAX's reference
    implementation (the real kernel is tested on GPU below). llama (no soft-cap), float32, logits |diff| < 1e-4."""
    cfg, params = tiny("llama")
    monkeypatch.setattr(attention, "_cudnn_problem", lambda *a: None)
    monkeypatch.setattr(attention, "cudnn_attention",
                        functools.partial(attention.cudnn_attention, implementation="xla"))
    want, valid = model_logits(cfg, params, "xla")
    got, _ = model_logits(cfg, params, "cudnn")
    assert np.abs(got - want)[valid].max() < 1e-4


def test_model_auto_on_cpu_is_xla_bitwise():
    cfg, params = tiny("gemma2")
    want, _ = model_logits(cfg, params, "xla", t=48)
    got, _ = model_logits(cfg, params, "auto", t=48)
    np.testing.assert_array_equal(got, want)


# ----- GPU only: the real cuDNN kernel -------------------------------------------------------------------------

BF16_OUT, BF16_GRAD = 3e-2, 5e-2  # bfloat16 inputs/outputs: ~2^-8 relative rounding, outputs O(1)


@GPU
@pytest.mark.parametrize("nq,nkv,window", [(8, 2, 100), (8, 8, None), (8, 1, None)])
def test_gpu_cudnn_matches_dense_bf16(nq, nkv, window):
    """cuDNN flash attention (bf16 in, bf16 out) vs the dense path in float32 on the same bf16-rounded inputs."""
    cfg = kernel_cfg(nq, nkv, hd=64, window=window, sliding=window is not None)
    pos, seg = packed(4, 512)
    q, k, v = qkv(cfg, 4, 512, dtype=jnp.bfloat16)
    valid = seg != 0
    full, slid = attention.attention_masks(cfg, pos, seg, pos, seg)
    mask = slid if window is not None else full
    got = fwd_and_grads(lambda q, k, v: attention.cudnn_attention(cfg, q, k, v, mask), q, k, v, valid)
    want = fwd_and_grads(lambda q, k, v: attention.xla_attention(
        cfg, q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), mask, jnp.float32), q, k, v, valid)
    assert got[0].dtype == jnp.bfloat16
    assert_close(got, want, valid, BF16_OUT, BF16_GRAD)


@GPU
def test_gpu_cudnn_float32_is_refused_and_auto_falls_back():
    cfg = kernel_cfg()
    with pytest.raises(ValueError, match="bfloat16/float16 compute"):
        attention.resolve(cfg.replace(attention="cudnn"), jnp.float32, 256, 256, 2)
    assert attention.resolve(cfg.replace(attention="auto"), jnp.float32, 256, 256, 2) == "xla"
    assert attention.resolve(cfg.replace(attention="auto"), jnp.bfloat16, 256, 256, 2) == "cudnn"


@GPU
def test_gpu_model_cudnn_matches_xla_bf16():
    """Tiny llama, bf16 compute, packed + padded rows: attention='cudnn' vs 'xla' logits."""
    cfg, params = tiny("llama")
    pos, seg = packed(2, 256)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 256)))
    run = lambda kernel: np.asarray(jax.jit(lambda p: forward(
        p, cfg.replace(attention=kernel), tokens, positions=pos, segment_ids=seg, dtype=jnp.bfloat16)["logits"])(
        params))
    want, got = run("xla"), run("cudnn")
    valid = np.asarray(seg != 0)
    scale = np.abs(want[valid]).max()
    assert np.abs(got - want)[valid].max() < 0.05 * scale
