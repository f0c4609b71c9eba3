"""Doc-to-LoRA training as a trainer plug-in (method ``d2l``).

Per example: one document (as up to ``data.max_chunks`` template-wrapped chunks) and one query turn + response.

    ctx chunks [B, K, T] ──frozen context encoder──▶ features ──hypernetwork (trainable)──▶ per-chunk LoRAs
        └─ combine along rank (padded chunk slots get chunk scaler 0) ──▶ Adapter, one row per document
    query + response [B, Tq] ──frozen base model + Adapter (no document in context)──▶ student logits

Objectives (``loss.kind``):
  ce    next-token cross-entropy on the response tokens (the reference's NIAH objective);
  kd    context distillation: teacher = the frozen base model WITH the document in context (``teacher_tokens``),
        computed on the fly; loss = − Σ_{j ∈ teacher top-k} p_teacher(j) · log_softmax(student)_j on response tokens
        (unrenormalised top-k, k = ``loss.top_k``).
Both objectives read the logits only at the R positions that predict response tokens (``student_idx`` /
``teacher_idx`` [B, R], ``resp_valid``; from the data sources): the LM head runs on R rows instead of every
position (at gemma-2's 256k vocabulary a 2048-token row's float32 logits alone are 2.1 GB).
Packed batches (``data.pack_docs`` D > 0, ``methods/d2l_pack.py``): the same examples, D documents per context-encoder
and teacher row (segment ids; exact), student rows cut to the batch's longest QA; ``batch_size`` stays in documents.
Reductions: mean over each response's tokens, then mean over documents (one response per document here, which is
the reference's per-context averaging with ``max_qas_per_sample = 1``). Plus ``loss.l1_coef`` × the reference's L1
on the combined adapters (mean over modules of mean |A| + mean |B|, bias block and padding included).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.data.iterators import IndexedBatchIterator
from hyperlora_jax.data.sources import get_evaluator, get_source
from hyperlora_jax.losses import adapter_l1 as l1_of_adapter, kd_loss, row_mean as per_doc_mean, token_logprobs as logprobs_of
from hyperlora_jax.methods.base import Hook, HookContext, Method
from hyperlora_jax.model import forward, segment_positions
from hyperlora_jax.packaged import toy_base_dir


@dataclasses.dataclass(frozen=True)
class D2LParts:
    """The model half of a D2LMethod given directly instead of loaded (``D2LMethod.without_data``): the base model's
    ModelConfig and parameter tree (frozen), the hypernetwork's D2LHypernetConfig and the context-encoder layer
    (None = the last)."""
    base_cfg: Any
    hyper_cfg: Any
    base_params: Any
    layer_idx: int | None = None


class D2LMethod(Method):
    def __init__(self, config, mesh, parts: D2LParts | None = None):
        """The trainer's constructor (``parts`` None): loads the base model, tokenizer and data source. With
        ``parts`` (see ``without_data``) nothing is loaded: no tokenizer, no data source."""
        self.config, self.mesh = config, mesh
        self.dtype = jnp.dtype(config.get("compute_dtype", "float32"))
        if parts is not None:
            self.base_cfg, self.hyper_cfg, self.base_params = parts.base_cfg, parts.hyper_cfg, parts.base_params
            self.layer_idx, self.example, self.size = parts.layer_idx, None, None
            return
        from hyperlora_jax.d2l.context import load_tokenizer, padded_chunk_len, template_affixes
        from hyperlora_jax.d2l.hypernet import D2LHypernetConfig
        from hyperlora_jax.io.hf_load import load_model

        mc = config.model
        base_dir = mc.base_model or toy_base_dir()
        self.base_dir = base_dir
        self.base_cfg, self.base_params = load_model(base_dir, mesh=mesh)  # each leaf straight into its shardings
        self.base_cfg = self.base_cfg.with_run_options(mc)
        self.tok = load_tokenizer(base_dir)
        self.affixes = template_affixes(self.tok)
        self.chunk_len = padded_chunk_len(config.data.chunk_tokens, self.affixes)
        shapes = self.base_cfg.projection_shapes()
        mods = tuple(sorted(mc.target_modules))
        self.layer_idx = mc.get("layer_idx") or None
        self.hyper_cfg = D2LHypernetConfig.create(
            feature_size=self.base_cfg.hidden_size, n_layers=self.base_cfg.num_layers, r=mc.r,
            d_in={m: shapes[m][0] for m in mods}, d_out={m: shapes[m][1] for m in mods},
            ctx_encoder_type=mc.ctx_encoder_type, latent_size=mc.latent_size, n_latent_queries=mc.n_latent_queries,
            num_blocks=mc.num_blocks, num_pre_head_layers=mc.get("num_pre_head_layers", 1),
            n_heads=mc.n_heads, head_dim=mc.head_dim, num_key_value_heads=mc.num_kv_heads)
        from hyperlora_jax.methods.d2l_data import BATCH_CHUNK_COUNT_SOURCES, D2LFormatter
        if config.data.get("batch_chunk_count", False) and config.data.source not in BATCH_CHUNK_COUNT_SOURCES:
            raise ValueError(f"data.batch_chunk_count is not supported by data source {config.data.source!r} "
                             f"(supported: {', '.join(sorted(BATCH_CHUNK_COUNT_SOURCES))})")
        docs = int(config.data.get("pack_docs", 0))
        if docs:
            if config.data.get("batch_chunk_count", False):
                raise ValueError("data.pack_docs and data.batch_chunk_count cannot be combined (packing already "
                                 "sizes each batch to its documents)")
            accum = int(config.get("grad_accum_steps", 1))
            if docs < 0 or config.batch_size % (docs * accum * jax.process_count()):
                raise ValueError(f"batch_size {config.batch_size} must be a multiple of data.pack_docs {docs} x "
                                 f"grad_accum_steps {accum} x {jax.process_count()} processes (every micro-batch "
                                 "holds whole packed rows)")
        source = get_source("d2l", config.data.source)
        fmt = D2LFormatter(tok=self.tok, affixes=self.affixes, chunk_len=self.chunk_len,
                           vocab_size=int(self.base_cfg.vocab_size), batch_size=int(config.batch_size),
                           loss_kind=config.loss.kind)
        self.example, self.size = source(fmt, config.data, config.seed)

    @classmethod
    def without_data(cls, config, base_cfg, hyper_cfg, base_params, layer_idx=None, mesh=None):
        """The plug-in without tokenizer, base-model directory or data source (tests, benchmarks): what ``loss``,
        ``adapter``, ``decay_mask`` and ``init_trainable`` read; ``data_iterator`` refuses."""
        return cls(config, mesh, D2LParts(base_cfg, hyper_cfg, base_params, layer_idx))

    # ----- plug-in interface -------------------------------------------------------------------------------
    def fingerprint(self):
        h = self.hyper_cfg
        return {"method": "d2l", "base_layers": self.base_cfg.num_layers, "base_hidden": self.base_cfg.hidden_size,
                "ctx_encoder_type": h.ctx_encoder_type, "r": h.r, "target_modules": list(h.target_modules),
                "latent_size": h.latent_size}

    def decay_mask(self, params):
        """The reference's exclusions (spec 10.5): scalers, biases (incl. the bias LoRA), norms, latents."""
        import re

        from hyperlora_jax.sharding import path_str
        skip = re.compile(r"(scaler|bias|norm|ln_|latents)", re.IGNORECASE)
        return jax.tree_util.tree_map_with_path(lambda p, x: not skip.search(path_str(p)), params)

    def init_trainable(self, rng):
        """Fresh hypernetwork (spec section 6 init). ``model.scaler_b_init`` (default 0, the reference) overrides the
        start value of every ``scaler_B``: at 0 the generated LoRAs start switched off and the context path only
        turns on if ``scaler_B`` drifts away from 0 — at toy scale whether it does depends on the seed, so the toy
        preset starts it at 1 (generated ΔW is still small: the head's init std is ~1e-2)."""
        from hyperlora_jax.d2l.hypernet import init_params
        params = init_params(self.hyper_cfg, rng)
        s = float(self.config.model.get("scaler_b_init", 0.0))
        if s:
            head = dict(params["head"])
            head["scaler_B"] = {m: jnp.full_like(v, s) for m, v in head["scaler_B"].items()}
            params = {**params, "head": head}
        return params

    def frozen(self):
        return self.base_params

    def adapter(self, hyper_params, base_params, ctx_ids, ctx_mask, n_chunks):
        """Adapter [one row per document] from padded chunk slots ctx_ids/ctx_mask [B, K, T], n_chunks [B]: rank
        (K + 1)·r, document b's chunks first, then the bias block, then zeros (as the reference's combine_lora);
        unused slots are encoded (fixed shapes) but never selected."""
        from hyperlora_jax.d2l.internalize import adapter_from_chunks
        b, k, t = ctx_ids.shape
        return adapter_from_chunks(hyper_params, base_params, ctx_ids.reshape(b * k, t), ctx_mask.reshape(b * k, t),
                                   n_chunks.astype(jnp.int32), None, None, hyper_cfg=self.hyper_cfg,
                                   base_cfg=self.base_cfg, layer_idx=self.layer_idx, max_chunks=k,
                                   chunk_group=self.config.model.get("chunk_group", 1), dtype=self.dtype,
                                   remat_chunks=self.config.model.get("remat_chunks", False),
                                   chunk_offsets=jnp.arange(b, dtype=jnp.int32) * k)

    def packed_adapter(self, hyper_params, base_params, batch):
        """Adapter [P·D document rows] of a packed batch (``methods/d2l_pack.py``): rank (max_chunks + 1)·r with
        max_chunks = ``data.max_chunks``, the padded layout's rank (without ``batch_chunk_count`` trimming)."""
        from hyperlora_jax.d2l.internalize import adapter_from_packed
        p, d = batch["doc_chunks"].shape
        return adapter_from_packed(hyper_params, base_params, batch["ctx_tokens"], batch["ctx_segment_ids"],
                                   batch["ctx_positions"], batch["doc_chunks"], hyper_cfg=self.hyper_cfg,
                                   base_cfg=self.base_cfg, n_slots=batch["ctx_slot_doc"].shape[-1],
                                   max_chunks=int(self.config.data.max_chunks), layer_idx=self.layer_idx,
                                   row_group=_divisor(p, self.config.model.get("chunk_group", 1)), dtype=self.dtype,
                                   remat_chunks=self.config.model.get("remat_chunks", False))

    def loss(self, hyper_params, base_params, batch, rng):
        if "ctx_tokens" in batch:  # packed (data.pack_docs): documents become rows of the student and the loss
            adapter = self.packed_adapter(hyper_params, base_params, batch)
            flat = lambda x: x.reshape((-1,) + x.shape[2:])
            batch = dict(batch, **{k: flat(batch[k]) for k in ("tokens", "segment_ids", "loss_mask", "student_idx",
                                                               "resp_valid")})
        else:
            adapter = self.adapter(hyper_params, base_params, batch["ctx_ids"], batch["ctx_mask"], batch["n_chunks"])
        seg = batch["segment_ids"]
        pos = segment_positions(seg)
        emb = None
        alpha = self.config.loss.get("neftune_alpha", 0.0)
        if alpha:  # NEFTune: uniform noise ±α/√(T·d) on the student's input embeddings (before gemma's √H scale)
            emb = base_params["embed_tokens"]["embedding"].astype(self.dtype)[batch["tokens"]]
            t, d = emb.shape[1], emb.shape[2]
            emb = emb + jax.random.uniform(rng, emb.shape, emb.dtype, -1.0, 1.0) * alpha / np.sqrt(t * d)
            if self.base_cfg.embed_scale:
                emb = emb * jnp.asarray(self.base_cfg.hidden_size ** 0.5, self.dtype)
        # logits only at the R positions that predict response tokens (student_idx): the LM head is the largest
        # matmul at real vocabularies and the loss needs no other row
        s_idx, valid = batch["student_idx"], batch["resp_valid"]
        out = forward(base_params, self.base_cfg, batch["tokens"], positions=pos, segment_ids=seg, adapter=adapter,
                      dtype=self.dtype, remat=self.config.get("remat", "none"), embeddings=emb, logits_at=s_idx)
        if self.config.loss.kind == "ce":
            targets = jnp.take_along_axis(batch["tokens"], s_idx + 1, axis=1)
            task = per_doc_mean(-logprobs_of(out["logits"], targets), valid.astype(jnp.float32))
        elif self.config.loss.kind == "kd":
            tseg, t_idx = batch["teacher_segment_ids"], batch["teacher_idx"]
            if "teacher_positions" in batch:  # packed: rows of several documents, logits at [P, D·R]
                tpos, t_idx = batch["teacher_positions"], t_idx.reshape(t_idx.shape[0], -1)
            else:
                tpos = segment_positions(tseg)
            teacher = forward(base_params, self.base_cfg, batch["teacher_tokens"], positions=tpos, segment_ids=tseg,
                              dtype=self.dtype, logits_at=t_idx)["logits"]
            teacher = teacher.reshape(s_idx.shape + teacher.shape[-1:])  # [documents, R, V]
            task = kd_loss(out["logits"], teacher, valid, self.config.loss.top_k)
        else:
            raise ValueError(f"unknown loss.kind {self.config.loss.kind!r} (ce, kd)")
        l1 = l1_of_adapter(adapter)
        loss = task + self.config.loss.l1_coef * l1
        return loss, {"loss": loss, "task_loss": task, "l1": l1, "tokens": (seg > 0).sum().astype(jnp.float32)}

    def data_iterator(self, process_index, process_count):
        from functools import partial
        if self.example is None:
            raise ValueError("this D2LMethod was built without_data: it has no data source")

        from hyperlora_jax.methods.d2l_data import collate
        docs = int(self.config.data.get("pack_docs", 0))
        if docs:
            from hyperlora_jax.methods.d2l_pack import PackedBatchIterator
            return PackedBatchIterator(self.example, self.size, self.config.batch_size, docs_per_row=docs,
                                       seed=self.config.seed, process_index=process_index,
                                       process_count=process_count)
        trim = bool(self.config.data.get("batch_chunk_count", False))
        return IndexedBatchIterator(self.example, self.size, self.config.batch_size, collate=partial(collate, trim_slots=trim),
                                    seed=self.config.seed, process_index=process_index, process_count=process_count)

    def flops_per_step(self, batch_tokens: float) -> float:
        # frozen student: forward + backward through activations ≈ 4N per token (no weight gradients)
        return 4.0 * self.base_cfg.num_params() * batch_tokens

    def hooks(self):
        return [Hook("niah_eval", 0, self.final_niah_eval)]

    def final_niah_eval(self, ctx: HookContext):
        """With ``eval.lengths`` set: the toy NIAH table (the d2l evaluator 'toy_niah', ``toy/eval_d2l.py``)."""
        if not self.config.get("eval") or not self.config.eval.get("lengths"):
            return None
        return get_evaluator("d2l", "toy_niah")(self, jax.device_get(ctx.params), ctx.frozen, ctx.workdir)


def _divisor(n: int, g: int) -> int:
    """The largest divisor of n that is <= g (rows per packed encoder call)."""
    g = max(1, min(int(g), int(n)))
    while n % g:
        g -= 1
    return g
