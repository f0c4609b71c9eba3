"""Trainer keys shared by every config file (configs/*.py start from ``trainer_defaults()``)."""
import ml_collections


def trainer_defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = ""
    c.seed = 0
    c.num_train_steps = 100
    c.batch_size = 8                 # global batch (all processes, before gradient accumulation splits it)
    c.grad_accum_steps = 1
    c.learning_rate = 1e-3
    c.warmup_steps = 0
    c.schedule = "cosine"            # cosine | linear | constant (after linear warmup)
    c.end_lr_factor = 0.0
    c.weight_decay = 0.0
    c.adam_b1, c.adam_b2, c.adam_eps = 0.9, 0.999, 1e-8
    c.max_grad_norm = 1.0
    c.compute_dtype = "float32"      # float32 | bfloat16 (parameters stay float32)
    c.remat = "none"                 # none | full | dots
    c.distributed = "none"           # none | auto (TPU pods, SLURM); launch/local.py sets env vars instead
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.log_every_steps = 10
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3
    c.async_checkpoints = True
    c.step_delay_s = 0.0             # sleep after each step: only to give preemption tests a window
    c.init_from = ""                 # another run's workdir: start from its newest trainable parameters (fresh
                                     # optimizer, step 0; same model configuration required) unless this workdir
                                     # has its own checkpoint, e.g. D2L stage 2 from stage 1
    return c


class TrainConfigError(ValueError):
    """A trainer config value out of its range (the message names the key, as ``--config.KEY``)."""


CHOICES = {"schedule": ("cosine", "linear", "constant"), "compute_dtype": ("float32", "bfloat16"),
           "remat": ("none", "full", "dots"), "distributed": ("none", "auto")}
# key: (smallest allowed value, what it means); integers unless the default is a float
MINIMA = {"num_train_steps": 0, "batch_size": 1, "grad_accum_steps": 1, "warmup_steps": 0, "log_every_steps": 1,
          "checkpoint_every_steps": 0, "keep_checkpoints": 1, "learning_rate": 0.0,
          "end_lr_factor": 0.0, "weight_decay": 0.0, "max_grad_norm": 0.0, "step_delay_s": 0.0}


# keys earlier versions read and this one does not: a config file still setting them gets an error, not silence
REMOVED = {k: "was removed: periodic evaluation and best-checkpoint selection are gone; a method's work during "
              "training is a Hook (hyperlora_jax/methods/base.py, Method.hooks: every N steps or at the end)"
           for k in ("eval_every_steps", "best_metric", "best_mode")}


def validate(config) -> None:
    """Checks the common trainer keys of ``config`` (those of ``trainer_defaults``) before anything is built;
    raises TrainConfigError naming the first bad one. Keys a config does not have are not checked."""
    import math

    def bad(key, why, value):
        raise TrainConfigError(f"--config.{key} {why}, got {value!r}")

    for key, why in REMOVED.items():
        if key in config:
            bad(key, why, config[key])
    if not config.get("method"):
        bad("method", "must name a training method", config.get("method"))
    for key, choices in CHOICES.items():
        if key in config and config[key] not in choices:
            bad(key, f"must be one of {', '.join(choices)}", config[key])
    for key, low in MINIMA.items():
        if key not in config:
            continue
        v = config[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(low, int) and not isinstance(v, int)):
            bad(key, "must be " + ("an integer" if isinstance(low, int) else "a number"), v)
        if not math.isfinite(v) or v < low:
            bad(key, f"must be a finite number >= {low}" if isinstance(low, float) else f"must be >= {low}", v)
    for key in ("adam_b1", "adam_b2"):
        if key in config and not 0.0 <= config[key] < 1.0:
            bad(key, "must be in [0, 1)", config[key])
    if "adam_eps" in config and not config.adam_eps > 0:
        bad("adam_eps", "must be > 0", config.adam_eps)
    accum = config.get("grad_accum_steps", 1)
    if config.get("batch_size", 1) % accum:
        bad("batch_size", f"must be a multiple of grad_accum_steps ({accum})", config.batch_size)
