"""Atomic writes of files and directories: a temporary sibling, renamed over the target only when complete.

A reader (or a crash, kill -9, a full disk) never sees a half-written file or directory: the target holds either the
old content or the new. Files: ``atomic_open`` / ``write_text``; directories: ``atomic_write_dir`` (with
``prepare_out_dir``, the one "non-empty output needs overwrite" check).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """``with atomic_open(path) as f: f.write(...)``: ``f`` is a temporary file in ``path``'s directory, renamed to
    ``path`` when the block ends without an exception and removed when it raises. ``mode`` is "w" or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> str:
    """Writes ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path) as f:
        f.write(text)
    return path


def prepare_out_dir(out_dir: str, overwrite: bool) -> None:
    """FileExistsError for an existing non-empty ``out_dir`` (or a file there) unless ``overwrite``."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)) and not overwrite:
        raise FileExistsError(f"output directory {out_dir!r} exists and is not empty (pass --overwrite to replace it)")


def atomic_write_dir(out_dir: str, write, overwrite: bool = False) -> None:
    """Calls ``write(tmp_dir)`` on a fresh sibling temp dir ``.tmp-<name>-*``, then renames it to ``out_dir``.

    A non-empty ``out_dir`` is refused (``prepare_out_dir``) unless ``overwrite``; then it is renamed aside
    (``.old-<name>-*``) and removed only once the new directory is in place. On any failure, including
    KeyboardInterrupt or a signal raised as an exception, the temp dir is removed and the old directory put back:
    ``out_dir`` is never half-written.
    """
    prepare_out_dir(out_dir, overwrite)
    out_dir = os.path.abspath(out_dir)
    parent, base = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp, old = None, None
    try:
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{base}-")
        write(tmp)
        if os.path.lexists(out_dir):
            prepare_out_dir(out_dir, overwrite)  # it may have appeared meanwhile
            old = tempfile.mkdtemp(dir=parent, prefix=f".old-{base}-")
            os.rename(out_dir, os.path.join(old, "d"))
        os.rename(tmp, out_dir)
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if not os.path.lexists(out_dir) and os.path.lexists(os.path.join(old, "d")):
                os.rename(os.path.join(old, "d"), out_dir)
            shutil.rmtree(old, ignore_errors=True)
