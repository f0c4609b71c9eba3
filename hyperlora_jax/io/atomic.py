"""Atomic file writes: a temporary file beside the target, renamed over it only when complete.

A reader (or a crash, kill -9, a full disk) never sees a half-written file: the target holds either the old content
or the new. Directories are written the same way by ``peft_io.atomic_write_dir``.
"""
from __future__ import annotations

import contextlib
import os
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
