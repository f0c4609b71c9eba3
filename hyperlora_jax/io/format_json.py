"""The project's versioned JSON files: ``{"format": NAME, "format_version": N, ...}`` (D2L / T2L checkpoint
``config.json``, a training workdir's ``config.json``). One reader, so every format refuses a missing, malformed,
foreign or newer file the same way: one error naming the file."""
from __future__ import annotations

import json
import os


def read_format_json(path: str, fmt: str, version: int, error=ValueError, missing: str | None = None) -> dict:
    """The JSON object in ``path`` if its "format" is ``fmt`` and "format_version" is ``version``; else ``error``
    (``missing``: the message when the file does not exist)."""
    if not os.path.isfile(path):
        raise error(missing or f"{path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON: {e}") from None
    got = body.get("format") if isinstance(body, dict) else None
    if got != fmt:
        raise error(f"{path}: format {got!r}, expected {fmt!r}")
    if body.get("format_version") != version:
        raise error(f"{path}: format_version {body.get('format_version')!r} is not supported")
    return body
