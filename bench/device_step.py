"""Device benchmark: tokens/s and MFU of one D2L and one T2L training step at gemma-2-2b size (random weights).

    python bench/device_step.py [--small] [--which d2l,t2l,lora] [--steps 10] [--batch 4] [--remat none|full|dots]
                                [--base-config PATH] [--attention xla|cudnn|splash|auto] [--compile-only] [--out FILE]

Meant for one GPU or TPU (``pip install ".[cuda]"`` or ``".[tpu]"``, then run it as is: nothing is downloaded, the
base is built from ``tests/data/configs/gemma-2-2b.json`` with random bf16 weights). ``--small`` swaps in a tiny
gemma-2-shaped model and hypernetworks so the script runs on a CPU in about a minute (smoke test; MFU is not printed
for devices whose peak is unknown). ``--compile-only`` compiles each step with abstract base weights and prints
XLA's buffer assignment instead of timing it (argument / output / temporary GiB per step; runs on a CPU in about
a minute per step at full size, where XLA:CPU's numbers include the float32 copies of bf16 weights it makes for its
dots — compare variants on one backend, not across). Each step is the trainer's own (``train.make_train_step``
around the method's ``loss``, optax AdamW, global-norm clip, jitted with the state donated), built without the
methods' data start-up.

* **D2L** (``configs/d2l.py:gemma2_2b``: per_layer_activations, down_proj r = 8, Perceiver latent 512 x 8 latents x 9
  blocks, context distillation with the teacher's top-16, L1 0.1, NEFTune 5, bf16 compute): per document one
  context chunk of ``--chunk-tokens`` (512) tokens, a student sequence (query + response) of ``--query-len``
  (2048) tokens with the last ``--response`` (256) tokens distilled, and a teacher sequence = chunk + student
  sequence (the document in context).
* **LoRA** (``--which lora``; needs only jax/flax/optax): the frozen base with a trainable rank-8 LoRA on every
  attention and MLP projection, next-token cross-entropy on ``--batch`` x 2 rows of ``--seq-len`` tokens, each row
  packed with two documents (segment ids 1 and 2) and 1/8 padding — the attention kernels' workload with segments.
  optax AdamW, bf16 compute.
* **T2L** (``configs/t2l.py:gemma``: T2L-L latent 512 / head_in 2048, q_proj + v_proj r = 8, rsLoRA, label smoothing
  0.1, L2 1e-3, NEFTune 5, hypernet dropout 0.05): ``--batch`` (task, example) rows of ``--seq-len`` (512) tokens;
  the task embeddings are precomputed data (the sentence encoder is not part of the step, as in training).

FLOP accounting (model FLOPs per optimizer step; a multiply-add = 2 FLOPs):

    N_head  = V·H                       (LM-head matmul; the embedding lookup costs nothing)
    N_layer = (num_params − V·H·(1 if tied else 2) − H) / L      (matmul + norm params of one decoder layer)
    fwd(n tokens, layers l, h head rows) = 2·(n·l·N_layer + h·N_head) + attn,
                                     attn = l · 2·2·heads·head_dim · Σ_t keys(t)
                                     (QKᵀ and AV, causal: keys(t) = min(t, window) for t = 1..n)
    student  (frozen base + adapter):   2 × fwd(query, L, h)      — forward + backward through activations only
                                         (the base gets no weight gradient: ~4N per token instead of 6N);
                                         D2L: h = the R response positions (its LM head runs only there), T2L: h = n
    teacher  (D2L KD, frozen):           1 × fwd(chunk + query, L, R)                                  ~2N per token
    context encoder (frozen, L−1 layers, features only, no head):  1 × fwd(chunk, L−1)                ~2N per token
    hypernetwork (trained): 3 × its forward FLOPs (forward + gradients of weights and activations), the forward
                            counted by XLA's cost analysis of the hypernetwork alone on the step's shapes
    LoRA terms inside the student (rank · (d_in + d_out) per token and layer) are left out (< 0.1 %).

MFU = model FLOPs per step / step time / peak bf16 FLOP/s of the device (``train.PEAK_FLOPS``: H100/H200 989e12,
A100 312e12, TPU v4 275e12, v5e 197e12, v5p 459e12, v6 918e12). XLA's own count of the compiled step
(``cost_analysis()['flops']``) is printed next to it for reference only: it counts the body of a scan / while loop
once, so with the base model's scan over layers it is a lower bound, not a check (the hypernetwork has no loop, and
tests/e2e/test_bench.py checks the analytic forward count against XLA's on a one-layer model).
``--base-config`` swaps the base for any Hugging Face style ``config.json`` (a directory holding one, the file
itself, or a name under ``tests/data/configs``: gemma-2-2b, Llama-3.1-8B, Mistral-7B-Instruct-v0.2, Qwen3-4B);
``--attention`` sets its kernel (``hyperlora_jax/attention.py``; each row records the kernel that ran).

tokens/s counts the student's tokens (the sequences trained on); D2L also reports all tokens read per second
(chunk + student + teacher).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

SMALL_BASE = dict(model_type="gemma2", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=4,
                  num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=8192)


def base_config(small: bool, path: str | None = None):
    from hyperlora_jax.config import ModelConfig
    if path:
        if os.path.isdir(path):
            return ModelConfig.from_pretrained(path)
        if not os.path.isfile(path):
            path = os.path.join(C.REAL_CONFIG_DIR, f"{path}.json")
        import json
        with open(path) as f:
            return ModelConfig.from_hf_dict(json.load(f))
    if not small:
        return C.real_config("gemma-2-2b")
    import json
    with open(os.path.join(C.REAL_CONFIG_DIR, "gemma-2-2b.json")) as f:
        d = json.load(f)
    d.update(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
    d.pop("layer_types", None)
    return ModelConfig.from_hf_dict(d)


# ----- FLOP accounting -------------------------------------------------------------------------------------------

def _attn_keys(n: int, window) -> float:
    t = np.arange(1, n + 1)
    return float(np.minimum(t, window).sum()) if window else float(t.sum())


def fwd_flops(cfg, n: int, layers: int, head_rows: int, rows: int = 1) -> float:
    vh = cfg.vocab_size * cfg.hidden_size
    n_layer = (cfg.num_params() - vh * (1 if cfg.tie_word_embeddings else 2) - cfg.hidden_size) / cfg.num_layers
    mat = 2.0 * (n * layers * n_layer + head_rows * vh)
    attn = 0.0
    sliding = list(cfg.sliding_layers)[:layers]
    for s in sliding:
        attn += 4.0 * cfg.num_heads * cfg.head_dim * _attn_keys(n, cfg.sliding_window if s else None)
    return rows * (mat + attn)


def xla_flops(fn, *args) -> float | None:
    try:
        ca = jax.jit(fn).lower(*args).compile().cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        return float(ca.get("flops", 0.0)) or None
    except Exception:  # noqa: BLE001 — not every backend reports it
        return None


def compiled_flops(compiled) -> float | None:
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        return float(ca.get("flops", 0.0)) or None
    except Exception:  # noqa: BLE001
        return None


# ----- the two steps ---------------------------------------------------------------------------------------------

def _state(params, tx, seed):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "rng": jax.random.PRNGKey(seed)}


def _random_base(cfg, dtype):
    from hyperlora_jax.model import init_params
    return jax.jit(lambda k: jax.tree_util.tree_map(lambda x: x.astype(dtype), init_params(cfg, k)))(
        jax.random.PRNGKey(0))


def d2l_setup(bc, base, a):
    from hyperlora_jax.d2l.hypernet import D2LHypernetConfig
    from hyperlora_jax.methods.d2l import D2LMethod
    from hyperlora_jax.optim import make_optimizer
    sys.path.insert(0, os.path.join(C.REPO, "configs"))
    import d2l as d2l_cfg  # configs/d2l.py
    cfg = d2l_cfg.get_config("gemma2_2b")
    cfg.remat = a.remat
    cfg.grad_accum_steps = 1
    mc = cfg.model
    if a.small:
        mc.update(dict(latent_size=32, n_latent_queries=4, num_blocks=2, n_heads=2, head_dim=16, num_kv_heads=1))
    shapes = bc.projection_shapes()
    mods = tuple(sorted(mc.target_modules))
    hc = D2LHypernetConfig.create(
        feature_size=bc.hidden_size, n_layers=bc.num_layers, r=mc.r, d_in={m: shapes[m][0] for m in mods},
        d_out={m: shapes[m][1] for m in mods}, ctx_encoder_type=mc.ctx_encoder_type, latent_size=mc.latent_size,
        n_latent_queries=mc.n_latent_queries, num_blocks=mc.num_blocks,
        num_pre_head_layers=mc.get("num_pre_head_layers", 1), n_heads=mc.n_heads, head_dim=mc.head_dim,
        num_key_value_heads=mc.num_kv_heads)
    method = D2LMethod.without_data(cfg, bc, hc, base)
    hyper = method.init_trainable(jax.random.PRNGKey(1))
    tx = make_optimizer(cfg, method.decay_mask)

    b, tc, tq, resp = a.batch, a.chunk_tokens, a.query_len, a.response
    rng = np.random.default_rng(0)
    tt = tc + tq
    batch = {"ctx_ids": rng.integers(10, bc.vocab_size, (b, 1, tc)), "ctx_mask": np.ones((b, 1, tc)),
             "n_chunks": np.ones((b,)), "tokens": rng.integers(10, bc.vocab_size, (b, tq)),
             "segment_ids": np.ones((b, tq)), "loss_mask": np.zeros((b, tq), np.float32),
             "teacher_tokens": rng.integers(10, bc.vocab_size, (b, tt)), "teacher_segment_ids": np.ones((b, tt)),
             "student_idx": np.tile(np.arange(tq - resp - 1, tq - 1), (b, 1)),
             "teacher_idx": np.tile(np.arange(tt - resp - 1, tt - 1), (b, 1)), "resp_valid": np.ones((b, resp))}
    batch = {k: jnp.asarray(v, jnp.float32 if k in ("loss_mask",) else jnp.int32) for k, v in batch.items()}

    # hypernetwork forward FLOPs on the step's shapes (features [B·K, L, T, H] in the compute dtype)
    feats = jax.ShapeDtypeStruct((b, bc.num_layers, tc, bc.hidden_size), method.dtype)
    mask = jax.ShapeDtypeStruct((b, tc), jnp.int32)
    from hyperlora_jax.d2l.hypernet import generate_chunk_loras
    hyper_fwd = xla_flops(lambda p, f, m: generate_chunk_loras(p, hc, f, m), hyper, feats, mask)
    L = bc.num_layers
    flops = {"student": 2 * fwd_flops(bc, tq, L, resp, b), "teacher": fwd_flops(bc, tt, L, resp, b),
             "context_encoder": fwd_flops(bc, tc, L - 1, 0, b),
             "hypernetwork": 3 * hyper_fwd if hyper_fwd else None}
    tokens = {"student": b * tq, "all": b * (tc + tq + tt)}
    desc = (f"{b} docs x 1 chunk of {tc} tokens, student {tq} tokens ({resp} distilled), teacher {tt} tokens; "
            f"hypernet latent {hc.latent_size} x {mc.n_latent_queries} latents x {mc.num_blocks} blocks, "
            f"loss {cfg.loss.kind}")
    return method, tx, _state(hyper, tx, 2), batch, flops, tokens, desc


def t2l_setup(bc, base, a):
    from hyperlora_jax.methods.t2l import T2LMethod
    from hyperlora_jax.optim import make_optimizer
    from hyperlora_jax.t2l import hypernet as hn
    sys.path.insert(0, os.path.join(C.REPO, "configs"))
    import t2l as t2l_cfg  # configs/t2l.py
    cfg = t2l_cfg.get_config("gemma")
    cfg.remat = a.remat
    cfg.compute_dtype = "bfloat16"
    tcfg = cfg.t2l
    latent, head_in, emb_size = (32, 32, 32) if a.small else (tcfg.latent_size, tcfg.head_in_size, 1024)
    shapes = bc.projection_shapes()
    mods = tuple(tcfg.target_modules)
    hcfg = hn.T2LConfig(variant=tcfg.variant, latent_size=latent, head_in_size=head_in, task_emb_size=emb_size,
                        r=int(tcfg.r), lora_alpha=float(tcfg.lora_alpha), target_modules=mods,
                        in_features=tuple(shapes[m][0] for m in mods), out_features=tuple(shapes[m][1] for m in mods),
                        n_layers=bc.num_layers, dropout_rate=float(tcfg.dropout_rate))
    cfg.t2l.mode = "sft"
    method = T2LMethod.without_data(cfg, bc, hcfg)
    params = method.init_trainable(jax.random.PRNGKey(1))
    tx = make_optimizer(cfg, method.decay_mask)
    b, n = a.batch * 2, a.seq_len  # T2L rows are short: twice the D2L batch
    rng = np.random.default_rng(0)
    e = rng.standard_normal((b, emb_size)).astype(np.float32)
    lm = np.zeros((b, n), np.float32)
    lm[:, n // 2:n - 1] = 1.0
    batch = {"desc_index": jnp.arange(b, dtype=jnp.int32),
             "tokens": jnp.asarray(rng.integers(10, bc.vocab_size, (b, n)), jnp.int32),
             "segment_ids": jnp.ones((b, n), jnp.int32), "loss_mask": jnp.asarray(lm)}
    emb = jnp.asarray(e / np.linalg.norm(e, axis=1, keepdims=True))
    hyper_fwd = xla_flops(lambda p, x: (lambda ad: (ad.A, ad.B))(
        hn.generate_adapters(p, hcfg, x, tcfg.scale, deterministic=True)), params, emb)
    flops = {"student": 2 * fwd_flops(bc, n, bc.num_layers, n, b),
             "hypernetwork": 3 * hyper_fwd if hyper_fwd else None}
    desc = (f"{b} rows x {n} tokens; T2L-{hcfg.variant} latent {latent} / head_in {head_in}, "
            f"{'+'.join(mods)} r {hcfg.r}")
    return method, tx, _state(params, tx, 2), batch, flops, {"student": b * n, "all": b * n}, desc, emb


class LoRAMethod:
    """The base model frozen, a rank-``r`` LoRA on every projection trained: next-token loss over packed rows."""

    def __init__(self, bc, r=8, dtype=jnp.bfloat16):
        self.bc, self.r, self.dtype = bc, r, dtype

    def init_trainable(self, rng, batch_rows):
        from hyperlora_jax.lora import LORA_MODULES
        shapes = self.bc.projection_shapes()
        ks = jax.random.split(rng, len(LORA_MODULES))
        L = self.bc.num_layers
        return {"A": {m: 0.01 * jax.random.normal(k, (L, 1, self.r, shapes[m][0])) for m, k in zip(LORA_MODULES, ks)},
                "B": {m: jnp.full((L, 1, self.r, shapes[m][1]), 1e-3) for m in LORA_MODULES}}

    def loss(self, params, frozen, batch, rng):
        from hyperlora_jax.lora import Adapter
        from hyperlora_jax.losses import next_token_ce, token_mean
        from hyperlora_jax.model import forward
        b = batch["tokens"].shape[0]
        tile = lambda x: jnp.broadcast_to(x, (x.shape[0], b) + x.shape[2:]).astype(self.dtype)
        adapter = Adapter({m: tile(a) for m, a in params["A"].items()}, {m: tile(x) for m, x in params["B"].items()},
                          jnp.full((b,), 2.0, jnp.float32))
        out = forward(frozen, self.bc, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"],
                      adapter=adapter, dtype=self.dtype, remat=self.remat)
        loss, _ = token_mean(next_token_ce(out["logits"], batch["tokens"]), batch["loss_mask"][:, 1:])
        return loss, {"loss": loss}


def lora_setup(bc, a):
    import optax

    from hyperlora_jax.model import segment_positions
    method = LoRAMethod(bc)
    method.remat = a.remat
    b, n = a.batch * 2, a.seq_len
    params = method.init_trainable(jax.random.PRNGKey(1), b)
    tx = optax.adamw(1e-4)
    rng = np.random.default_rng(0)
    seg = np.zeros((b, n), np.int32)
    cut, end = n // 2 - n // 16, n - n // 8  # two documents, then padding
    seg[:, :cut], seg[:, cut:end] = 1, 2
    batch = {"tokens": jnp.asarray(rng.integers(10, bc.vocab_size, (b, n)), jnp.int32),
             "positions": segment_positions(seg), "segment_ids": jnp.asarray(seg),
             "loss_mask": jnp.asarray((seg > 0).astype(np.float32))}
    flops = {"student": 2 * fwd_flops(bc, n, bc.num_layers, n, b)}
    desc = f"{b} rows x {n} tokens (2 packed documents + padding), LoRA r 8 on all projections"
    return method, tx, _state(params, tx, 2), batch, flops, {"student": b * n, "all": b * n}, desc


def memory_gib(compiled) -> dict:
    """XLA's buffer assignment of a compiled step: {argument,output,temp}_GiB, or {}."""
    try:
        m = compiled.memory_analysis()
        return {f"{k}_GiB": getattr(m, f"{k}_size_in_bytes") / 2 ** 30 for k in ("argument", "output", "temp")}
    except Exception:  # noqa: BLE001 — not every backend reports it
        return {}


def device_peak_gib() -> dict:
    """The device allocator's peak so far in this process (GPU / TPU), or {}."""
    try:
        return {"peak_device_GiB": jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2 ** 30}
    except Exception:  # noqa: BLE001 — CPU has no memory_stats
        return {}


def bench_one(name, method, tx, state, frozen, batch, flops, tokens, desc, steps, compile_only=False):
    from hyperlora_jax.train import _peak_flops, make_train_step
    step = jax.jit(make_train_step(method, tx, 1), donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - t0
    xla_step = compiled_flops(compiled)
    mem = memory_gib(compiled)
    if compile_only:
        row = {"step": name, "desc": desc, "compile_s": compile_s, **mem,
               "xla_GFLOP_per_step": None if xla_step is None else xla_step / 1e9}
        print(f"  {name}: compile {compile_s:.1f} s, XLA temp {mem.get('temp_GiB', float('nan')):.2f} GiB", flush=True)
        return row
    state, m = compiled(state, frozen, batch)  # warm-up
    loss0 = float(m["loss"])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = compiled(state, frozen, batch)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    dt = float(np.median(times))
    model_flops = sum(v for v in flops.values() if v)
    peak = _peak_flops()
    row = {"step": name, "desc": desc, "step_s": dt, "compile_s": compile_s, "loss_first": loss0,
           "loss_last": float(m["loss"]), "student_tokens_per_s": tokens["student"] / dt,
           "all_tokens_per_s": tokens["all"] / dt, "model_GFLOP_per_step": model_flops / 1e9,
           "xla_GFLOP_per_step": None if xla_step is None else xla_step / 1e9,
           "achieved_TFLOP_s": model_flops / dt / 1e12, "peak_TFLOP_s": None if peak is None else peak / 1e12,
           "mfu": None if peak is None else model_flops / dt / peak, **mem, **device_peak_gib(),
           "flops_breakdown_GFLOP": {k: (None if v is None else v / 1e9) for k, v in flops.items()}}
    print(f"  {name}: {1e3 * dt:,.1f} ms/step, compile {compile_s:.1f} s, loss {loss0:.4f} -> {row['loss_last']:.4f}",
          flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny gemma-2-shaped model: a CPU smoke test")
    ap.add_argument("--which", default="d2l,t2l")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4, help="D2L documents per step (T2L uses twice as many rows)")
    ap.add_argument("--chunk-tokens", type=int, default=512)
    ap.add_argument("--query-len", type=int, default=2048)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=512, help="T2L sequence length")
    ap.add_argument("--remat", choices=("none", "full", "dots"), default="full")
    ap.add_argument("--compile-only", action="store_true",
                    help="lower + compile each step with abstract base weights (nothing allocated for them) and "
                         "print XLA's buffer assignment (argument / output / temp GiB); works on a CPU")
    ap.add_argument("--base-config", default=None,
                    help="base model config: a directory with config.json, a config.json file, or a name under "
                         "tests/data/configs (default: gemma-2-2b, or a tiny gemma-2 shape with --small)")
    ap.add_argument("--attention", choices=("xla", "cudnn", "splash", "auto"), default="xla",
                    help="attention kernel of the base model (hyperlora_jax/attention.py)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.small:
        a.steps, a.batch, a.chunk_tokens, a.query_len, a.response = (min(a.steps, 3), 2, 32, 64, 16)
        a.seq_len = 64 if a.seq_len == ap.get_default("seq_len") else a.seq_len
    print(f"backend {jax.default_backend()}, devices {[d.device_kind for d in jax.devices()]}", flush=True)
    bc = base_config(a.small, a.base_config).replace(attention=a.attention)
    base_name = a.base_config or ("a tiny gemma-2 shape (--small)" if a.small else "gemma-2-2b")
    base = (jax.eval_shape if a.compile_only else lambda f: f())(lambda: _random_base(bc, jnp.bfloat16))
    rows = []
    which = a.which.split(",")
    from hyperlora_jax.attention import describe
    kernel_at = lambda n, b: describe(bc, jnp.bfloat16, n, b)  # the kernel a bf16 forward of n tokens runs
    if "d2l" in which:
        method, tx, state, batch, flops, tokens, desc = d2l_setup(bc, base, a)
        rows.append(bench_one("D2L", method, tx, state, base, batch, flops, tokens, desc, a.steps, a.compile_only))
        rows[-1]["attention"] = kernel_at(a.query_len, a.batch)
        del state
    if "lora" in which:
        method, tx, state, batch, flops, tokens, desc = lora_setup(bc, a)
        rows.append(bench_one("LoRA", method, tx, state, base, batch, flops, tokens, desc, a.steps, a.compile_only))
        rows[-1]["attention"] = kernel_at(a.seq_len, 2 * a.batch)
        del state
    if "t2l" in which:
        method, tx, state, batch, flops, tokens, desc, emb = t2l_setup(bc, base, a)
        rows.append(bench_one("T2L", method, tx, state, {"base": base, "task_emb": emb}, batch, flops, tokens,
                              desc, a.steps, a.compile_only))
        rows[-1]["attention"] = kernel_at(a.seq_len, 2 * a.batch)
    if a.compile_only:
        print(C.table(rows, [("step", "step", ""), ("temp_GiB", "XLA temp GiB", ".2f"),
                             ("argument_GiB", "arguments GiB", ".2f"), ("output_GiB", "outputs GiB", ".2f"),
                             ("xla_GFLOP_per_step", "XLA GFLOP/step (loops once)", ",.1f"),
                             ("compile_s", "compile s", ".1f")],
                      f"buffer assignment on {jax.default_backend()} at "
                      f"{base_name} size, remat {a.remat}, "
                      f"batch {a.batch} (compile only)"))
        for r in rows:
            print(f"  {r['step']}: {r['desc']}")
        payload = {"rows": rows, "base_params": bc.num_params(), "small": a.small, "remat": a.remat,
                   "compile_only": True}
        payload["json"] = C.write_json("device_step_memory", a.out, dict(payload))
        return payload
    pct = lambda v: f"{100 * v:.1f}%"
    print(C.table(rows, [("step", "step", ""), ("step_s", "s / step", ".3f"),
                         ("student_tokens_per_s", "student tokens/s", ",.0f"),
                         ("all_tokens_per_s", "all tokens/s", ",.0f"),
                         ("model_GFLOP_per_step", "model GFLOP/step", ",.2f"),
                         ("xla_GFLOP_per_step", "XLA GFLOP/step (loops once)", ",.2f"),
                         ("achieved_TFLOP_s", "model TFLOP/s", ".3f"), ("mfu", "MFU", pct),
                         ("compile_s", "compile s", ".1f"), ("attention", "attention", ""),
                         ("peak_device_GiB", "device peak GiB", ".2f")],
                  f"training steps at {base_name} size, attention {a.attention}, "
                  f"random bf16 base ({bc.num_params() / 1e9:.3f} B params), remat {a.remat}, "
                  f"median of {a.steps} steps"))
    for r in rows:
        print(f"  {r['step']}: {r['desc']}; model GFLOP by part: "
              + ", ".join(f"{k} {'—' if v is None else format(v, ',.2f')}"
                          for k, v in r["flops_breakdown_GFLOP"].items()))
    payload = {"rows": rows, "base_params": bc.num_params(), "small": a.small, "remat": a.remat,
               "attention": a.attention, "base_config": a.base_config}
    payload["json"] = C.write_json("device_step", a.out, dict(payload))
    return payload


if __name__ == "__main__":
    main()
