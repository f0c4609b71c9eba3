"""Plain LoRAs on the string-task toy base (method 'lora', hyperlora_jax/methods/lora_bank.py): the oracle and
multi-task baselines of configs/t2l.py:toy, shipped in hyperlora_jax/assets/toy_strings_loras.

Presets (``--config=configs/toy_strings_lora.py:PRESET``):
  oracle     40 per-task LoRAs (all tasks, held-out ones included) trained in ONE run: each batch holds one example
             of every task and each example uses its own task's LoRA; user turn = the bare word.
             Exports WORKDIR/export/<task>/ (PEFT) = assets/toy_strings_loras/oracle/<task>.
  multitask  one LoRA on the 34 training tasks with a training description in the user turn before the word
             ("<description>\\n<word>"). Exports WORKDIR/export/ = assets/toy_strings_loras/multitask.

  python -m hyperlora_jax.train --config=configs/toy_strings_lora.py:oracle --workdir=/tmp/oracle
  python -m hyperlora_jax.train --config=configs/toy_strings_lora.py:multitask --workdir=/tmp/multitask
  (then copy /tmp/oracle/export to assets/toy_strings_loras/oracle, /tmp/multitask/export to .../multitask)

Measured (2 CPU cores shared with a benchmark; the run's closing exact-match check on 16 fresh words per task):
  oracle     600 steps, 1 min 2 s: mean 97.5 % (every task >= 94 % except sort / dedupe / upper_dedupe 75 %).
  multitask  400 steps, 3 min 23 s: 8.5 %, i.e. it barely learns (final loss 1.14): a rank-4 LoRA on a base that
             never saw instructions cannot learn to read a description character by character at this scale.

Same rank and target modules as configs/t2l.py:toy's hypernetwork (string_tasks.LORA_*: r 4, alpha 8, q/v/down
projections), scale alpha / r.
"""
import os

import ml_collections

from hyperlora_jax.config_defaults import trainer_defaults
from hyperlora_jax.packaged import ASSETS
from hyperlora_jax.toy.string_tasks import LORA_ALPHA, LORA_RANK, LORA_TARGET_MODULES


def get_config(preset: str = "oracle"):
    c = trainer_defaults()
    c.method = "lora"
    c.seed = 0
    c.learning_rate = 5e-3
    c.warmup_steps = 20
    c.schedule = "cosine"
    c.log_every_steps = 20
    c.checkpoint_every_steps = 200
    c.model = ml_collections.ConfigDict({"model_dir": os.path.join(ASSETS, "toy_strings_base")})
    c.lora = ml_collections.ConfigDict({"r": LORA_RANK, "lora_alpha": LORA_ALPHA,
                                        "target_modules": LORA_TARGET_MODULES,
                                        "per_task": True, "export_dir": "export"})
    c.data = ml_collections.ConfigDict({"source": "toy_strings", "tasks": "all", "description_in_prompt": False,
                                        "n_tasks_per_batch": 40, "seq_len": 24, "system_turn": False})
    c.eval = ml_collections.ConfigDict({"n": 16})
    if preset == "oracle":
        c.num_train_steps = 600
        c.batch_size = 40
    elif preset == "multitask":
        c.num_train_steps = 400
        c.batch_size = 34
        c.lora.per_task = False
        c.data.tasks = "train"
        c.data.description_in_prompt = True
        c.data.n_tasks_per_batch = 34
        c.data.seq_len = 160
    else:
        raise ValueError(f"unknown preset {preset!r} for configs/toy_strings_lora.py (oracle, multitask)")
    return c
