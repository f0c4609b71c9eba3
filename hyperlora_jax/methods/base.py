"""The contract between the trainer (``hyperlora_jax.train``) and a training method: ``Method``, ``Hook``.

A method owns everything method-specific: the frozen models, the trainable parameter tree, the loss of one
micro-batch and the data. The trainer owns the loop: mesh, optimizer, sharding, jit, gradient accumulation,
checkpoints, metrics, stop signals. It calls, in this order:

    method = cls(config, mesh)                                   build models, tokenizers, data sources
    method.decay_mask, method.init_trainable, method.frozen()    optimizer, sharded init
    method.fingerprint()                                         checkpoint identity
    method.data_iterator(process_index, process_count)           host-local batches
    method.loss(...)                                             inside the jitted step
    method.flops_per_step(tokens)                                every log step (MFU estimate)
    method.hooks()                                               periodic hooks, then the end-of-training ones

Methods are registered by name in ``hyperlora_jax.methods.METHODS`` (``config.method`` picks one).
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class HookContext:
    """What a hook sees: the trainer's state after ``step`` optimizer steps.

    params: the trainable parameter tree (``init_trainable``'s structure, float32, sharded over the mesh);
    frozen: ``Method.frozen()``; workdir: the run's directory; is_main: process 0 (the only one that writes files
    and metrics, while every process runs the hook: a hook that computes on sharded arrays runs everywhere)."""
    step: int
    params: Any
    frozen: Any
    workdir: str
    is_main: bool


@dataclasses.dataclass(frozen=True)
class Hook:
    """Work the trainer runs between steps on behalf of a method.

    every = N > 0: after every N-th optimizer step (steps N, 2N, ...; after that step's metrics row); the dict
    ``fn`` returns (scalars) is written to metrics.jsonl and TensorBoard as ``<name>/<key>`` at that step.
    every = 0: once, after training finished normally (not when preempted or interrupted) and after the final
    checkpoint; what ``fn`` returns is the run's ``final_eval[name]`` (``train.run``'s summary).
    ``fn`` returning None records nothing."""
    name: str
    every: int
    fn: Callable[[HookContext], "dict | None"]

    def __post_init__(self):
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 0:
            raise ValueError(f"hook {self.name!r}: every must be an integer >= 0, got {self.every!r}")


class Method(abc.ABC):
    """A training method. Subclasses implement the abstract methods; the others have defaults."""

    @abc.abstractmethod
    def __init__(self, config, mesh):
        """config: the run's ml_collections ConfigDict (``config_defaults.trainer_defaults`` plus the method's own
        keys); mesh: the ``jax.sharding.Mesh`` (axes data, fsdp, tensor) that frozen arrays are placed on. Builds
        the frozen models, tokenizers and data sources; bad config values raise ValueError (one message)."""

    @abc.abstractmethod
    def init_trainable(self, rng) -> Any:
        """Fresh trainable parameter tree (float32 master copy) from a PRNG key; traced (jit / eval_shape)."""

    @abc.abstractmethod
    def frozen(self) -> Any:
        """Frozen arrays (already placed on the mesh): passed to ``loss`` and hooks, never differentiated or
        saved. Called once per run ({} when there are none)."""

    @abc.abstractmethod
    def loss(self, trainable, frozen, batch, rng) -> tuple[Any, dict]:
        """(loss, metrics) of one micro-batch; traced inside the jitted, differentiated step.

        trainable: ``init_trainable``'s tree; frozen: ``frozen()``; batch: dict of arrays whose leading axis is
        the micro-batch (``batch_size / grad_accum_steps`` rows); rng: a PRNG key for this micro-batch.
        loss: float32 scalar; metrics: dict of float32 scalars, averaged over micro-batches except keys starting
        with ``tokens`` (summed: ``tokens`` = real tokens processed, for tokens/s). Must include ``loss``."""

    @abc.abstractmethod
    def fingerprint(self) -> dict:
        """JSON-able dict a checkpoint must match to be resumed (method name, model shapes, ...)."""

    @abc.abstractmethod
    def data_iterator(self, process_index: int, process_count: int):
        """Iterator of host-local batches (this process's ``batch_size / process_count`` rows, numpy) with
        ``get_state() -> dict`` / ``set_state(dict)`` (JSON) for checkpointing, e.g. ``IndexedBatchIterator``."""

    def decay_mask(self, params) -> Any:
        """Tree of bools like ``params``: True = weight decay applies. Default: ``hyperlora_jax.optim.decay_mask``
        (arrays of rank >= 2 decayed, except biases, norms, ``scale`` and ``embedding`` leaves)."""
        from hyperlora_jax.optim import decay_mask
        return decay_mask(params)

    def flops_per_step(self, batch_tokens: float) -> float:
        """Model FLOPs of one optimizer step over ``batch_tokens`` tokens (MFU estimate); 0.0 = unknown."""
        return 0.0

    def hooks(self) -> list[Hook]:
        """Periodic (every > 0) and end-of-training (every = 0) work; none by default."""
        return []
