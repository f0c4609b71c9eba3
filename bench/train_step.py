"""One D2L training step in JAX (the project's code path) vs the same step in PyTorch, same small config, same
weights, on CPU → steps/s of each, the speed ratio, JAX compile time apart, and the loss difference.

    python bench/train_step.py [--preset bench|h128|h64|smoke] [--smoke] [--sweep] [--steps 6] [--out FILE]
                               [--threads N]

The step (CE objective, the reference's NIAH loss, plus the L1 regulariser on the combined adapters):

    ctx chunks [B, K, T] ─frozen context encoder (base model's first L-1 layers, per_layer_activations)─▶
    features [B·K, L, T, H] ─Perceiver + HyperLoRA head (trainable)─▶ per-chunk LoRAs on down_proj ─combine
    along rank (+ bias block)─▶ one adapter per document ─▶ student = frozen base + per-example adapter on the
    query + response [B, Tq] ─▶ CE on the response tokens (mean per document, then over documents)
    + l1_coef · L1(adapters) ─▶ grads of the hypernetwork ─▶ global-norm clip 1.0 ─▶ AdamW (wd 0.01 with the
    reference's exclusions)

* **JAX**: ``methods.d2l.D2LMethod.loss`` (context encoder, hypernetwork, combination and student exactly as the
  trainer runs them; the student's LM head only at the R response positions the data sources list in
  ``student_idx``) inside ``train.make_train_step`` with ``optim.make_optimizer`` (optax), jitted with the state
  donated, as ``train.run`` does. Float32. ``model.chunk_group`` = all B·K chunks, i.e. the context encoder and the
  hypernetwork see every chunk of the batch in one call, as the PyTorch side does (the trainer's default
  ``chunk_group = 1`` streams the chunks one at a time with ``lax.map`` to bound memory: ~1.5x slower here).
* **PyTorch** (written here from the spec, not from the reference code): ``transformers.LlamaForCausalLM`` built from
  the same config with our weights copied in; the context encoder is a separate frozen ``LlamaModel`` of L-1 layers
  (forward pre-hooks collect every layer's input, plus the final-normed output) run under ``no_grad``; an own
  minimal Perceiver (SwiGLU modality projection, sandwich-norm cross-attention resamplers, GQA via
  ``scaled_dot_product_attention``) + per-layer ResMLP / L2-norm / head module with the same shapes and our
  hypernetwork weights copied in; per-example LoRA applied by forward hooks on every layer's ``mlp.down_proj``
  (y += α · (x Aᵀ) B with A, B [B, R, d] of that layer); the logits of every position, as the reference (and
  transformers' default) computes them, with the CE over the response tokens; ``torch.optim.AdamW`` with two param
  groups (decay / no decay) and ``clip_grad_norm_``. Float32, eager (``torch.compile`` is not used: the reference trains eager, and an
  inductor compile would have to be timed and amortised like XLA's).

Both sides get identical inputs and weights. The first-step losses are compared (``loss_abs_diff``; float32, both
on CPU: expected ≤ 1e-4) and so are the losses after one optimiser step (``loss2_abs_diff``: also checks grads,
clipping and AdamW). Timing, after two warm-up steps of each (the loss checks): ``--steps`` single steps of each
framework on the same batch, alternating J T T J J T ... (each step blocked: ``block_until_ready`` / ``float``), so
both see the same load on a shared machine; the medians are reported. Ratio = torch median / JAX median (also the
median of the per-pair ratios). The JAX compile is reported apart: first call minus the second (steady) call.
The JAX step is jitted with the trainer's ``train.step_compiler_options()`` (on CPU: temporaries in heaps of at
most 16 MiB, which malloc recycles between steps instead of mapping ~200 MiB afresh every step).
Threads: by default each framework uses its own pool over every core; ``--threads 1`` runs both on one core, the
cleaner comparison on a machine shared with other jobs: the process is pinned to one CPU before jax is imported
(``os.sched_setaffinity``; XLA:CPU of JAX 0.10 ignores ``--xla_cpu_multi_thread_eigen=false`` and keeps a pool
over every core) and ``torch.set_num_threads(1)``.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402


def _threads_from_argv(argv):
    for i, x in enumerate(argv):
        if x == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if x.startswith("--threads="):
            return int(x.split("=", 1)[1])
    return None


if __name__ == "__main__" and _threads_from_argv(sys.argv[1:]) == 1:
    # one core for XLA too (before jax is imported: XLA sizes its pool then); torch gets torch.set_num_threads(1)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

PRESETS = {
    # a small llama + a small hypernetwork; sized so one step is ~0.1-0.5 s on 2 CPU cores
    "bench": dict(base=dict(model_type="llama", vocab_size=4096, hidden_size=256, intermediate_size=768,
                            num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64, max_position_embeddings=4096),
                  hyper=dict(latent_size=128, n_latent_queries=8, num_blocks=2, n_heads=4, head_dim=32,
                             num_key_value_heads=2),
                  r=8, batch=4, chunks=2, chunk_len=128, query_len=128, response=32),
    # the size sweep (--sweep): the same step at half and a quarter of the bench widths (vocab, d_ff, latents and
    # token counts scaled along), to show how the ratio moves from overhead-bound to matmul-bound
    "h64": dict(base=dict(model_type="llama", vocab_size=1024, hidden_size=64, intermediate_size=192, num_layers=4,
                          num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=4096),
                hyper=dict(latent_size=32, n_latent_queries=8, num_blocks=2, n_heads=4, head_dim=8,
                           num_key_value_heads=2),
                r=8, batch=4, chunks=2, chunk_len=64, query_len=64, response=16),
    "h128": dict(base=dict(model_type="llama", vocab_size=2048, hidden_size=128, intermediate_size=384,
                           num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32, max_position_embeddings=4096),
                 hyper=dict(latent_size=64, n_latent_queries=8, num_blocks=2, n_heads=4, head_dim=16,
                            num_key_value_heads=2),
                 r=8, batch=4, chunks=2, chunk_len=96, query_len=96, response=24),
    "smoke": dict(base=dict(model_type="llama", vocab_size=256, hidden_size=48, intermediate_size=96, num_layers=3,
                            num_heads=2, num_kv_heads=1, head_dim=24, max_position_embeddings=512),
                  hyper=dict(latent_size=16, n_latent_queries=4, num_blocks=1, n_heads=2, head_dim=8,
                             num_key_value_heads=1),
                  r=2, batch=2, chunks=2, chunk_len=16, query_len=16, response=4),
}
LR, WD, CLIP, L1_COEF = 1e-3, 0.01, 1.0, 0.1
NO_DECAY = re.compile(r"(scaler|bias|norm|ln_|latents)", re.IGNORECASE)  # = D2LMethod.decay_mask's exclusions


# ===== inputs ==================================================================================================

def make_batch(p, vocab, seed=0):
    """ctx [B, K, T] (every slot used, the last chunk of each document partly padded), query+response [B, Tq]."""
    rng = np.random.default_rng(seed)
    b, k, t, tq, resp = p["batch"], p["chunks"], p["chunk_len"], p["query_len"], p["response"]
    ctx_ids = rng.integers(10, vocab, size=(b, k, t)).astype(np.int32)
    ctx_mask = np.ones((b, k, t), np.int32)
    for i in range(b):
        pad = (3 * i + t // 8) % (t // 2)
        if pad:
            ctx_mask[i, -1, -pad:] = 0
            ctx_ids[i, -1, -pad:] = 0
    tokens = rng.integers(10, vocab, size=(b, tq)).astype(np.int32)
    loss_mask = np.zeros((b, tq), np.float32)
    loss_mask[:, tq - resp - 1:tq - 1] = 1.0  # position t predicts token t+1: the last `resp` tokens
    # what the trainer's data sources add: loss_mask's positions, where alone the JAX step computes logits (the
    # PyTorch side reads loss_mask)
    from hyperlora_jax.methods.d2l_data import response_index
    idx, valid = (np.stack(x) for x in zip(*(response_index(m, resp) for m in loss_mask)))
    return {"ctx_ids": ctx_ids, "ctx_mask": ctx_mask, "n_chunks": np.full((b,), k, np.int32), "tokens": tokens,
            "segment_ids": np.ones((b, tq), np.int32), "loss_mask": loss_mask, "student_idx": idx,
            "resp_valid": valid}


# ===== JAX side: the project's trainer step ======================================================================

def jax_setup(p, seed=0):
    import ml_collections

    from hyperlora_jax.methods.d2l import D2LMethod
    from hyperlora_jax.model import init_params as init_base
    from hyperlora_jax.optim import make_optimizer
    from hyperlora_jax.train import make_train_step, step_compiler_options

    bc = C.model_config(p["base"])
    hc = C.hyper_config(bc, p["hyper"], r=p["r"])
    cfg = ml_collections.ConfigDict(dict(
        model=dict(chunk_group=p["batch"] * p["chunks"], scaler_b_init=1.0),
        loss=dict(kind="ce", l1_coef=L1_COEF, neftune_alpha=0.0),
        remat="none", compute_dtype="float32", learning_rate=LR, warmup_steps=0, num_train_steps=1000,
        schedule="constant", weight_decay=WD, max_grad_norm=CLIP))
    base = init_base(bc, jax.random.PRNGKey(seed))
    method = D2LMethod.without_data(cfg, bc, hc, base)  # the plug-in without its data/tokenizer start-up
    # scaler_B starts at 1 (the toy preset's choice), so the generated LoRAs contribute to the loss
    hyper = method.init_trainable(jax.random.PRNGKey(seed + 1))
    tx = make_optimizer(cfg, method.decay_mask)
    state = {"step": jnp.zeros((), jnp.int32), "params": hyper, "opt_state": tx.init(hyper),
             "rng": jax.random.PRNGKey(seed + 2)}
    step = jax.jit(make_train_step(method, tx, 1), donate_argnums=(0,), compiler_options=step_compiler_options())
    return method, base, state, step


# ===== PyTorch side ==============================================================================================

def torch_modules():
    """The torch hypernetwork classes (defined lazily so importing this file does not import torch)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self, d, eps=1e-6):
            super().__init__()
            self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

        def forward(self, x):
            xf = x.float()
            return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    class SwiGLU(nn.Module):
        def __init__(self, d_in, hidden, d_out):
            super().__init__()
            self.gate_proj = nn.Linear(d_in, hidden, bias=False)
            self.up_proj = nn.Linear(d_in, hidden, bias=False)
            self.down_proj = nn.Linear(hidden, d_out, bias=False)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class CrossAttention(nn.Module):
        """Queries from the latents, keys/values from the context only; GQA; non-causal; key mask."""

        def __init__(self, d, n_heads, n_kv, hd):
            super().__init__()
            self.n_heads, self.n_kv, self.hd = n_heads, n_kv, hd
            self.q_proj = nn.Linear(d, n_heads * hd, bias=False)
            self.k_proj = nn.Linear(d, n_kv * hd, bias=False)
            self.v_proj = nn.Linear(d, n_kv * hd, bias=False)
            self.o_proj = nn.Linear(n_heads * hd, d, bias=False)

        def forward(self, lat, ctx, mask=None):
            b, nq, _ = lat.shape
            t = ctx.shape[1]
            q = self.q_proj(lat).view(b, nq, self.n_heads, self.hd).transpose(1, 2)
            k = self.k_proj(ctx).view(b, t, self.n_kv, self.hd).transpose(1, 2)
            v = self.v_proj(ctx).view(b, t, self.n_kv, self.hd).transpose(1, 2)
            am = None if mask is None else mask[:, None, None, :].bool()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=am, enable_gqa=self.n_kv != self.n_heads)
            return self.o_proj(out.transpose(1, 2).reshape(b, nq, self.n_heads * self.hd))

    class PerceiverLayer(nn.Module):
        def __init__(self, c):
            super().__init__()
            d = c["latent_size"]
            for n in ("input_latents_layernorm", "input_context_layernorm", "post_attention_layernorm",
                      "pre_ff_layernorm", "post_ff_layernorm"):
                setattr(self, n, RMSNorm(d))
            self.self_attn = CrossAttention(d, c["n_heads"], c["num_key_value_heads"], c["head_dim"])
            self.mlp = SwiGLU(d, 4 * d, d)

        def forward(self, lat, ctx, mask):
            h = lat + self.post_attention_layernorm(
                self.self_attn(self.input_latents_layernorm(lat), self.input_context_layernorm(ctx), mask))
            return h + self.post_ff_layernorm(self.mlp(self.pre_ff_layernorm(h)))

    class Resampler(nn.Module):
        def __init__(self, c, n_latents, n_blocks):
            super().__init__()
            self.latents_q = nn.Parameter(torch.randn(n_latents, c["latent_size"]))
            self.n_blocks = n_blocks
            for i in range(n_blocks):
                setattr(self, f"layers_{i}", PerceiverLayer(c))
            self.layernorm = RMSNorm(c["latent_size"])

        def forward(self, ctx, mask=None):
            x = self.latents_q.expand(ctx.shape[0], -1, -1)
            for i in range(self.n_blocks):
                x = getattr(self, f"layers_{i}")(x, ctx, mask)
            return self.layernorm(x)

    class Perceiver(nn.Module):
        def __init__(self, c, feature_size, n_out):
            super().__init__()
            self.modality_projection = SwiGLU(feature_size, 4 * feature_size, c["latent_size"])
            self.encoder = Resampler(c, c["n_latent_queries"], c["num_blocks"])
            self.decoder = Resampler(c, n_out, 1)

        def forward(self, x, mask):
            return self.decoder(self.encoder(self.modality_projection(x), mask))

    class PerLayerMix(nn.Module):
        def __init__(self, n_layers, d_in, d_out):
            super().__init__()
            self.kernel = nn.Parameter(torch.empty(n_layers, d_in, d_out).uniform_(-(3 / d_in) ** 0.5,
                                                                                  (3 / d_in) ** 0.5))
            self.bias = nn.Parameter(torch.empty(n_layers, d_out).uniform_(-d_in ** -0.5, d_in ** -0.5))

        def forward(self, x):  # x [K, L, M, r, d]
            return torch.einsum("klmrd,lde->klmre", x, self.kernel) + self.bias[:, None, None, :]

    class ResMLP(nn.Module):
        def __init__(self, n_layers, d):
            super().__init__()
            self.ln_in, self.ln_out = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
            self.mix1, self.mix2 = PerLayerMix(n_layers, d, 4 * d), PerLayerMix(n_layers, 4 * d, d)

        def forward(self, x):
            return x + self.ln_out(self.mix2(F.silu(self.mix1(self.ln_in(x)))))

    class PerLayerHead(nn.Module):
        def __init__(self, n_layers, n_mod, d, d_lora):
            super().__init__()
            self.kernel = nn.Parameter(torch.zeros(n_layers, n_mod, d, d_lora))

        def forward(self, x):
            return torch.einsum("klmrd,lmde->klmre", x, self.kernel)

    class Head(nn.Module):
        def __init__(self, hc):
            super().__init__()
            L, r, d = hc.n_layers, hc.r, hc.latent_size
            self.mods, self.d_in, self.d_out, self.r = hc.target_modules, hc.d_in, hc.d_out, r
            self.layers_0 = ResMLP(L, d)
            self.head = PerLayerHead(L, len(self.mods), d, hc.d_lora)
            P = lambda shape: nn.ParameterDict({m: nn.Parameter(torch.zeros(*s)) for m, s in shape})
            self.scaler_A = P([(m, (L, r)) for m in self.mods])
            self.scaler_B = P([(m, (L, r)) for m in self.mods])
            self.bias_A = P([(m, (L, r, di)) for m, di in zip(self.mods, self.d_in)])
            self.bias_B = P([(m, (L, r, do)) for m, do in zip(self.mods, self.d_out)])

        def forward(self, emb):  # [K, L, M, r, d] → per chunk A {m: [K, L, r, d_in]}, B {m: [K, L, r, d_out]}
            x = self.layers_0(emb)
            x = x / x.norm(dim=-1, keepdim=True)
            out = self.head(x)
            A, B = {}, {}
            for i, (m, di, do) in enumerate(zip(self.mods, self.d_in, self.d_out)):
                A[m] = out[:, :, i, :, :di] * self.scaler_A[m][:, :, None]
                B[m] = out[:, :, i, :, di:di + do] * self.scaler_B[m][:, :, None]
            return A, B

    class Hypernet(nn.Module):
        def __init__(self, hc, c):
            super().__init__()
            self.hc = hc
            self.perceiver = Perceiver(c, hc.perceiver.input_size, hc.n_queries_per_layer)
            self.head = Head(hc)

        def forward(self, feats, mask):  # feats [K, L, T, H], mask [K, T]
            k, L, t, h = feats.shape
            out = self.perceiver(feats.reshape(k * L, t, h), mask.repeat_interleave(L, dim=0))  # layer folded in
            hc = self.hc
            return self.head(out.reshape(k, L, hc.n_modules, hc.r, -1))

    return Hypernet


class TorchD2L:
    """The same step in PyTorch: frozen encoder + hypernetwork + student with per-example LoRA hooks."""

    def __init__(self, p, bc, hc, base_params, hyper_params, threads=None):
        import torch
        import transformers
        if threads:
            torch.set_num_threads(threads)
        from hyperlora_jax.io.hf_load import params_to_hf
        self.torch = torch
        self.p, self.bc, self.hc = p, bc, hc
        self.alpha = hc.alpha
        lc = transformers.LlamaConfig(
            vocab_size=bc.vocab_size, hidden_size=bc.hidden_size, intermediate_size=bc.intermediate_size,
            num_hidden_layers=bc.num_layers, num_attention_heads=bc.num_heads, num_key_value_heads=bc.num_kv_heads,
            head_dim=bc.head_dim, rms_norm_eps=bc.rms_norm_eps, rope_theta=bc.rope_theta,
            max_position_embeddings=bc.max_position_embeddings, tie_word_embeddings=False, attention_bias=False,
            mlp_bias=False, attn_implementation="sdpa")
        sd = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in params_to_hf(base_params, bc).items()}
        self.student = transformers.LlamaForCausalLM(lc).eval()
        self.student.load_state_dict(sd, strict=True)
        # the context encoder: a separate frozen copy keeping the first L-1 layers (as the reference does)
        ec = transformers.LlamaConfig(**{**lc.to_dict(), "num_hidden_layers": bc.num_layers - 1})
        self.encoder = transformers.LlamaModel(ec).eval()
        enc_sd = {k[len("model."):]: v for k, v in sd.items()
                  if k.startswith("model.") and not re.match(rf"model\.layers\.{bc.num_layers - 1}\.", k)}
        self.encoder.load_state_dict(enc_sd, strict=True)
        for m in (self.student, self.encoder):
            for q in m.parameters():
                q.requires_grad_(False)
        self._feats = []
        for layer in self.encoder.layers:
            layer.register_forward_pre_hook(self._collect, with_kwargs=True)
        # the hypernetwork, our weights copied in
        self.hyper = torch_modules()(hc, p["hyper"])
        self.load_hyper(hyper_params)
        # per-example LoRA on every layer's down_proj, bound per step
        self._lora = None
        for li, layer in enumerate(self.student.model.layers):
            layer.mlp.down_proj.register_forward_hook(self._lora_hook(li))
        decay = [q for n, q in self.hyper.named_parameters() if not NO_DECAY.search(n)]
        no_decay = [q for n, q in self.hyper.named_parameters() if NO_DECAY.search(n)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                                     lr=LR, betas=(0.9, 0.999), eps=1e-8)

    def load_hyper(self, hyper_params):
        torch = self.torch
        sd = {}
        for path, x in jax.tree_util.tree_leaves_with_path(hyper_params):
            keys = [str(getattr(k, "key", k)) for k in path]
            x = np.array(x, np.float32)
            if keys[-1] == "kernel" and x.ndim == 2:  # flax Dense [in, out] → torch Linear weight [out, in]
                keys[-1], x = "weight", x.T
            elif keys[-1] == "scale":
                keys[-1] = "weight"
            sd[".".join(keys)] = torch.from_numpy(np.ascontiguousarray(x))
        self.hyper.load_state_dict(sd, strict=True)

    def _collect(self, module, args, kwargs):
        self._feats.append(args[0] if args else kwargs["hidden_states"])

    def _lora_hook(self, li):
        def hook(module, inputs, output):
            if self._lora is None:
                return output
            A, B = self._lora  # [L, B, R, d_in], [L, B, R, d_out]
            h = self.torch.einsum("btd,brd->btr", inputs[0], A[li]) * self.alpha
            return output + self.torch.einsum("btr,bro->bto", h, B[li])
        return hook

    def features(self, ids, mask):
        """[K, T] → [K, L, T, H]: inputs of layers 0..L-2 and the final-normed output of layer L-2."""
        torch = self.torch
        self._feats = []
        with torch.no_grad():
            last = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        feats = torch.stack(self._feats + [last], dim=1)
        self._feats = []
        return feats

    def loss(self, batch):
        torch = self.torch
        b, k, t = batch["ctx_ids"].shape
        ids, mask = batch["ctx_ids"].reshape(b * k, t), batch["ctx_mask"].reshape(b * k, t)
        A, B = self.hyper(self.features(ids, mask), mask)
        mod = self.hc.target_modules[0]
        bA, bB = self.hyper.head.bias_A[mod], self.hyper.head.bias_B[mod]
        L, r = self.hc.n_layers, self.hc.r

        def combine(x, bias):  # [B·K, L, r, d] → [L, B, (K+1)·r, d]: chunks in order, then the bias block
            d = x.shape[-1]
            x = x.reshape(b, k, L, r, d).permute(2, 0, 1, 3, 4).reshape(L, b, k * r, d)
            return torch.cat([x, bias[:, None].expand(L, b, r, d)], dim=2)

        cA, cB = combine(A[mod], bA), combine(B[mod], bB)
        self._lora = (cA, cB)
        try:
            logits = self.student(input_ids=batch["tokens"]).logits
        finally:
            self._lora = None
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        lp = logp.gather(-1, batch["tokens"][:, 1:, None].long())[..., 0]
        m = batch["loss_mask"][:, :-1]
        tok = m.sum(1)
        row = (-lp * m).sum(1) / tok.clamp(min=1.0)
        has = (tok > 0).float()
        task = (row * has).sum() / has.sum().clamp(min=1.0)
        l1 = cA.abs().mean() + cB.abs().mean()
        return task + L1_COEF * l1

    def step(self, batch):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.hyper.parameters(), CLIP)
        self.opt.step()
        return loss.detach()


# ===== the comparison ============================================================================================

def run(preset="bench", steps=6, threads=None, seed=0):
    import torch
    p = PRESETS[preset]
    method, base, state, jstep = jax_setup(p, seed)
    bc, hc = method.base_cfg, method.hyper_cfg
    nb = make_batch(p, bc.vocab_size, seed)
    jbatch = {k: jnp.asarray(v) for k, v in nb.items()}
    tb = {k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.int32 else v) for k, v in nb.items()}
    tmod = TorchD2L(p, bc, hc, base, jax.device_get(state["params"]), threads)

    # ---- equal losses at step 1 (same weights) and after one optimiser step
    t0 = time.perf_counter()
    state, m1 = jstep(state, base, jbatch)
    j_loss1 = float(m1["loss"])
    j_compile_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, m2 = jstep(state, base, jbatch)
    j_loss2 = float(m2["loss"])
    j_second = time.perf_counter() - t0
    t_loss1 = float(tmod.step(tb))
    t_loss2 = float(tmod.step(tb))
    # ---- timing: single steps, alternating frameworks (order swapped every pair), each blocked; medians
    j_times, t_times = [], []
    for i in range(steps):
        for fw in (("jax", "torch") if i % 2 == 0 else ("torch", "jax")):
            t0 = time.perf_counter()
            if fw == "jax":
                state, m = jstep(state, base, jbatch)
                jax.block_until_ready(m["loss"])
                j_times.append(time.perf_counter() - t0)
            else:
                float(tmod.step(tb))
                t_times.append(time.perf_counter() - t0)
    jm, tm = float(np.median(j_times)), float(np.median(t_times))
    j_sps, t_sps = 1.0 / jm, 1.0 / tm
    pair_ratio = float(np.median(np.asarray(t_times) / np.asarray(j_times)))
    min_ratio = min(t_times) / min(j_times)
    ctx_tokens = int(nb["ctx_mask"].sum())
    q_tokens = int(nb["segment_ids"].sum())
    summary = {
        "preset": preset, "timed_steps_each": steps,
        "base": {"hidden": bc.hidden_size, "layers": bc.num_layers, "d_ff": bc.intermediate_size,
                 "vocab": bc.vocab_size, "params": bc.num_params()},
        "hypernet_params": int(sum(x.size for x in jax.tree_util.tree_leaves(state["params"]))),
        "batch": {"docs": p["batch"], "chunks": p["chunks"], "chunk_len": p["chunk_len"],
                  "query_len": p["query_len"], "ctx_tokens": ctx_tokens, "query_tokens": q_tokens},
        "jax_compile_s": max(j_compile_first - j_second, 0.0), "jax_first_call_s": j_compile_first,
        "jax_steps_per_s": j_sps, "torch_steps_per_s": t_sps, "jax_over_torch": j_sps / t_sps,
        "jax_over_torch_median_of_pairs": pair_ratio, "jax_over_torch_best_steps": min_ratio,
        "jax_min_ms": 1e3 * min(j_times), "torch_min_ms": 1e3 * min(t_times),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpus": len(os.sched_getaffinity(0)),
        "jax_ms_per_step": 1e3 / j_sps, "torch_ms_per_step": 1e3 / t_sps,
        "step_s": {"jax": j_times, "torch": t_times},
        "loss_jax": j_loss1, "loss_torch": t_loss1, "loss_abs_diff": abs(j_loss1 - t_loss1),
        "loss2_jax": j_loss2, "loss2_torch": t_loss2, "loss2_abs_diff": abs(j_loss2 - t_loss2),
        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
    }
    rows = [{"framework": "JAX (project trainer step)", "ms_per_step": summary["jax_ms_per_step"],
             "min_ms": summary["jax_min_ms"],
             "steps_per_s": j_sps, "compile_s": summary["jax_compile_s"], "loss1": j_loss1, "loss2": j_loss2},
            {"framework": f"PyTorch {torch.__version__} eager", "ms_per_step": summary["torch_ms_per_step"],
             "min_ms": summary["torch_min_ms"],
             "steps_per_s": t_sps, "compile_s": None, "loss1": t_loss1, "loss2": t_loss2}]
    return rows, summary


SWEEP = ("h64", "h128", "bench")


def sweep(steps, threads, out, sizes=SWEEP):
    """The step at each size (default SWEEP): one table of JAX / PyTorch by model width."""
    rows = []
    for name in sizes:
        _, s = run(name, steps, threads)
        b = s["batch"]
        rows.append({"preset": name, "hidden": s["base"]["hidden"], "vocab": s["base"]["vocab"],
                     "base_M": s["base"]["params"] / 1e6, "hyper_M": s["hypernet_params"] / 1e6,
                     "tokens": f"{b['docs']}x{b['chunks']}x{b['chunk_len']} + {b['docs']}x{b['query_len']}",
                     "jax_ms": s["jax_ms_per_step"], "torch_ms": s["torch_ms_per_step"],
                     "ratio": s["jax_over_torch"], "pair_ratio": s["jax_over_torch_median_of_pairs"],
                     "compile_s": s["jax_compile_s"], "loss_abs_diff": s["loss_abs_diff"]})
        print(f"  {name}: JAX {s['jax_ms_per_step']:.1f} ms, PyTorch {s['torch_ms_per_step']:.1f} ms", flush=True)
    print(C.table(rows, [("preset", "preset", ""), ("hidden", "H", "d"), ("vocab", "vocab", "d"),
                         ("base_M", "base M params", ".2f"), ("hyper_M", "hypernet M params", ".2f"),
                         ("tokens", "ctx + query tokens", ""), ("jax_ms", "JAX ms/step", ",.1f"),
                         ("torch_ms", "PyTorch ms/step", ",.1f"), ("ratio", "JAX / PyTorch", ".2f"),
                         ("pair_ratio", "median of pair ratios", ".2f"), ("compile_s", "JAX compile s", ".1f")],
                  f"D2L training step by model size (medians of {steps} alternating steps each, torch threads "
                  f"{threads or 'default'}, {len(os.sched_getaffinity(0))} CPU(s))"))
    payload = {"rows": rows, "summary": {"sweep": list(sizes), "steps": steps, "threads": threads}}
    payload["json"] = C.write_json("train_step_sizes", out, dict(payload))
    return payload


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="bench")
    ap.add_argument("--sweep", action="store_true", help=f"every size of {SWEEP}: one table of the ratio by size")
    ap.add_argument("--smoke", action="store_true", help="= --preset smoke --steps 2")
    ap.add_argument("--steps", type=int, default=6, help="timed steps of each framework (alternating)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's own = cores); 1 also makes XLA single-threaded")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.smoke:
        a.preset, a.steps = "smoke", 2
    print(f"backend {jax.default_backend()}; load {os.getloadavg()}", flush=True)
    if a.sweep:  # with --smoke: the smoke size only
        return sweep(a.steps, a.threads, a.out, ("smoke",) if a.smoke else SWEEP)
    rows, s = run(a.preset, a.steps, a.threads)
    b = s["batch"]
    print(C.table(rows, [("framework", "framework", ""), ("ms_per_step", "ms / step (median)", ",.1f"),
                         ("min_ms", "ms / step (best)", ",.1f"),
                         ("steps_per_s", "steps / s", ".2f"), ("compile_s", "compile s", ".1f"),
                         ("loss1", "loss step 1", ".6f"), ("loss2", "loss step 2", ".6f")],
                  f"D2L training step, preset {a.preset}: base llama H={s['base']['hidden']} L={s['base']['layers']} "
                  f"({s['base']['params'] / 1e6:.1f} M params, frozen), hypernetwork {s['hypernet_params'] / 1e6:.2f} M "
                  f"params; {b['docs']} docs x {b['chunks']} chunks x {b['chunk_len']} tokens, query {b['query_len']}"
                  f" (median of {a.steps} alternating steps each, torch threads {s['torch_threads']})"))
    print(f"JAX / PyTorch speed: {s['jax_over_torch']:.2f}x (medians; median of per-pair ratios "
          f"{s['jax_over_torch_median_of_pairs']:.2f}x, best steps {s['jax_over_torch_best_steps']:.2f}x; "
          f"goal >= 1.5x); JAX compile {s['jax_compile_s']:.1f} s; "
          f"|loss_jax - loss_torch| step 1 = {s['loss_abs_diff']:.2e}, after one AdamW step = "
          f"{s['loss2_abs_diff']:.2e}")
    payload = {"rows": rows, "summary": s}
    payload["json"] = C.write_json("train_step", a.out, dict(payload))
    return payload


if __name__ == "__main__":
    main()
