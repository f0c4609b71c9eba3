"""Plain causal language-model training of a decoder (all parameters trainable).

Used to pretrain the toy base model and as the simplest plug-in of the trainer. Config:
  model.hf_config   dict: a Hugging Face style config.json of a supported family (random init), or
  model.init_from   path of a HF directory to start from
  data.source       'copy' (synthetic: random tokens, then the same tokens again; loss on the copy) or another
                    source of kind 'lm' (``hyperlora_jax.data.sources``, e.g. the toy worlds' 'toy_niah',
                    'toy_strings'); data.seq_len, data.vocab_low
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.config import ModelConfig
from hyperlora_jax.data.iterators import IndexedBatchIterator, stack
from hyperlora_jax.data.sources import get_source, register_source
from hyperlora_jax.losses import next_token_ce, token_mean
from hyperlora_jax.methods.base import Hook, HookContext, Method
from hyperlora_jax.model import forward, init_params, segment_positions


@register_source("lm", "copy")
def copy_source(cfg: ModelConfig, data_cfg, seed: int):
    """Example i: [bos, x_1..x_n, sep, x_1..x_n] with loss on the second half; a pure function of (seed, i)."""
    n = (data_cfg.seq_len - 2) // 2
    lo = data_cfg.get("vocab_low", 3)

    def example(i):
        rng = np.random.default_rng([seed, i])
        x = rng.integers(lo, cfg.vocab_size, n)
        tokens = np.concatenate([[1], x, [2], x]).astype(np.int32)
        tokens = np.pad(tokens, (0, data_cfg.seq_len - len(tokens)))
        mask = np.zeros(data_cfg.seq_len, np.float32)
        mask[n + 1:2 * n + 1] = 1.0  # positions whose *next* token is part of the copy
        return {"tokens": tokens, "loss_mask": mask, "segment_ids": (np.arange(data_cfg.seq_len) < 2 * n + 2)
                .astype(np.int32)}
    return example, None


def lm_loss(logits, tokens, loss_mask):
    """Mean next-token cross-entropy over positions with loss_mask = 1. logits [B, T, V], tokens/mask [B, T]."""
    return token_mean(next_token_ce(logits, tokens), loss_mask[:, :-1])


class LMMethod(Method):
    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh
        mc = config.model
        if mc.get("init_from"):
            from hyperlora_jax.io.hf_load import load_model
            self.model_cfg, self._init_params = load_model(mc.init_from)
        else:
            self.model_cfg, self._init_params = ModelConfig.from_hf_dict(dict(mc.hf_config)), None
        self.model_cfg = self.model_cfg.with_run_options(mc)
        self.dtype = jnp.dtype(config.get("compute_dtype", "float32"))
        self.tokenizer_dir = config.data.get("tokenizer", "")
        if not self.tokenizer_dir and config.data.source in ("toy_niah", "toy_strings"):
            import tempfile

            from hyperlora_jax.tiny import build_char_tokenizer
            self.tokenizer_dir = tempfile.mkdtemp(prefix="hyperlora-tok-")
            build_char_tokenizer(self.tokenizer_dir)
            config.data.tokenizer = self.tokenizer_dir
        self.example, self.size = get_source("lm", config.data.source)(self.model_cfg, config.data, config.seed)

    def fingerprint(self):
        c = self.model_cfg
        return {"method": "lm", "model_type": c.model_type, "hidden_size": c.hidden_size, "num_layers": c.num_layers,
                "vocab_size": c.vocab_size, "intermediate_size": c.intermediate_size}

    def init_trainable(self, rng):
        if self._init_params is not None:
            return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), self._init_params)
        return init_params(self.model_cfg, rng)

    def frozen(self):
        return {}

    def loss(self, params, frozen, batch, rng):
        seg = batch["segment_ids"]
        pos = segment_positions(seg)
        out = forward(params, self.model_cfg, batch["tokens"], positions=pos, segment_ids=seg, dtype=self.dtype,
                      remat=self.config.get("remat", "none"))
        loss, _ = lm_loss(out["logits"], batch["tokens"], batch["loss_mask"])
        return loss, {"loss": loss, "tokens": (seg > 0).sum().astype(jnp.float32)}

    def data_iterator(self, process_index, process_count):
        return IndexedBatchIterator(self.example, self.size, self.config.batch_size, collate=stack,
                                    seed=self.config.seed, process_index=process_index, process_count=process_count)

    def flops_per_step(self, batch_tokens: int) -> float:
        return 6.0 * self.model_cfg.num_params() * batch_tokens

    def hooks(self):
        return [Hook("export", 0, self.export)]

    def export(self, ctx: HookContext):
        """Exports the trained model as a Hugging Face directory (WORKDIR/<model.export_dir>) when configured."""
        export = self.config.model.get("export_dir", "")
        if not export or not ctx.is_main:
            return None
        import os
        import shutil

        from hyperlora_jax.io.hf_load import save_pretrained
        out = os.path.join(ctx.workdir, export)
        if os.path.exists(out):
            shutil.rmtree(out)

        def tokenizer_files(tmp):
            if self.tokenizer_dir:
                for f in os.listdir(self.tokenizer_dir):
                    shutil.copy(os.path.join(self.tokenizer_dir, f), os.path.join(tmp, f))
        save_pretrained(jax.device_get(ctx.params), dict(self.config.model.hf_config), out,
                        extra_files=[("tokenizer", tokenizer_files)])
        return {"export_dir": out}
