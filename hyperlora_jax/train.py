"""The trainer: ``python -m hyperlora_jax.train --config=configs/X.py[:preset] --workdir=W [--config.key=value]``.

One loop for every method (T2L, D2L, plain LM); the method-specific part is a plug-in (``hyperlora_jax.methods``).
Sections, top to bottom: distributed setup -> mesh -> method (models, data) -> optimizer -> sharded init ->
train step -> checkpoint restore -> loop (metrics, periodic hooks, checkpoints, preemption) -> end hooks.
The method contract (what the trainer calls, hooks included): ``hyperlora_jax/methods/base.py``.

Common config keys: method, seed, num_train_steps, batch_size (global), grad_accum_steps, learning_rate,
warmup_steps, schedule, weight_decay, max_grad_norm, compute_dtype, remat, mesh {data, fsdp, tensor},
checkpoint_every_steps, keep_checkpoints, log_every_steps.

Safety: one trainer per workdir (flock on WORKDIR/.lock); a non-finite loss or gradient norm stops the run with
the step named and nothing saved after it; SIGTERM / SIGINT save a final checkpoint; a resume rewrites
metrics.jsonl without the steps it repeats. Command-line errors are one ``error:`` line and exit status 2.
"""
from __future__ import annotations

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
    mmap ceiling are recycled between steps instead. Same program, same numbers. A buffer larger than 16 MiB gets a
    heap of its own (XLA warns about each: ``QuietCompiles`` silences that). Measured on the d2l toy step with
    4-chunk documents (20 MB buffers): page faults per step 55k without the option, 9.4k at 16 MiB, 21k at 20 or
    30 MiB (so raising the limit above the largest buffer would cost more than it saves).
    """
    if jax.default_backend() != "cpu":
        return {}
    return {"xla_multiheap_size_constraint_per_heap": 16 << 20}


class QuietCompiles:
    """Calls the jitted train ``step``; each call with a batch shape not seen before (the calls that compile) runs
    with XLA's C++ log threshold at ERROR when ``step_compiler_options`` is non-empty: that option makes XLA:CPU
    print one warning per buffer larger than a heap ("Alloc buffer size ... larger than the per-heap size limit",
    ~75 of them in the d2l toy run), for buffers it then simply places in heaps of their own."""

    def __init__(self, step):
        self.step, self.seen, self.quiet = step, set(), bool(step_compiler_options())

    def __call__(self, *args):
        key = tuple((x.shape, str(x.dtype)) for x in jax.tree_util.tree_leaves(args[2]))  # args[2]: the batch
        if not self.quiet or key in self.seen:
            return self.step(*args)
        self.seen.add(key)
        try:
            from jax._src.lib import utils  # private: the setter behind jax_logging_level; 2 = ERROR
            utils.absl_set_min_log_level(2)
        except (ImportError, AttributeError):  # another JAX version: compile with its warnings
            return self.step(*args)
        try:
            return self.step(*args)  # compiles synchronously; execution is dispatched asynchronously
        finally:
            utils.absl_set_min_log_level(_cpp_min_log_level())


def _cpp_min_log_level() -> int:
    """XLA's C++ log threshold as configured: jax_logging_level, else TF_CPP_MIN_LOG_LEVEL, else 0 (INFO)."""
    level = jax.config.jax_logging_level
    if level not in (None, "NOTSET"):
        return {"DEBUG": 0, "INFO": 0, "WARNING": 1, "ERROR": 2, "CRITICAL": 3}[level]
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


# ===== helpers ================================================================================================

def _peak_flops() -> float | None:
    kind = jax.devices()[0].device_kind
    for k, v in PEAK_FLOPS.items():
        if k.lower() in kind.lower():
            return v * jax.device_count()
    return None


class _StopSignals:
    """SIGTERM (preemption) and SIGINT (Ctrl-C) only set a flag while training runs: the loop then stops after the
    current step and saves a final checkpoint, so neither leaves a half-written one. ``close`` restores the
    previous handlers."""

    def __init__(self):
        self.received = None
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. called from a test harness)
                pass

    def _handler(self, signum, frame):
        if self.received is None:
            print(f"{signal.Signals(signum).name}: stopping after this step with a checkpoint", file=sys.stderr,
                  flush=True)
        self.received = signum

    def any_process(self) -> bool:
        if jax.process_count() == 1:
            return self.received is not None
        from jax.experimental import multihost_utils
        return bool(np.any(multihost_utils.process_allgather(np.array([self.received is not None]))))

    def close(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Eta:
    """Seconds left, from the average time per step since the first logged step: the first interval (which
    holds the compilation) is left out, and one slow interval (an evaluation, a save) moves it little."""

    def __init__(self, total_steps: int):
        self.total, self.since = total_steps, None  # since: (time, step) of the first log

    def seconds(self, now: float, step: int, interval_step_time: float) -> float:
        if self.since is None:
            self.since = (now, step)
        if step == self.since[1]:  # only the first interval is known yet
            return interval_step_time * (self.total - step)
        return (now - self.since[0]) / (step - self.since[1]) * (self.total - step)


class TrainingDivergedError(ValueError):
    """The loss, the gradient norm or the parameters stopped being finite."""


def with_health(step_fn):
    """``step_fn`` plus ``first_bad`` (int32 scalar in and out, 0 = none yet): the first step whose loss or gradient
    norm is not finite. Tracked on the device, so checking it costs a sync only where the loop reads it (log steps
    and before saves)."""

    def fn(state, frozen, batch, first_bad):
        new_state, metrics = step_fn(state, frozen, batch)
        ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        return new_state, metrics, jnp.where((first_bad == 0) & ~ok, new_state["step"], first_bad)

    return fn


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _finite_or_null(row: dict) -> dict:
    """NaN / ±Inf values as None, so the line stays strict JSON (``null``)."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}


def _append_metrics(path: str, row: dict):
    with open(path, "a") as f:
        f.write(json.dumps(_finite_or_null(row), allow_nan=False) + "\n")


def _truncate_metrics(path: str, last_step: int):
    """Rewrites ``metrics.jsonl`` without the rows of steps after ``last_step`` (a resumed run logs them again)
    and without unreadable lines (a write cut short by a kill); NaN written by older versions becomes null.
    Atomic: a temporary file renamed over the old one."""
    if not os.path.exists(path):
        return
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step:
                rows.append(json.dumps(_finite_or_null(row), allow_nan=False) + "\n")
    from hyperlora_jax.io.atomic import write_text
    write_text(path, "".join(rows))


def _lock_run(workdir: str):
    """The workdir lock for this run: process 0 takes it (the processes of one multi-process run share the
    workdir); every process learns whether it got it, so all of a refused run stop with WorkdirBusyError."""
    from hyperlora_jax.checkpoint import WorkdirBusyError, lock_workdir
    lock, busy = None, None
    if jax.process_index() == 0:
        try:
            lock = lock_workdir(workdir)
        except WorkdirBusyError as e:
            busy = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        refused = bool(np.any(multihost_utils.process_allgather(np.array([busy is not None]))))
        if refused and busy is None:
            busy = WorkdirBusyError(f"workdir {workdir!r} is in use by another trainer (process 0 could not lock it)")
    if busy is not None:
        raise busy
    return lock


# ===== the whole run ==========================================================================================

def run(config, workdir: str) -> dict:
    """Trains per ``config`` in ``workdir`` (resuming from its checkpoints); returns a summary dict: ``step``,
    ``reason`` (done | preempted | interrupted), ``metrics`` (the last logged row), ``state`` (the train state) and
    ``final_eval`` ({end hook name: what it returned}; {} unless the run finished, ``methods/base.py``).

    Refused up front (ValueError subclasses, one line each): bad config values (``config_defaults.validate``), a
    workdir another trainer holds (WorkdirBusyError), a workdir of another configuration (CheckpointMismatchError).
    Stops with TrainingDivergedError at the first step whose loss or gradient norm is not finite (checked at log
    steps and before every save, which also checks the parameters): no checkpoint of a diverged state is written.
    """
    from hyperlora_jax.config_defaults import validate
    validate(config)
    maybe_initialize_distributed(config)
    os.makedirs(workdir, exist_ok=True)
    lock = _lock_run(workdir)
    try:
        return _run_locked(config, workdir)
    finally:
        if lock is not None:
            lock.close()


def _run_locked(config, workdir: str) -> dict:
    from hyperlora_jax.checkpoint import Checkpointer, run_fingerprint
    from hyperlora_jax.methods import get_method
    from hyperlora_jax.optim import make_optimizer
    from hyperlora_jax.sharding import make_mesh, param_shardings, replicated, with_mesh

    t_start = time.time()
    is_main = jax.process_index() == 0

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
    tx = make_optimizer(config, method.decay_mask)

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
    step_fn = with_health(make_train_step(method, tx, accum))
    train_step = QuietCompiles(jax.jit(step_fn, in_shardings=(state_sh, frozen_sh, None, replicated(mesh)),
                                       out_shardings=(state_sh, None, replicated(mesh)), donate_argnums=(0,),
                                       compiler_options=step_compiler_options()))

    # ----- checkpoint restore ---------------------------------------------------------------------------------
    ckpt = Checkpointer(workdir, run_fingerprint(method, abstract["params"]),
                        keep=config.get("keep_checkpoints", 3), async_save=config.get("async_checkpoints", True))
    try:
        with with_mesh(mesh):  # activations and adapters traced in the step follow the rules table (sharding.py)
            return _train(config, workdir, method, state, frozen, train_step, ckpt, mesh, t_start)
    finally:
        ckpt.wait()  # an in-flight save of a good state completes, also when the run stops with an error
        ckpt.close()


def _train(config, workdir, method, state, frozen, train_step, ckpt, mesh, t_start) -> dict:
    """Restore, then the loop (metrics, periodic hooks, checkpoints, stop signals), then the end hooks."""
    from hyperlora_jax.checkpoint import CheckpointLookupError, CheckpointMismatchError, restore_params
    from hyperlora_jax.methods.base import HookContext
    from hyperlora_jax.optim import learning_rate_schedule
    from hyperlora_jax.sharding import host_batch_to_global
    from hyperlora_jax.io.tb_events import EventWriter

    is_main = jax.process_index() == 0
    data = method.data_iterator(jax.process_index(), jax.process_count())
    tried = []  # data positions tried on the iterator (those of set-aside checkpoints may have half-applied)

    def apply_data(d):
        tried.append(d)
        data.set_state(d)

    restored = ckpt.restore(state, data_template=data.get_state(), apply_data=apply_data)
    if restored is not None:
        state, _, step0 = restored
        if is_main:
            log.info("resumed from step %d", step0)
    else:
        if tried:
            data = method.data_iterator(jax.process_index(), jax.process_count())
        if config.get("init_from"):
            try:
                params, src_step = restore_params(config.init_from, state["params"], fingerprint=ckpt.fingerprint)
            except (CheckpointLookupError, CheckpointMismatchError) as e:
                raise type(e)(f"init_from: {e}") from None
            state = dict(state, params=params)
            if is_main:
                log.info("trainable parameters from %s (its step %d); fresh optimizer, step 0", config.init_from,
                         src_step)
    start = int(state["step"])
    if is_main:  # after the fingerprint check: what `python -m hyperlora_jax.cli.export` rebuilds the method from
        from hyperlora_jax.run_config import save_run_config
        save_run_config(workdir, config)

    # ----- the loop --------------------------------------------------------------------------------------------
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    schedule = learning_rate_schedule(config)
    if is_main:
        _truncate_metrics(metrics_path, start)
    writer = EventWriter(os.path.join(workdir, "tensorboard")) if is_main else None
    first_bad = jnp.zeros((), jnp.int32)
    peak = _peak_flops()
    total, every = int(config.num_train_steps), int(config.get("log_every_steps", 10))
    ckpt_every = int(config.get("checkpoint_every_steps", 0))
    hooks = method.hooks()
    periodic, at_end = [h for h in hooks if h.every > 0], [h for h in hooks if h.every == 0]
    last_metrics, t_last, steps_since = {}, time.time(), 0
    eta = Eta(total)

    def check_health(step, params_too=False):
        """TrainingDivergedError unless every step so far had a finite loss and gradient norm (and, with
        ``params_too``, the parameters are finite); syncs with the device."""
        bad = int(first_bad)
        if not bad and params_too and not bool(_all_finite(state["params"])):
            bad = step
        if bad:
            newest = ckpt.latest_step()
            raise TrainingDivergedError(
                f"training diverged: the loss or gradient norm is not finite at step {bad}; stopped at step {step} "
                "without saving it (" + (f"newest checkpoint: step {newest}" if newest is not None else
                                         "no checkpoint") + "); try a lower learning_rate or more warmup_steps")

    def save(step, **kw):
        check_health(step, params_too=True)
        ckpt.save(step, state, data.get_state(), **kw)

    stop = _StopSignals()
    step = start
    exit_reason = "done"
    try:
        while step < total:
            batch = host_batch_to_global(next(data), mesh)
            state, metrics, first_bad = train_step(state, frozen, batch, first_bad)
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
                flops = method.flops_per_step(m["tokens_per_sec"] * dt)
                m["mfu"] = flops / dt / peak if peak and dt > 0 else float("nan")
                last_metrics = m
                if is_main:
                    mfu = f"{100 * m['mfu']:.1f}%" if m["mfu"] == m["mfu"] else "n/a"
                    print(f"step {step}/{total} loss {m['loss']:.5f} tokens/s {m['tokens_per_sec']:.0f} "
                          f"MFU {mfu} ETA {eta.seconds(now, step, dt):.0f}s", flush=True)
                    _append_metrics(metrics_path, {"step": step, **m})
                    writer.scalars(step, {f"train/{k}": v for k, v in m.items() if v == v})
                t_last, steps_since = now, 0
                check_health(step)  # after the row is written: a diverged step shows its loss (null) and grad norm
            for hook in periodic:
                if step % hook.every == 0:
                    out = hook.fn(HookContext(step, state["params"], frozen, workdir, is_main))
                    if is_main and out:
                        row = {f"{hook.name}/{k}": float(v) for k, v in out.items()}
                        _append_metrics(metrics_path, {"step": step, **row})
                        writer.scalars(step, {k: v for k, v in row.items() if v == v})
            if ckpt_every and step % ckpt_every == 0:
                save(step)
            if config.get("step_delay_s", 0.0):  # only for preemption tests: widen the window to kill
                time.sleep(config.step_delay_s)
            if stop.any_process():
                exit_reason = "interrupted" if stop.received == signal.SIGINT else "preempted"
                break
        save(step, force=True)
        ckpt.wait()
    finally:
        stop.close()
        if writer:
            writer.close()
    if is_main:
        print(f"{exit_reason} at step {step}; checkpoint in {ckpt.dir}", flush=True)
    final_eval = {}
    if exit_reason == "done":
        for hook in at_end:
            final_eval[hook.name] = hook.fn(HookContext(step, state["params"], frozen, workdir, is_main))
        results = os.path.join(workdir, "eval", "results.json")
        if is_main and os.path.exists(results) and os.path.getmtime(results) >= t_start:
            print(f"results in {results}", flush=True)
    return {"step": step, "reason": exit_reason, "metrics": last_metrics, "state": state, "final_eval": final_eval}


# ===== command line ===========================================================================================

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds configs/ in a checkout


def resolve_config_path(spec: str) -> str:
    """``PATH[:PRESET]`` with PATH made to exist: as given (relative to the working directory), else a relative PATH
    is looked up in the directory above the hyperlora_jax package (a source checkout or an editable install, whose
    ``configs/`` is there), so ``--config=configs/d2l.py:toy`` works from any directory. OSError when neither
    exists."""
    path, sep, preset = spec.partition(":")
    if os.path.isfile(path):
        return spec
    candidate = os.path.join(REPO_ROOT, path)
    if not os.path.isabs(path) and os.path.isfile(candidate):
        return candidate + sep + preset
    where = f" (nor in {REPO_ROOT})" if not os.path.isabs(path) else ""
    raise FileNotFoundError(f"config file {path!r} not found{where}")


def _flag_error_line(e: BaseException, argv) -> str:
    """One line for an error from parsing the flags (the config file, its preset, the --config.KEY overrides)."""
    import re
    text = str(e.args[0]) if len(e.args) == 1 else str(e)
    if isinstance(e, (KeyError, AttributeError)):  # ml_collections: an override of a key the config lacks
        plain = text.replace("\\'", "'").replace("\\n", "\n")
        key, hint = re.search(r"'(\w+)'", plain), re.search(r'Did you mean "([\w.]+)"', plain)
        if key:
            key = key.group(1)
            flag = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.")
                         and key in a.split("=", 1)[0][len("--config."):].split(".")), f"--config.{key}")
            return f"{flag}: no such config key {key!r}" + (f" (did you mean {hint.group(1)}?)" if hint else "")
    lines = [l.strip() for l in str(text).splitlines() if l.strip() and not l.startswith("Pass --help")]
    last = lines[-1] if lines else type(e).__name__
    return re.sub(r"^(?:[\w.]+(?:Error|Exception)): ", "", last)


def _parse_flags(argv):
    """absl's flag parsing, with every error as one ``error: ...`` line and exit status 2, and ``--config`` resolved
    by ``resolve_config_path``."""
    from absl import flags
    argv = list(argv)
    try:
        for i, a in enumerate(argv):
            if a.startswith("--config="):
                argv[i] = "--config=" + resolve_config_path(a[len("--config="):])
            elif a == "--config" and i + 1 < len(argv):
                argv[i + 1] = resolve_config_path(argv[i + 1])
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - anything raised while loading the config is a bad flag
        print(f"error: {_flag_error_line(e, argv)}", file=sys.stderr, flush=True)
        sys.exit(2)


def main(argv):
    """The trainer's body after flag parsing. Exit status: 0 done or preempted (SIGTERM; checkpoint saved),
    130 interrupted (SIGINT; checkpoint saved), 2 an error (one line on stderr: bad config, busy workdir, a
    checkpoint of another configuration, divergence)."""
    from absl import flags
    from absl import logging as absl_logging

    from hyperlora_jax.cli import common as cli
    del argv
    FLAGS = flags.FLAGS
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save step at INFO
    log.setLevel(logging.INFO)
    try:
        status = cli.run(lambda _: 130 if run(FLAGS.config, FLAGS.workdir)["reason"] == "interrupted" else 0,
                         exit=False)
    except KeyboardInterrupt:  # a second Ctrl-C outside the loop (e.g. during the final evaluation)
        print("error: interrupted", file=sys.stderr, flush=True)
        status = 130
    sys.exit(status)


def _define_flags():
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/d2l.py:toy", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and TensorBoard events")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main, flags_parser=_parse_flags)
