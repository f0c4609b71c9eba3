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

Measured (2 CPU cores shared with other jobs; the run's closing exact-match check on 16 fresh words per task):
  oracle     600 steps, 1 min 13 s: mean 96.6 % (all tasks >= 75 % except count_vowels 62 %); in
             configs/t2l.py:toy's evaluation 96.3 % / 94.2 % (training tasks / held-out tasks).
  multitask  400 steps, 3 min 0 s: 2.6 %, i.e. it does not learn (final loss 1.76): a rank-4 LoRA on a base that
             never saw instructions cannot learn to read a description character by character at this scale
             (1000 steps at learning rate 1e-2, 7 min 50 s: loss 1.3, 4.6 %; not shipped).

Same rank and target modules as configs/t2l.py:toy's hypernetwork (string_tasks.LORA_*: r 4, alpha 8, q/v/down
projections), scale alpha / r.
"""
import os

import ml_collections

from hyperlora_jax.config_defaults import trainer_defaults
from hyperlora_jax.toy.assets import ASSETS
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
        c.data.seq_len = 112
    else:
        raise ValueError(f"unknown preset {preset!r} for configs/toy_strings_lora.py (oracle, multitask)")
    return c
