"""The trainer: ``python -m hyperlora_jax.train --config=configs/X.py[:preset] --workdir=W [--config.key=value]``.

One loop for every method (T2L, D2L, plain LM); the method-specific part is a plug-in (``hyperlora_jax.methods``).
Sections, top to bottom: distributed setup -> mesh -> method (models, data) -> optimizer -> sharded init ->
train step -> checkpoint restore -> loop (metrics, eval, checkpoints, preemption).

Common config keys: method, seed, num_train_steps, batch_size (global), grad_accum_steps, learning_rate,
warmup_steps, schedule, weight_decay, max_grad_norm, compute_dtype, remat, mesh {data, fsdp, tensor},
checkpoint_every_steps, keep_checkpoints, eval_every_steps, log_every_steps, best_metric, best_mode.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger("hyperlora_jax.train")

# Peak dense bf16 FLOP/s per chip, for the MFU estimate (device_kind substring -> FLOP/s).
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12,
              "H100": 989e12, "H200": 989e12, "A100": 312e12}


# ===== distributed ============================================================================================

def maybe_initialize_distributed(config):
    """Several processes: explicit via HYPERLORA_JAX_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID (launch/local.py),
    or cluster auto-detection (TPU pods, SLURM) when config.distributed == 'auto'."""
    coord = os.environ.get("HYPERLORA_JAX_COORDINATOR")
    if coord:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by CPU clients only
        jax.distributed.initialize(coordinator_address=coord,
                                   num_processes=int(os.environ["HYPERLORA_JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["HYPERLORA_JAX_PROCESS_ID"]))
    elif config.get("distributed", "none") == "auto":
        jax.distributed.initialize()


# ===== the train step =========================================================================================

def make_train_step(method, tx, grad_accum: int):
    """state, frozen, batch -> (new state, metrics). The batch's leading axis is split into ``grad_accum``
    interleaved micro-batches (rows k, k+n, ... so each device keeps its own rows) whose gradients are averaged."""

    def step_fn(state, frozen, batch):
        base_rng = jax.random.fold_in(state["rng"], state["step"])

        def micro(b):
            return jax.tree_util.tree_map(
                lambda x: x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1), b)

        def one(carry, xs):
            k, mb = xs
            (loss, metrics), grads = jax.value_and_grad(method.loss, has_aux=True)(
                state["params"], frozen, mb, jax.random.fold_in(base_rng, k))
            acc_g, acc_m = carry
            return (jax.tree_util.tree_map(jnp.add, acc_g, grads),
                    jax.tree_util.tree_map(jnp.add, acc_m, metrics)), None

        zeros_g = jax.tree_util.tree_map(jnp.zeros_like, state["params"])
        m_shape = jax.eval_shape(lambda: method.loss(state["params"], frozen,
                                                     jax.tree_util.tree_map(lambda x: x[0], micro(batch)),
                                                     base_rng)[1])
        zeros_m = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32), m_shape)
        (grads, metrics), _ = jax.lax.scan(one, (zeros_g, zeros_m), (jnp.arange(grad_accum), micro(batch)))
        grads = jax.tree_util.tree_map(lambda g: g / grad_accum, grads)
        metrics = {k: (v if k.startswith("tokens") else v / grad_accum) for k, v in metrics.items()}
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = jax.tree_util.tree_map(lambda p, u: p + u, state["params"], updates)
        import optax
        metrics["grad_norm"] = optax.global_norm(grads)
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": state["rng"]}
        return new_state, metrics

    return step_fn


def step_compiler_options() -> dict:
    """XLA compiler options for the jitted train step ({} except on CPU).

    On CPU the step's temporaries are split into heaps of at most 16 MiB. XLA:CPU otherwise allocates all of them
    as one block per call (~200 MiB for bench/train_step.py), which glibc's malloc maps afresh every step: touching
    it costs one page fault per 4 KiB (~50k per step, 10-20 % of the step on 2 cores). Blocks under malloc's 32 MiB
    mmap ceiling are recycled between steps instead. Same program, same numbers.
    """
    if jax.default_backend() != "cpu":
        return {}
    return {"xla_multiheap_size_constraint_per_heap": 16 << 20}


# ===== helpers ================================================================================================

def _fingerprint(method, abstract_params) -> dict:
    shapes = sorted(f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}"
                    for p, x in jax.tree_util.tree_leaves_with_path(abstract_params))
    fp = dict(method.fingerprint())
    fp["trainable_params"] = hashlib.sha1("\n".join(shapes).encode()).hexdigest()[:16]
    return fp


def _peak_flops() -> float | None:
    kind = jax.devices()[0].device_kind
    for k, v in PEAK_FLOPS.items():
        if k.lower() in kind.lower():
            return v * jax.device_count()
    return None


class _Preemption:
    """Remembers a SIGTERM so the loop can save and exit cleanly."""

    def __init__(self):
        self.requested = False
        try:
            signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread (e.g. called from a test harness)
            pass

    def _handler(self, signum, frame):
        self.requested = True

    def any_process(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))


# ===== the whole run ==========================================================================================

def run(config, workdir: str) -> dict:
    """Trains per ``config`` in ``workdir`` (resuming from its checkpoints); returns a summary dict."""
    from hyperlora_jax.checkpoint import Checkpointer
    from hyperlora_jax.methods import get_method
    from hyperlora_jax.optim import learning_rate_schedule, make_optimizer
    from hyperlora_jax.sharding import host_batch_to_global, make_mesh, param_shardings, replicated
    from hyperlora_jax.tb_events import EventWriter

    maybe_initialize_distributed(config)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)

    # ----- mesh ------------------------------------------------------------------------------------------------
    mesh = make_mesh(dict(config.mesh))
    if is_main:
        log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(),
                 jax.process_count())

    # ----- method: models and data ------------------------------------------------------------------------------
    method = get_method(config.method)(config, mesh)
    accum = int(config.get("grad_accum_steps", 1))
    if config.batch_size % (accum * jax.process_count()):
        raise ValueError(f"batch_size {config.batch_size} is not divisible by grad_accum_steps {accum} x "
                         f"{jax.process_count()} processes")

    # ----- optimizer and sharded init ----------------------------------------------------------------------------
    tx = make_optimizer(config, getattr(method, "decay_mask", None))

    def init_state(rng):
        params = method.init_trainable(rng)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "rng": rng}

    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(init_state, rng)
    state_sh = {"step": replicated(mesh), "params": param_shardings(abstract["params"], mesh),
                "opt_state": param_shardings(abstract["opt_state"], mesh), "rng": replicated(mesh)}
    state = jax.jit(init_state, out_shardings=state_sh)(rng)
    frozen = method.frozen()
    frozen_sh = jax.tree_util.tree_map(lambda x: x.sharding, frozen)

    # ----- the train step -------------------------------------------------------------------------------------
    step_fn = make_train_step(method, tx, accum)
    train_step = jax.jit(step_fn, in_shardings=(state_sh, frozen_sh, None), out_shardings=(state_sh, None),
                         donate_argnums=(0,), compiler_options=step_compiler_options())

    # ----- checkpoint restore ---------------------------------------------------------------------------------
    ckpt = Checkpointer(workdir, _fingerprint(method, abstract["params"]), keep=config.get("keep_checkpoints", 3),
                        best_metric=config.get("best_metric") or None, best_mode=config.get("best_mode", "min"),
                        async_save=config.get("async_checkpoints", True))
    data = method.data_iterator(jax.process_index(), jax.process_count())
    restored = ckpt.restore(state)
    if restored is not None:
        state, data_state, step0 = restored
        data.set_state(data_state)
        if is_main:
            log.info("resumed from step %d", step0)
    elif config.get("init_from"):
        params, src_step = ckpt.params_from(config.init_from, state["params"])
        state = dict(state, params=params)
        if is_main:
            log.info("trainable parameters from %s (its step %d); fresh optimizer, step 0", config.init_from,
                     src_step)
    start = int(state["step"])
    if is_main:  # after the fingerprint check: what `python -m hyperlora_jax.export` rebuilds the method from
        from hyperlora_jax.run_config import save_run_config
        save_run_config(workdir, config)

    # ----- the loop --------------------------------------------------------------------------------------------
    writer = EventWriter(os.path.join(workdir, "tensorboard")) if is_main else None
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    schedule = learning_rate_schedule(config)
    preempt = _Preemption()
    peak = _peak_flops()
    total, every = int(config.num_train_steps), int(config.get("log_every_steps", 10))
    ckpt_every, eval_every = int(config.get("checkpoint_every_steps", 0)), int(config.get("eval_every_steps", 0))
    last_metrics, t_last, steps_since, tokens_since = {}, time.time(), 0, 0.0
    t_first = None
    step = start
    exit_reason = "done"
    if True:
        while step < total:
            batch = host_batch_to_global(next(data), mesh)
            state, metrics = train_step(state, frozen, batch)
            step += 1
            steps_since += 1
            if step % every == 0 or step == total:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.time()
                dt = (now - t_last) / steps_since
                tokens = m.pop("tokens", 0.0) * steps_since
                m["lr"] = float(schedule(step - 1))
                m["step_time"] = dt
                m["tokens_per_sec"] = tokens / (now - t_last) if now > t_last else 0.0
                flops = method.flops_per_step(m["tokens_per_sec"] * dt) if hasattr(method, "flops_per_step") else 0
                m["mfu"] = flops / dt / peak if peak and dt > 0 else float("nan")
                if t_first is None:
                    t_first = now
                eta = dt * (total - step)
                last_metrics = m
                if is_main:
                    mfu = f"{100 * m['mfu']:.1f}%" if m["mfu"] == m["mfu"] else "n/a"
                    print(f"step {step}/{total} loss {m['loss']:.5f} tokens/s {m['tokens_per_sec']:.0f} "
                          f"MFU {mfu} ETA {eta:.0f}s", flush=True)
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps({"step": step, **m}) + "\n")
                    writer.scalars(step, {f"train/{k}": v for k, v in m.items() if v == v})
                t_last, steps_since = now, 0
            eval_metrics = None
            if eval_every and step % eval_every == 0 and hasattr(method, "evaluate"):
                eval_metrics = method.evaluate(state["params"], frozen, workdir, step)
                if is_main and eval_metrics:
                    writer.scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps({"step": step, **{f"eval/{k}": v for k, v in eval_metrics.items()}}) + "\n")
            if (ckpt_every and step % ckpt_every == 0) or eval_metrics:
                ckpt.save(step, state, data.get_state(),
                          metrics={f"eval/{k}": v for k, v in (eval_metrics or {}).items()} or None)
            if config.get("step_delay_s", 0.0):  # only for preemption tests: widen the window to kill
                time.sleep(config.step_delay_s)
            if preempt.any_process():
                exit_reason = "preempted"
                break
    ckpt.save(step, state, data.get_state(), force=True)
    ckpt.wait()
    ckpt.close()
    if writer:
        writer.close()
    if is_main:
        print(f"{exit_reason} at step {step}; checkpoint in {ckpt.dir}", flush=True)
    final_eval = None
    if exit_reason == "done" and hasattr(method, "final_evaluate"):
        final_eval = method.final_evaluate(state["params"], frozen, workdir)
    return {"step": step, "reason": exit_reason, "metrics": last_metrics, "state": state, "final_eval": final_eval}


# ===== command line ===========================================================================================

def main(argv):
    from absl import flags
    del argv
    FLAGS = flags.FLAGS
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save step at INFO
    log.setLevel(logging.INFO)
    from hyperlora_jax.checkpoint import CheckpointMismatchError
    from hyperlora_jax.sharding import MeshError
    try:
        run(FLAGS.config, FLAGS.workdir)
    except (MeshError, CheckpointMismatchError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr, flush=True)
        sys.exit(2)


def _define_flags():
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/d2l.py:toy", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and TensorBoard events")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
