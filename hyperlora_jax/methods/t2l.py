"""Text-to-LoRA training as a trainer plug-in (method 't2l'): SFT through a frozen base model, or reconstruction
of oracle LoRAs. Trainable: the hypernetwork only (``hyperlora_jax.t2l.hypernet``).

SFT (``t2l.mode = 'sft'``, spec T2L.md §7), per micro-batch:
  task_emb  = table[desc_index]          precomputed once at startup (encoder or a file), never differentiated
  adapter   = hypernet(task_emb)          one LoRA per example (all layers, all target modules), hypernet dropout on
  x         = embed(tokens) + NEFTune     U(+-alpha/sqrt(T*H)) on the base input embeddings (T = padded length; for
                                          gemma before the x sqrt(H) embedding scale, as the reference's hook)
  logits    = base(x, adapter)            frozen base model (``method.frozen()['base']``), LoRA scale t2l.scale
  loss      = mean_examples( sum_response CE_ls(logits, next token) / n_response ) + l2 * sum_m (mean A^2 + mean B^2)
  CE_ls is torch's label smoothing: (1 - eps) * nll + eps * mean_v(-log p_v).

Reconstruction (``t2l.mode = 'recon'``, spec §8): targets are per-task oracle LoRAs (PEFT directories, one per task);
  factorized:   0.5 * (L1(A, A_t) + L1(B, B_t)) averaged over modules, with ``recon.z_score`` the targets are
                z-scored per element over the tasks ((t - mean) / (std + 1e-10); std unbiased as torch's default)
  delta_w:      L1(A^T B, scaling * A_t^T B_t) averaged over modules (``recon.delta_w_scaling``, spec: 10000)
  Heads start from torch's default init (U(+-1/sqrt(head_in)), no zero/HyperInit), as the reference's recon runs.

Data: a *source* is ``build(formatter, data_cfg, seed) -> TaskData``, registered as kind 't2l' in
``hyperlora_jax.data.sources`` (formatter: the method's ``ChatFormatter`` for SFT, None for reconstruction).
``TaskData`` = (example(i) -> dict, size (None = endless), descriptions (all texts, embedded once at startup; examples
refer to them by ``desc_index``), task_names, oracle_dirs). Example dicts hold ``desc_index``, ``task_index`` and for
SFT ``tokens``, ``loss_mask`` (position t is in the loss iff token t+1 is a response token), ``segment_ids``
(1 = real token, 0 = padding), all fixed-length (``data.seq_len``). The built-in ``in_memory`` source takes tasks
from the config (``data.tasks``: {name: {descriptions, examples: ((prompt, response), ...), oracle_lora}}) or a JSON
file (``data.tasks_file``, same mapping), tokenised with the base tokenizer's chat template (the ``ChatFormatter``)
and sampled as the reference's hierarchical sampler: each "epoch" is a permutation of the tasks cut into groups of
``data.n_tasks_per_batch`` distinct tasks, one random example and one random description per task; a pure function
of (seed, i), so a global batch equal to ``n_tasks_per_batch`` holds distinct tasks.

SFT regularisers as the reference: label smoothing, L2 on the generated A/B, NEFTune on the input embeddings and
LoRA-input dropout (``sft.lora_dropout``: on the input of every generated LoRA term, never on the base path).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.data.iterators import IndexedBatchIterator, stack
from hyperlora_jax.data.sources import get_evaluator, get_source, register_source
from hyperlora_jax.losses import adapter_l2, next_token_row_ce
from hyperlora_jax.methods.base import Hook, HookContext, Method
from hyperlora_jax.neftune import neftune_noise
from hyperlora_jax.t2l import hypernet as hn

log = logging.getLogger("hyperlora_jax.methods.t2l")

MODES = ("sft", "recon")
RECON_TARGETS = ("factorized", "delta_w")
Z_EPS = 1e-10


@dataclasses.dataclass
class TaskData:
    example: Callable[[int], dict]
    size: int | None
    descriptions: list[str]
    task_names: list[str]
    oracle_dirs: list[str | None]


_EMB_CACHE: dict = {}  # the last (encoder, descriptions) -> embeddings, so a re-built method skips the encoder


# ============================================================================================ tokenisation helpers
def truncate_longest_first_left(p: list[int], r: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """HF ``longest_first`` truncation of a (prompt, response) pair to ``max_len`` tokens in total, removing tokens
    from the *left* (``truncation_side='left'``): one token at a time from the longer segment (the response on ties,
    as HF removes from the pair's second sequence when lengths are equal)."""
    excess = len(p) + len(r) - max_len
    n_p, n_r = len(p), len(r)
    while excess > 0:
        if n_p > n_r:
            n_p -= 1
        else:
            n_r -= 1
        excess -= 1
    return p[len(p) - n_p:], r[len(r) - n_r:]


class ChatFormatter:
    """(prompt, response) -> fixed-length tokens / loss_mask / segment_ids through a chat template.

    prompt text = template([system "" (if system_turn), user prompt]); full = template(+ [assistant response]);
    response text = full[len(prompt text):]. Both tokenised without added special tokens, truncated together
    (longest first, from the left) to ``seq_len``, right-padded.
    """

    def __init__(self, tokenizer, seq_len: int, system_turn: bool = True, chat_template: str | None = None):
        self.tok, self.seq_len, self.system_turn = tokenizer, int(seq_len), system_turn
        self.template = chat_template
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    def _render(self, msgs):
        kw = {"chat_template": self.template} if self.template else {}
        return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False, **kw)

    def __call__(self, prompt: str, response: str) -> dict:
        msgs = ([{"role": "system", "content": ""}] if self.system_turn else []) + [
            {"role": "user", "content": prompt}]
        p_text = self._render(msgs)
        full = self._render(msgs + [{"role": "assistant", "content": response}])
        if not full.startswith(p_text):
            raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
        p = list(self.tok(p_text, add_special_tokens=False)["input_ids"])
        r = list(self.tok(full[len(p_text):], add_special_tokens=False)["input_ids"])
        p, r = truncate_longest_first_left(p, r, self.seq_len)
        n = len(p) + len(r)
        tokens = np.full(self.seq_len, self.pad_id, np.int32)
        tokens[:n] = p + r
        loss_mask = np.zeros(self.seq_len, np.float32)
        loss_mask[max(len(p) - 1, 0):n - 1] = 1.0     # position t predicts token t+1, a response token
        seg = (np.arange(self.seq_len) < n).astype(np.int32)
        return {"tokens": tokens, "loss_mask": loss_mask, "segment_ids": seg}


def _load_tasks(data_cfg) -> dict[str, dict]:
    path = data_cfg.get("tasks_file", "") or ""
    if path:
        with open(path, encoding="utf-8") as f:
            tasks = json.load(f)
    else:
        tasks = data_cfg.get("tasks", None)
        tasks = {k: dict(v) for k, v in tasks.items()} if tasks else {}
    if not tasks:
        raise ValueError("t2l: no tasks (set data.tasks or data.tasks_file)")
    return {k: dict(tasks[k]) for k in sorted(tasks)}


def hierarchical_index(i: int, n_tasks: int, group: int, seed: int) -> tuple[int, np.random.Generator]:
    """Task of stream item ``i``: epochs are permutations of the tasks cut into groups of ``group`` (remainder
    dropped). Returns (task, a generator for the item's own draws)."""
    group = max(1, min(group, n_tasks))
    per_epoch = (n_tasks // group) * group
    epoch, j = divmod(int(i), per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_tasks)
    return int(perm[j]), np.random.default_rng([seed, epoch, j, 1])


@register_source("t2l", "in_memory")
def in_memory_source(fmt: ChatFormatter | None, data_cfg, seed: int) -> TaskData:
    """Tasks of ``data.tasks`` / ``data.tasks_file`` (module docstring); SFT rows through ``fmt`` unless it is None."""
    tasks = _load_tasks(data_cfg)
    names = list(tasks)
    n_desc_cap = int(data_cfg.get("n_descs_per_task", 0) or 0)
    descriptions, offsets, n_descs, examples, oracles = [], [], [], [], []
    sft = fmt is not None
    for name in names:
        t = tasks[name]
        descs = [str(d) for d in (t.get("descriptions") or ())]
        if n_desc_cap:
            descs = descs[:n_desc_cap]
        if not descs:
            raise ValueError(f"t2l task {name!r} has no descriptions")
        offsets.append(len(descriptions))
        n_descs.append(len(descs))
        descriptions += descs
        if sft:
            pairs = [tuple(p) for p in (t.get("examples") or ())]
            if not pairs:
                raise ValueError(f"t2l task {name!r} has no (prompt, response) examples")
            examples.append([fmt(p, r) for p, r in pairs])
        oracles.append(t.get("oracle_lora") or None)
    group = int(data_cfg.get("n_tasks_per_batch", 8))

    def example(i):
        task, rng = hierarchical_index(i, len(names), group, seed)
        d = int(rng.integers(n_descs[task]))
        out = {"desc_index": np.int32(offsets[task] + d), "task_index": np.int32(task)}
        if sft:
            out.update(examples[task][int(rng.integers(len(examples[task])))])
        return out

    return TaskData(example, None, descriptions, names, oracles)


# ============================================================================================ the method
@dataclasses.dataclass(frozen=True)
class T2LParts:
    """The model half of a T2LMethod given directly instead of loaded (``T2LMethod.without_data``): the base
    model's ModelConfig and the hypernetwork's T2LConfig."""
    model_cfg: Any
    hcfg: Any


class T2LMethod(Method):
    def __init__(self, config, mesh, parts: T2LParts | None = None):
        """The trainer's constructor (``parts`` None): reads the base model's config, the tokenizer, the data
        source, the task embeddings and (recon) the oracle LoRAs. With ``parts`` (see ``without_data``) none of
        them: ``frozen`` and ``data_iterator`` refuse."""
        from hyperlora_jax.config import ModelConfig

        self.config, self.mesh = config, mesh
        tc = config.t2l
        self.mode = tc.get("mode", "sft")
        if self.mode not in MODES:
            raise ValueError(f"t2l.mode {self.mode!r} is not one of {MODES}")
        self.scale = tc.get("scale", "rslora")
        self.dtype = jnp.dtype(config.get("compute_dtype", "float32"))
        self.sft_cfg, self.recon_cfg = config.get("sft", None), config.get("recon", None)
        self._frozen = None
        self._recon_stats = None
        if parts is not None:
            self.model_cfg, self.hcfg, self.data, self.task_embs = parts.model_cfg, parts.hcfg, None, None
            hn.T2LConfig.scale(self.hcfg, self.scale)
            return
        self.model_dir = config.model.model_dir
        self.model_cfg = ModelConfig.from_pretrained(self.model_dir).with_run_options(config.model)
        if self.mode == "sft":
            from transformers import AutoTokenizer
            tok_dir = config.model.get("tokenizer_dir", "") or self.model_dir
            tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
            template = config.data.get("chat_template", "") or None
            if template and os.path.isfile(template):
                with open(template, encoding="utf-8") as f:
                    template = f.read()
            self.format_pair = ChatFormatter(tok, config.data.seq_len, config.data.get("system_turn", True),
                                             template)
        source = get_source("t2l", config.data.get("source", "in_memory"))
        self.data = source(self.format_pair if self.mode == "sft" else None, config.data, int(config.seed))
        self.task_embs = self._task_embeddings(self.data.descriptions)

        shapes = self.model_cfg.projection_shapes()
        modules = tuple(tc.target_modules)
        bad = [m for m in modules if m not in shapes]
        if bad:
            raise ValueError(f"t2l.target_modules {bad} are not projections of the base model")
        self.hcfg = hn.T2LConfig(
            variant=tc.get("variant", "L"), latent_size=int(tc.latent_size), head_in_size=int(tc.head_in_size),
            task_emb_size=int(self.task_embs.shape[1]), r=int(tc.r), lora_alpha=float(tc.lora_alpha),
            target_modules=modules, in_features=tuple(shapes[m][0] for m in modules),
            out_features=tuple(shapes[m][1] for m in modules), n_layers=self.model_cfg.num_layers,
            dropout_rate=float(tc.get("dropout_rate", 0.05)))
        hn.T2LConfig.scale(self.hcfg, self.scale)
        if self.mode == "recon":
            self._recon_stats = self._load_oracles()

    @classmethod
    def without_data(cls, config, model_cfg, hcfg, mesh=None):
        """The plug-in without base-model directory, tokenizer, data source, task embeddings or oracle LoRAs
        (benchmarks, tests): what ``loss`` (given its ``frozen`` tree), ``generate``, ``decay_mask`` and
        ``init_trainable`` read."""
        return cls(config, mesh, T2LParts(model_cfg, hcfg))

    # ------------------------------------------------------------------------------------------ startup pieces
    def _task_embeddings(self, descriptions: Sequence[str]) -> np.ndarray:
        enc = self.config.encoder
        path = enc.get("embeddings_file", "") or ""
        if path:  # precomputed [N_desc, E] (e.g. for encoders not ported to Flax), rows = descriptions in order
            emb = np.load(path)
            if emb.ndim != 2 or emb.shape[0] != len(descriptions):
                raise ValueError(f"{path}: expected [{len(descriptions)}, E] task embeddings, got {emb.shape}")
            return emb.astype(np.float32)
        key = (os.path.abspath(enc.model_dir), enc.get("pooling", None) or None, tuple(descriptions))
        if key not in _EMB_CACHE:
            from hyperlora_jax.encoders.task_embedding import TaskDescriptionEncoder
            encoder = TaskDescriptionEncoder.from_pretrained(enc.model_dir, pooling=key[1],
                                                             batch_size=int(enc.get("batch_size", 64)))
            _EMB_CACHE.clear()
            _EMB_CACHE[key] = np.asarray(encoder.embed_descriptions(list(descriptions)), np.float32)
        return _EMB_CACHE[key]

    def _load_oracles(self):
        from hyperlora_jax.io.peft_io import import_peft

        dirs = self.data.oracle_dirs
        missing = [n for n, d in zip(self.data.task_names, dirs) if not d]
        if missing:
            raise ValueError(f"t2l recon: tasks without oracle_lora: {missing}")
        ads = [import_peft(d, self.model_cfg) for d in dirs]
        target_A, target_B, stats = {}, {}, {}
        for m in self.hcfg.target_modules:
            if any(m not in a.A for a in ads):
                raise ValueError(f"t2l recon: an oracle LoRA lacks {m}")
            ranks = {a.rank for a in ads}
            if ranks != {self.hcfg.r}:
                raise ValueError(f"t2l recon: oracle LoRA ranks {sorted(ranks)} != t2l.r {self.hcfg.r}")
            # [n_tasks, L, r, d] (PEFT A rows; B as the project's [r, out] layout)
            target_A[m] = np.stack([np.asarray(a.A[m][:, 0]) for a in ads]).astype(np.float32)
            target_B[m] = np.stack([np.asarray(a.B[m][:, 0]) for a in ads]).astype(np.float32)
        z = bool(self.recon_cfg.get("z_score", False))
        ddof = 1 if len(ads) > 1 else 0
        for m in self.hcfg.target_modules:
            stats[m] = {"mean_A": target_A[m].mean(0), "std_A": target_A[m].std(0, ddof=ddof),
                        "mean_B": target_B[m].mean(0), "std_B": target_B[m].std(0, ddof=ddof)} if z else None
        return {"A": target_A, "B": target_B, "stats": stats}

    # ------------------------------------------------------------------------------------------ plug-in API
    def fingerprint(self):
        c, m = self.hcfg, self.model_cfg
        return {"method": "t2l", "mode": self.mode, "variant": c.variant, "latent_size": c.latent_size,
                "head_in_size": c.head_in_size, "task_emb_size": c.task_emb_size, "r": c.r,
                "target_modules": ",".join(c.target_modules), "base_model_type": m.model_type,
                "base_hidden_size": m.hidden_size, "base_num_layers": m.num_layers}

    def decay_mask(self, params):
        """The reference (HF Trainer over the hypernetwork) decays every hypernetwork parameter."""
        return jax.tree_util.tree_map(lambda x: True, params)

    def init_trainable(self, rng):
        params = hn.init_params(self.hcfg, rng)
        if self.mode == "recon":  # reference recon runs: heads keep torch's default Linear init
            heads = dict(params["heads"])
            bound = 1.0 / math.sqrt(self.hcfg.head_in_size)
            for i, m in enumerate(self.hcfg.target_modules):
                k1, k2 = jax.random.split(jax.random.fold_in(rng, 1000 + i))
                h = heads[m]
                heads[m] = {"kernel": jax.random.uniform(k1, h["kernel"].shape, jnp.float32, -bound, bound),
                            "bias": (jnp.zeros_like(h["bias"]) if self.recon_cfg.get("z_score", False) else
                                     jax.random.uniform(k2, h["bias"].shape, jnp.float32, -bound, bound))}
            params = {**params, "heads": heads}
        return params

    def frozen(self):
        if self._frozen is not None:
            return self._frozen
        if self.task_embs is None:
            raise ValueError("this T2LMethod was built without_data: it has no task embeddings or base weights")
        from hyperlora_jax.sharding import replicated
        rep = replicated(self.mesh)
        out = {"task_emb": jax.device_put(jnp.asarray(self.task_embs), rep)}
        if self.mode == "sft":
            from hyperlora_jax.io.hf_load import abstract_params, load_params
            from hyperlora_jax.sharding import param_shardings
            dtype = jnp.dtype(self.config.model.get("param_dtype", "float32"))
            sh = param_shardings(abstract_params(self.model_cfg), self.mesh)
            out["base"] = load_params(self.model_dir, self.model_cfg, dtype, shardings=sh)
        else:
            s = self._recon_stats
            out["target_A"] = {m: jax.device_put(jnp.asarray(v), rep) for m, v in s["A"].items()}
            out["target_B"] = {m: jax.device_put(jnp.asarray(v), rep) for m, v in s["B"].items()}
            if self.recon_cfg.get("z_score", False):
                out["stats"] = {m: {k: jax.device_put(jnp.asarray(v), rep) for k, v in st.items()}
                                for m, st in s["stats"].items()}
        self._frozen = out
        return out

    def generate(self, trainable, task_emb, rng=None, deterministic=None):
        """Adapter for task embeddings [N, E] (hypernet dropout on when ``rng`` is given, unless told otherwise)."""
        det = (rng is None or self.hcfg.dropout_rate == 0.0) if deterministic is None else deterministic
        return hn.generate_adapters(trainable, self.hcfg, task_emb, self.scale, deterministic=det,
                                    rng=None if det else rng)

    def loss(self, trainable, frozen, batch, rng):
        k_drop, k_neft = jax.random.split(rng)
        emb = jax.lax.stop_gradient(jnp.take(frozen["task_emb"], batch["desc_index"], axis=0))
        adapter = self.generate(trainable, emb, k_drop)
        if self.mode == "recon":
            return self._recon_loss(adapter, frozen, batch)
        return self.sft_loss(trainable, frozen, batch, adapter, k_neft)

    def sft_loss(self, trainable, frozen, batch, adapter, rng):
        from hyperlora_jax.model import forward, segment_positions
        c, sc = self.model_cfg, self.sft_cfg
        tokens, seg = batch["tokens"], batch["segment_ids"]
        pos = segment_positions(seg)
        base = frozen["base"]
        x = jnp.take(base["embed_tokens"]["embedding"], tokens, axis=0).astype(self.dtype)
        x = neftune_noise(x, rng, float(sc.get("neftune_noise_alpha", 0.0)))
        if c.embed_scale:  # gemma: the model's x sqrt(H) comes after the reference's NEFTune hook
            x = x * jnp.asarray(c.hidden_size ** 0.5, self.dtype)
        out = forward(base, c, None, embeddings=x, positions=pos, segment_ids=seg, adapter=adapter,
                      dtype=self.dtype, remat=self.config.get("remat", "none"),
                      lora_dropout=float(sc.get("lora_dropout", 0.0)), dropout_rng=jax.random.fold_in(rng, 1))
        ce, n = next_token_row_ce(out["logits"], tokens, batch["loss_mask"], float(sc.get("label_smoothing", 0.0)))
        l2 = adapter_l2(adapter)
        loss = ce + float(sc.get("l2_reg_generated_w", 0.0)) * l2
        return loss, {"loss": loss, "ce": ce, "l2": l2, "tokens": n}

    def _recon_loss(self, adapter, frozen, batch):
        rc = self.recon_cfg
        idx = batch["task_index"]
        kind = rc.get("target", "factorized")
        if kind not in RECON_TARGETS:
            raise ValueError(f"recon.target {kind!r} is not one of {RECON_TARGETS}")
        total, raw = 0.0, 0.0
        for m in self.hcfg.target_modules:
            tA = jnp.take(frozen["target_A"][m], idx, axis=0).swapaxes(0, 1)   # [L, N, r, in]
            tB = jnp.take(frozen["target_B"][m], idx, axis=0).swapaxes(0, 1)   # [L, N, r, out]
            A, B = adapter.A[m], adapter.B[m]
            if kind == "delta_w":
                s = float(rc.get("delta_w_scaling", 1.0))
                dw = jnp.einsum("lnri,lnro->lnio", A, B)
                dw_t = jnp.einsum("lnri,lnro->lnio", tA, tB) * s
                total = total + jnp.mean(jnp.abs(dw - dw_t))
                continue
            if rc.get("z_score", False):
                st = frozen["stats"][m]
                zA = (tA - st["mean_A"][:, None]) / (st["std_A"][:, None] + Z_EPS)
                zB = (tB - st["mean_B"][:, None]) / (st["std_B"][:, None] + Z_EPS)
                total = total + 0.5 * (jnp.mean(jnp.abs(A - zA)) + jnp.mean(jnp.abs(B - zB)))
                uA = A * (st["std_A"][:, None] + Z_EPS) + st["mean_A"][:, None]
                uB = B * (st["std_B"][:, None] + Z_EPS) + st["mean_B"][:, None]
                raw = raw + 0.5 * (jnp.mean(jnp.abs(uA - tA)) + jnp.mean(jnp.abs(uB - tB)))
            else:
                err = 0.5 * (jnp.mean(jnp.abs(A - tA)) + jnp.mean(jnp.abs(B - tB)))
                total, raw = total + err, raw + err
        n_mod = len(self.hcfg.target_modules)
        loss = total / n_mod
        metrics = {"loss": loss, "tokens": jnp.asarray(idx.shape[0], jnp.float32)}
        if kind == "factorized":
            metrics["raw_l1"] = raw / n_mod
        return loss, metrics

    def hooks(self):
        return [Hook("source_eval", 0, self.source_eval)]

    def source_eval(self, ctx: HookContext):
        """The data source's registered t2l evaluator (``data.sources.register_evaluator``), if any, on process 0."""
        fn = get_evaluator("t2l", self.config.data.get("source", "in_memory"))
        if fn is None or not ctx.is_main:
            return None
        return fn(self, ctx.params, ctx.frozen, ctx.workdir)

    def data_iterator(self, process_index, process_count):
        if self.data is None:
            raise ValueError("this T2LMethod was built without_data: it has no data source")
        return IndexedBatchIterator(self.data.example, self.data.size, self.config.batch_size, collate=stack,
                                    seed=self.config.seed, shuffle=False, process_index=process_index,
                                    process_count=process_count)

    def flops_per_step(self, batch_tokens: float) -> float:
        # frozen base: forward + activation gradients (no weight gradients) per token; the hypernet is negligible
        return 4.0 * self.model_cfg.num_params() * batch_tokens if self.mode == "sft" else 0.0

    # ------------------------------------------------------------------------------------------ export helpers
    def adapters_for(self, trainable, task_emb: Any):
        """Deterministic adapters for task embeddings [N, E], de-normalised for z-scored reconstruction and
        divided by sqrt(delta_w_scaling) for delta_w reconstruction (as the reference's generation does)."""
        ad = self.generate(trainable, jnp.asarray(task_emb), deterministic=True)
        if self.mode != "recon":
            return ad
        rc = self.recon_cfg
        if rc.get("target", "factorized") == "delta_w":
            s = math.sqrt(float(rc.get("delta_w_scaling", 1.0)))
            return ad.replace(A={m: a / s for m, a in ad.A.items()}, B={m: b / s for m, b in ad.B.items()})
        if rc.get("z_score", False):
            st = self._recon_stats["stats"]
            A = {m: a * (st[m]["std_A"][:, None] + Z_EPS) + st[m]["mean_A"][:, None] for m, a in ad.A.items()}
            B = {m: b * (st[m]["std_B"][:, None] + Z_EPS) + st[m]["mean_B"][:, None] for m, b in ad.B.items()}
            return ad.replace(A=A, B=B)
        return ad
