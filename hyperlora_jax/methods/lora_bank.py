"""Plain LoRA fine-tuning of a frozen base model as a trainer plug-in (method ``lora``): a *bank* of S LoRAs trained
in one run, each example using its own row (per-example adapters, ``hyperlora_jax.lora.Adapter``).

  lora.per_task = True    S = number of tasks of the data source; example i trains LoRA ``task_index[i]`` only
                          (the per-task oracle LoRAs of the T2L toy, all in one run: configs/toy_strings_lora.py:oracle)
  lora.per_task = False   S = 1: one LoRA shared by every example (the multi-task LoRA baseline)

Trainable parameters: ``{module: {"A": [S, L, r, d_in], "B": [S, L, r, d_out]}}`` (the ``Adapter`` layout with the
bank axis first); A starts as PEFT's ``lora_A`` (U(+-1/sqrt(d_in))), B at zero, scale = ``lora_alpha / r``.
Per micro-batch: adapter rows = bank[task_index] (or bank[0]), loss = mean over examples of the mean next-token CE
over response tokens (``loss_mask``), as T2L SFT without label smoothing.

Data: the T2L sources (kind 't2l' of ``hyperlora_jax.data.sources``, given this method's ``ChatFormatter``; rows need
``tokens``, ``loss_mask``, ``segment_ids``, ``task_index``). At the end (the ``export`` hook) row s is exported as a
PEFT directory ``WORKDIR/<lora.export_dir>/<task name>`` (per task) or ``WORKDIR/<lora.export_dir>`` (shared).
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.data.iterators import IndexedBatchIterator, stack
from hyperlora_jax.data.sources import get_evaluator, get_source
from hyperlora_jax.lora import Adapter
from hyperlora_jax.methods.base import Hook, HookContext, Method

log = logging.getLogger("hyperlora_jax.methods.lora_bank")


class LoRABankMethod(Method):
    def __init__(self, config, mesh):
        from transformers import AutoTokenizer

        from hyperlora_jax.config import ModelConfig
        from hyperlora_jax.methods.t2l import ChatFormatter

        self.config, self.mesh = config, mesh
        lc = config.lora
        self.model_dir = config.model.model_dir
        self.model_cfg = ModelConfig.from_pretrained(self.model_dir).with_run_options(config.model)
        self.dtype = jnp.dtype(config.get("compute_dtype", "float32"))
        tok = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.tok = tok
        self.format_pair = ChatFormatter(tok, config.data.seq_len, config.data.get("system_turn", False))
        self.data = get_source("t2l", config.data.source)(self.format_pair, config.data, int(config.seed))
        shapes = self.model_cfg.projection_shapes()
        self.modules = tuple(lc.target_modules)
        bad = [m for m in self.modules if m not in shapes]
        if bad:
            raise ValueError(f"lora.target_modules {bad} are not projections of the base model")
        self.shapes = {m: shapes[m] for m in self.modules}
        self.r = int(lc.r)
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        self.scale = float(lc.lora_alpha) / self.r
        self.per_task = bool(lc.per_task)
        self.n_slots = len(self.data.task_names) if self.per_task else 1
        self._frozen = None

    def fingerprint(self):
        c = self.model_cfg
        return {"method": "lora", "per_task": self.per_task, "slots": self.n_slots, "r": self.r,
                "target_modules": ",".join(self.modules), "base_model_type": c.model_type,
                "base_hidden_size": c.hidden_size, "base_num_layers": c.num_layers}

    def init_trainable(self, rng):
        L, S, r = self.model_cfg.num_layers, self.n_slots, self.r
        out = {}
        for i, m in enumerate(self.modules):
            d_in, d_out = self.shapes[m]
            bound = 1.0 / np.sqrt(d_in)
            out[m] = {"A": jax.random.uniform(jax.random.fold_in(rng, i), (S, L, r, d_in), jnp.float32, -bound, bound),
                      "B": jnp.zeros((S, L, r, d_out), jnp.float32)}
        return out

    def decay_mask(self, params):
        return jax.tree_util.tree_map(lambda x: True, params)

    def frozen(self):
        if self._frozen is None:
            from hyperlora_jax.io.hf_load import abstract_params, load_params
            from hyperlora_jax.sharding import param_shardings
            sh = param_shardings(abstract_params(self.model_cfg), self.mesh)
            self._frozen = {"base": load_params(self.model_dir, self.model_cfg, jnp.float32, shardings=sh)}
        return self._frozen

    def adapter(self, params, slots) -> Adapter:
        """Adapter rows bank[slots]: slots [N] int -> A [L, N, r, d_in], B [L, N, r, d_out], scale [N]."""
        A = {m: jnp.take(p["A"], slots, axis=0).swapaxes(0, 1) for m, p in params.items()}
        B = {m: jnp.take(p["B"], slots, axis=0).swapaxes(0, 1) for m, p in params.items()}
        return Adapter(A, B, jnp.full((slots.shape[0],), self.scale, jnp.float32))

    def loss(self, params, frozen, batch, rng):
        from hyperlora_jax.losses import next_token_row_ce
        from hyperlora_jax.model import forward, segment_positions
        tokens, seg = batch["tokens"], batch["segment_ids"]
        slots = batch["task_index"] if self.per_task else jnp.zeros(tokens.shape[0], jnp.int32)
        pos = segment_positions(seg)
        out = forward(frozen["base"], self.model_cfg, tokens, positions=pos, segment_ids=seg,
                      adapter=self.adapter(params, slots), dtype=self.dtype)
        ce, n = next_token_row_ce(out["logits"], tokens, batch["loss_mask"])
        return ce, {"loss": ce, "tokens": n}

    def data_iterator(self, process_index, process_count):
        return IndexedBatchIterator(self.data.example, self.data.size, self.config.batch_size, collate=stack,
                                    seed=self.config.seed, shuffle=False, process_index=process_index,
                                    process_count=process_count)

    def flops_per_step(self, batch_tokens: float) -> float:
        return 4.0 * self.model_cfg.num_params() * batch_tokens

    def hooks(self):
        return [Hook("export", 0, self.export)]

    def export(self, ctx: HookContext):
        """Exports every bank row as a PEFT directory, then runs the data source's registered lora evaluator if any
        (``data.sources.register_evaluator``; the toy string source's: with ``eval.n`` > 0 a quick exact-match
        check, ``hyperlora_jax.toy.eval_strings.quick_bank_check``)."""
        if not ctx.is_main:
            return None
        from hyperlora_jax.io.peft_io import export_peft
        lc = self.config.lora
        root = os.path.join(ctx.workdir, lc.get("export_dir", "export"))
        params = jax.device_get(ctx.params)
        ad = self.adapter(params, jnp.arange(self.n_slots))
        meta = {"method": "lora", "per_task": self.per_task, "source": self.config.data.source}
        dirs = []
        for s in range(self.n_slots):
            out = os.path.join(root, self.data.task_names[s]) if self.per_task else root
            export_peft(ad, out, row=s, base_model=os.path.basename(os.path.normpath(self.model_dir)),
                        metadata={**meta, "task": self.data.task_names[s] if self.per_task else "all"},
                        overwrite=True)
            dirs.append(out)
        result = {"export_dirs": dirs}
        fn = get_evaluator("lora", self.config.data.source)
        accuracy = fn(self, params, ctx.frozen, ctx.workdir) if fn is not None else None
        if accuracy is not None:
            result["accuracy"] = accuracy
        return result
