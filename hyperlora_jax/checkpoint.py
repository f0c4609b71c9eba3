"""Orbax checkpointing of the training state: keep-last-K, async saves, safe restore.

Each checkpoint step holds three items:
  state  the train state pytree (trainable params, optimizer state, step, rng) — never the frozen base model;
  data   the data iterator position (JSON);
  meta   a fingerprint of the run (method, model shapes, ...) so a workdir of another model is refused.

Restore tries the newest step first. A checkpoint of another configuration is refused with
CheckpointMismatchError naming what differs: the fingerprint, the train-state layout (e.g. an optimizer option that
changes the optimizer state's tree) or the data position (e.g. another batch size). A checkpoint that cannot be read,
or whose data position is malformed, is moved aside to ``corrupt-checkpoint-<step>-<time>`` (nothing is deleted)
with a warning, and the previous step is tried. Temporary directories of interrupted saves are removed on start.

``lock_workdir`` keeps a second trainer off a workdir while one runs.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a different run configuration."""


class WorkdirBusyError(ValueError):
    """Another trainer holds the workdir's lock."""


class CheckpointLookupError(ValueError):
    """No checkpoint, a requested step that is not there, or one that cannot be read (one line)."""


CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
    """The Orbax directory of a training run given as ``workdir``: the path itself when it is a ``checkpoints/``
    directory, else ``workdir/checkpoints`` (absolute)."""
    path = os.path.abspath(workdir)
    if os.path.basename(os.path.normpath(path)) == CHECKPOINT_DIR:
        return path
    return os.path.join(path, "checkpoints")


def run_fingerprint(method, abstract_params) -> dict:
    """What a checkpoint records about its run and a restore compares: ``method.fingerprint()`` plus a hash of the
    trainable parameters' paths and shapes (``trainable_params``)."""
    shapes = sorted(f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}"
                    for p, x in jax.tree_util.tree_leaves_with_path(abstract_params))
    fp = dict(method.fingerprint())
    fp["trainable_params"] = hashlib.sha1("\n".join(shapes).encode()).hexdigest()[:16]
    return fp


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """'KEY: checkpoint has X, this run has Y' for every fingerprint key whose values differ (``saved``: the
    checkpoint's; a key only one side has shows as ``none`` on the other)."""
    out = []
    for k, v in current.items():
        if k not in saved:
            out.append(f"{k}: checkpoint has none, this run has {v!r}")
        elif saved[k] != v:
            out.append(f"{k}: checkpoint has {saved[k]!r}, this run has {v!r}")
    return out + [f"{k}: checkpoint has {saved[k]!r}, this run has none" for k in saved if k not in current]


def _reader(ckdir: str):
    return ocp.CheckpointManager(ckdir, options=ocp.CheckpointManagerOptions(create=False, read_only=True),
                                 item_names=("state", "data", "meta"))


def _steps(workdir: str) -> tuple[str, list[int]]:
    """(checkpoint directory, its step numbers newest first); CheckpointLookupError when there are none."""
    ckdir = checkpoint_dir(workdir)
    steps = sorted((int(n) for n in os.listdir(ckdir) if n.isdigit()), reverse=True) if os.path.isdir(ckdir) else []
    if not steps:
        raise CheckpointLookupError(f"{workdir!r} holds no checkpoint (expected {ckdir}/<step>/ written by "
                                    "python -m hyperlora_jax.train)")
    return ckdir, steps


def _read_meta(mgr, ckdir: str, step: int) -> dict:
    try:
        meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - any orbax failure is one message
        raise CheckpointLookupError(f"cannot read the metadata of {ckdir}/{step}: {type(e).__name__}") from None
    return dict(meta or {})


def _candidates(ckdir: str, steps: list[int], step: int | None) -> list[int]:
    """The steps to try: ``[step]`` (CheckpointLookupError when it is not there), else all, newest first."""
    if step is None:
        return steps
    if step not in steps:
        raise CheckpointLookupError(f"{ckdir} has no step {step} (steps: {', '.join(map(str, sorted(steps)))})")
    return [step]


def checkpoint_meta(workdir: str, step: int | None = None) -> tuple[int, dict]:
    """(step, saved fingerprint) of step ``step`` of a training workdir (or its ``checkpoints/``),
    default the newest step whose metadata reads; CheckpointLookupError when there is no
    checkpoint / no such step / no readable metadata."""
    ckdir, steps = _steps(workdir)
    mgr = _reader(ckdir)
    try:
        errors = []
        for s in _candidates(ckdir, steps, step):
            try:
                return s, _read_meta(mgr, ckdir, s)
            except CheckpointLookupError as e:
                if step is not None:
                    raise
                errors.append(str(e))
        raise CheckpointLookupError(f"{ckdir} holds no readable checkpoint ({'; '.join(errors)})")
    finally:
        mgr.close()


def restore_params(workdir: str, template, *, fingerprint: dict, step: int | None = None):
    """(trainable params, step): the ``params`` subtree of step ``step`` (default: the newest readable step) of a
    training workdir (or its ``checkpoints/``), restored read-only into ``template``'s
    shapes, dtypes and shardings (arrays or ShapeDtypeStructs); the optimizer state and data position stay behind.

    The checkpoint must have been written with ``fingerprint`` (``run_fingerprint``): else CheckpointMismatchError
    naming each differing key ('KEY: checkpoint has X, this run has Y'). No checkpoint, no such step, or nothing
    readable: CheckpointLookupError. Without ``step``, unreadable steps are skipped with a warning."""
    ckdir, steps = _steps(workdir)
    tmpl = {"params": _abstract(template)}
    restore_args = jax.tree_util.tree_map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), tmpl)
    mgr = _reader(ckdir)
    try:
        errors = []
        for s in _candidates(ckdir, steps, step):
            try:
                meta = _read_meta(mgr, ckdir, s)
            except CheckpointLookupError as e:
                if step is not None:
                    raise
                log.warning("%s; trying the previous step", e)
                errors.append(str(e))
                continue
            diffs = fingerprint_differences(meta, fingerprint)
            if diffs:
                raise CheckpointMismatchError(f"the checkpoint {ckdir}/{s} is of a different model configuration: "
                                              + "; ".join(diffs))
            try:
                out = mgr.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                    item=tmpl, restore_args=restore_args, partial_restore=True)))
            except Exception as e:  # noqa: BLE001 - a partial / corrupt checkpoint
                why = f"cannot restore {ckdir}/{s}: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
                if step is not None:
                    raise CheckpointLookupError(why) from None
                log.warning("%s; trying the previous step", why)
                errors.append(why)
                continue
            return out["state"]["params"], s
        raise CheckpointLookupError(f"{ckdir} holds no readable checkpoint ({'; '.join(errors)})")
    finally:
        mgr.close()


def lock_workdir(workdir: str):
    """An exclusive ``flock`` on ``WORKDIR/.lock``, held while the returned open file is (close it, or exit, to
    release: a killed trainer never leaves a stale lock). WorkdirBusyError, naming the holder, when another process
    holds it. The file records the holder's pid, host and start time."""
    path = os.path.join(workdir, ".lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise WorkdirBusyError(f"workdir {workdir!r} is in use by another trainer ({holder}); wait for it to end or "
                               "choose another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f


def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def tree_layout(tree) -> dict[str, tuple]:
    """{'opt_state/1/0/mu/lm_head/kernel': (shape, dtype name), ...} of a pytree of arrays, array structs or orbax
    array metadata (dict keys, sequence indices and named-tuple fields all become path parts)."""
    return {"/".join(_key_name(k) for k in path): (tuple(x.shape), str(x.dtype))
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def layout_differences(saved: dict, current: dict, limit: int = 3) -> list[str]:
    """What differs between two ``tree_layout``s (``saved``: a checkpoint's), at most ``limit`` items per kind."""

    def few(paths):
        return ", ".join(paths[:limit]) + (f" (+{len(paths) - limit} more)" if len(paths) > limit else "")

    out = []
    only_saved, only_run = sorted(set(saved) - set(current)), sorted(set(current) - set(saved))
    if only_saved:
        out.append(f"{few(only_saved)} only in the checkpoint")
    if only_run:
        out.append(f"{few(only_run)} only in this run")
    changed = [p for p in sorted(set(saved) & set(current)) if saved[p] != current[p]]
    out += [f"{p}: checkpoint has {saved[p][0]} {saved[p][1]}, this run has {current[p][0]} {current[p][1]}"
            for p in changed[:limit]]
    return out


def _json_kind(v) -> str:
    if isinstance(v, bool) or v is None:
        return type(v).__name__
    if isinstance(v, (int, float)):
        return "number"
    return "object" if isinstance(v, dict) else "array" if isinstance(v, (list, tuple)) else type(v).__name__


def data_state_problem(saved, template: dict) -> str | None:
    """Why a saved data position cannot be a position of this run's data iterator (``template``: a fresh
    iterator's ``get_state()``): not an object, a key missing, or a value of another JSON kind; else None."""
    if not isinstance(saved, dict):
        return f"malformed data state (a JSON {_json_kind(saved)}, not an object)"
    for k, v in template.items():
        if k not in saved:
            return f"malformed data state (no {k!r})"
        if _json_kind(saved[k]) != _json_kind(v):
            return f"malformed data state ({k!r} is a JSON {_json_kind(saved[k])}, expected a {_json_kind(v)})"
    return None


def _handlers() -> dict:
    return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler()}


def _abstract(tree):
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class Checkpointer:
    def __init__(self, workdir: str, fingerprint: dict[str, Any], keep: int = 3, async_save: bool = True):
        self.dir = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
        self.fingerprint = fingerprint
        self._async = async_save
        self._keep = keep
        self.manager = self._make_manager(self.dir, keep)

    def _make_manager(self, directory, keep):
        return ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                                 enable_async_checkpointing=self._async),
            item_handlers=_handlers())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, force: bool = False):
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                                  meta=ocp.args.JsonSave(self.fingerprint))
        if step not in self.manager.all_steps():
            self.manager.save(step, args=args, force=force)

    def check_fingerprint(self, step: int):
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        diffs = fingerprint_differences(meta, self.fingerprint)
        if diffs:
            raise CheckpointMismatchError(
                f"the workdir {os.path.dirname(self.dir)!r} holds a checkpoint (step {step}) of a different run: "
                + "; ".join(diffs))

    def check_layout(self, step: int, state_template):
        """CheckpointMismatchError when the checkpoint's train-state tree (paths, shapes, dtypes, from its
        metadata) is not ``state_template``'s: a configuration change, e.g. max_grad_norm switched on or off
        changes the optimizer state. An unreadable metadata file raises something else (treated as corruption)."""
        saved = tree_layout(self.manager.item_metadata(step)["state"])
        diffs = layout_differences(saved, tree_layout(state_template))
        if diffs:
            hint = (" (the optimizer state differs: was an optimizer option changed, e.g. max_grad_norm switched "
                    "on or off?)" if all(d.startswith("opt_state/") for d in diffs) else "")
            raise CheckpointMismatchError(
                f"the workdir {os.path.dirname(self.dir)!r} holds a checkpoint (step {step}) whose train state does "
                f"not fit this run{hint}: " + "; ".join(diffs))

    def restore(self, state_template, data_template: dict | None = None,
                apply_data: Callable[[dict], None] | None = None):
        """(state, data_state, step) from the newest readable checkpoint, or None when there is none.

        ``data_template``: a fresh data iterator's state (the saved one must have its keys and JSON kinds);
        ``apply_data``: sets the iterator to the saved position; a ValueError from it is a configuration mismatch
        (e.g. another batch size), any other error marks the checkpoint malformed. Mismatches of the fingerprint,
        the state layout or the data position raise CheckpointMismatchError; unreadable or malformed checkpoints
        are set aside and the previous one is tried."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self.check_fingerprint(step) if self._readable_meta(step) else None
                self.check_layout(step, state_template)
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(state_template)), data=ocp.args.JsonRestore()))
            except CheckpointMismatchError:
                raise
            except Exception as e:  # a corrupt or partial checkpoint: set it aside, try the previous one
                self._set_aside(step, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
                continue
            problem = data_state_problem(out["data"], data_template) if data_template is not None else None
            if problem is None and apply_data is not None:
                try:
                    apply_data(out["data"])
                except ValueError as e:
                    raise CheckpointMismatchError(f"the workdir {os.path.dirname(self.dir)!r} holds a checkpoint "
                                                  f"(step {step}) of a different data configuration: {e}") from None
                except Exception as e:  # noqa: BLE001 - the saved position does not fit the iterator
                    problem = f"malformed data state ({type(e).__name__}: {e})"
            if problem is not None:
                self._set_aside(step, problem)
                continue
            return out["state"], out["data"], step
        return None

    def _readable_meta(self, step) -> bool:
        try:
            self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return True
        except Exception:
            return False

    def _set_aside(self, step: int, why: str):
        src = os.path.join(self.dir, str(step))
        dst = os.path.join(os.path.dirname(self.dir), f"corrupt-checkpoint-{step}-{int(time.time())}")
        log.warning("checkpoint at step %d is unreadable (%s); moved to %s, falling back to the previous one",
                    step, why, dst)
        if jax.process_index() == 0 and os.path.exists(src):
            os.rename(src, dst)
        self.manager.close()
        self.manager = self._make_manager(self.dir, self._keep)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()
