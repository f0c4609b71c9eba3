"""Orbax checkpointing of the training state: keep-last-K, optional best-by-metric, async saves, safe restore.

Each checkpoint step holds three items:
  state  the train state pytree (trainable params, optimizer state, step, rng) — never the frozen base model;
  data   the data iterator position (JSON);
  meta   a fingerprint of the run (method, model shapes, ...) so a workdir of another model is refused.

Restore tries the newest step first; one that fails to restore is moved aside to ``corrupt-<step>`` (nothing is
deleted) with a warning, and the previous step is tried.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a different run configuration."""


def _abstract(tree):
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class Checkpointer:
    def __init__(self, workdir: str, fingerprint: dict[str, Any], keep: int = 3, best_metric: str | None = None,
                 best_mode: str = "min", async_save: bool = True):
        self.dir = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.fingerprint = fingerprint
        self.best_metric = best_metric
        self._async = async_save
        self._keep = keep
        self.manager = self._make_manager(self.dir, keep)
        self.best = None
        if best_metric:
            mode = best_mode

            self.best = ocp.CheckpointManager(
                os.path.join(os.path.abspath(workdir), "checkpoints_best"),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, create=True, best_fn=lambda m: float(m[best_metric]), best_mode=mode,
                    enable_async_checkpointing=async_save),
                item_names=("state", "data", "meta"))

    def _make_manager(self, directory, keep):
        return ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=self._async),
            item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, metrics: dict | None = None, force: bool = False):
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                                  meta=ocp.args.JsonSave(self.fingerprint))
        if step not in self.manager.all_steps():
            self.manager.save(step, args=args, force=force)
        if self.best is not None and metrics and self.best_metric in metrics:
            self.best.save(step, args=args, metrics={k: float(v) for k, v in metrics.items()}, force=True)

    def _fingerprint_diffs(self, meta: dict, theirs: str) -> list[str]:
        """'key: <theirs> has X, this run has Y' for each fingerprint field ``meta`` (a checkpoint's) differs in."""
        return [f"{k}: {theirs} has {meta.get(k)!r}, this run has {v!r}"
                for k, v in self.fingerprint.items() if meta.get(k) != v]

    def check_fingerprint(self, step: int):
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        diffs = self._fingerprint_diffs(meta, "checkpoint")
        diffs += [f"{k}: checkpoint has {meta[k]!r}, this run has none" for k in meta if k not in self.fingerprint]
        if diffs:
            raise CheckpointMismatchError(
                f"the workdir {os.path.dirname(self.dir)!r} holds a checkpoint (step {step}) of a different run: "
                + "; ".join(diffs))

    def restore(self, state_template):
        """(state, data_state, step) from the newest readable checkpoint, or None when there is none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            self.check_fingerprint(step) if self._readable_meta(step) else None
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(state_template)), data=ocp.args.JsonRestore()))
                return out["state"], out["data"], step
            except CheckpointMismatchError:
                raise
            except Exception as e:  # a corrupt or partial checkpoint: set it aside, try the previous one
                self._set_aside(step, e)
        return None

    def params_from(self, other: str, params_template):
        """The trainable parameters of the newest readable checkpoint of another run (``other``: its workdir or
        its ``checkpoints`` directory), restored into ``params_template``'s shapes and shardings, and that step.
        Only the ``params`` subtree is read (the optimizer state and data position stay behind). The other run
        must have this run's fingerprint (method, model configuration, parameter shapes): else
        CheckpointMismatchError naming the differing fields; no readable checkpoint there is a ValueError."""
        src = os.path.abspath(other)
        if os.path.isdir(os.path.join(src, "checkpoints")):
            src = os.path.join(src, "checkpoints")
        steps = []
        if os.path.isdir(src):
            steps = sorted((int(n) for n in os.listdir(src) if n.isdigit()), reverse=True)
        if not steps:
            raise ValueError(f"init_from: no checkpoint in {other!r} (expected a training workdir or its "
                             "checkpoints directory)")
        mgr = ocp.CheckpointManager(src, options=ocp.CheckpointManagerOptions(read_only=True),
                                    item_names=("state", "data", "meta"))
        try:
            errors = []
            for step in steps:
                try:
                    meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                except Exception as e:  # partial / corrupt: try the previous step
                    errors.append(f"step {step}: {type(e).__name__}")
                    continue
                diffs = self._fingerprint_diffs(meta, repr(other))
                if diffs:
                    raise CheckpointMismatchError(f"init_from: {other!r} (step {step}) is a run of a different "
                                                  "model configuration: " + "; ".join(diffs))
                tmpl = {"params": _abstract(params_template)}
                restore_args = jax.tree_util.tree_map(
                    lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), tmpl)
                out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                    item=tmpl, restore_args=restore_args, partial_restore=True)))
                return out["state"]["params"], step
            raise ValueError(f"init_from: no readable checkpoint in {other!r} ({'; '.join(errors)})")
        finally:
            mgr.close()

    def _readable_meta(self, step) -> bool:
        try:
            self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return True
        except Exception:
            return False

    def _set_aside(self, step: int, err: Exception):
        src = os.path.join(self.dir, str(step))
        dst = os.path.join(os.path.dirname(self.dir), f"corrupt-checkpoint-{step}-{int(time.time())}")
        log.warning("checkpoint at step %d is unreadable (%s: %s); moved to %s, falling back to the previous one",
                    step, type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "", dst)
        if jax.process_index() == 0 and os.path.exists(src):
            os.rename(src, dst)
        self.manager.close()
        self.manager = self._make_manager(self.dir, self._keep)

    def wait(self):
        self.manager.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self):
        self.manager.close()
        if self.best is not None:
            self.best.close()
