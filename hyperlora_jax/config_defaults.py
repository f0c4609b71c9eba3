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
    c.eval_every_steps = 0
    c.best_metric = ""               # e.g. "eval/loss": also keep the best checkpoint in WORKDIR/checkpoints_best
    c.best_mode = "min"
    c.step_delay_s = 0.0             # sleep after each step: only to give preemption tests a window
    c.init_from = ""                 # another run's workdir: start from its newest trainable parameters (fresh
                                     # optimizer, step 0; same model configuration required) unless this workdir
                                     # has its own checkpoint, e.g. D2L stage 2 from stage 1
    return c
