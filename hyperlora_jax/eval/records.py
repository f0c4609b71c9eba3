"""Local evaluation data (JSONL, never downloaded) and the results files.

Input files: one JSON object per line; blank lines are skipped; the dataset name is the file name without
``.jsonl`` / ``.json``. Each suite states its fields (qa.py, niah.py, t2l_bench.py); a missing file, a line that is
not JSON or a row without a required field is one ``EvalDataError`` naming the file and line.

Results: ``WORKDIR/eval/<name>.json`` — a list of rows, each a flat dict
  {"suite", "dataset", "method", "length" (length bin; null where none), <metric>: value in [0, 1] ..., "n",
   "wall_s" (adapter production + answering, seconds, JIT compilation included), optional "adapt_s" (producing the
   adapters / distilled LoRAs alone), "hypernet" (where the hypernetwork came from), extra per-method fields}
and ``WORKDIR/eval/<name>.md`` with one Markdown table per (suite, dataset), also printed. Both are written to a
temporary file and renamed, so a reader never sees a partial file.
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable, Sequence

from hyperlora_jax.io.atomic import write_text

import numpy as np

METRICS = ("exact_match", "rouge_l", "f1", "contains", "accuracy", "accuracy_norm")  # in table column order


class EvalDataError(ValueError):
    """An evaluation data file that cannot be used (one message naming the file and line)."""


def dataset_name(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".jsonl", ".json"):
        if base.endswith(ext):
            return base[:-len(ext)]
    return base


def read_jsonl(path: str, required: Sequence[str] = ()) -> list[dict]:
    """Rows of a JSONL file; every row must be an object holding ``required`` fields."""
    if not os.path.isfile(path):
        raise EvalDataError(f"evaluation data file {path!r} does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise EvalDataError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise EvalDataError(f"{path}:{i}: missing field(s) {', '.join(missing)} "
                                    f"(required: {', '.join(required)})")
            row["_line"] = i
            rows.append(row)
    if not rows:
        raise EvalDataError(f"{path}: no rows")
    return rows


def answers_of(row: dict, path: str, key: str = "answers") -> list[str]:
    """The gold answers of a row as a non-empty list of strings (a string, or a list of strings)."""
    a = row[key]
    if isinstance(a, dict):  # Hugging Face layouts: SQuAD / ROPES {"text": [...]}, DROP answers_spans {"spans": [...]}
        a = a.get("text", a.get("spans"))
    if isinstance(a, str):
        a = [a]
    if not isinstance(a, list) or not a or not all(isinstance(x, (str, int, float)) for x in a):
        raise EvalDataError(f"{path}:{row.get('_line')}: {key!r} must be a string, a non-empty list of strings or "
                            f"an object with a non-empty 'text' / 'spans' list")
    return [str(x) for x in a]


def sample(rows: list, n: int | None, seed: int) -> list:
    """``n`` rows drawn without replacement (order kept), as the references' ``max_test_samples_per_ds``; all when
    ``n`` is None or >= len(rows)."""
    if n is None or n <= 0 or n >= len(rows):
        return list(rows)
    idx = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
    return [rows[i] for i in idx]


def length_bin(length: int, bins: Sequence[int]) -> str:
    """The bin label ``lo-hi`` of ``length`` for sorted edges ``bins`` (``<e0``, ``lo-hi``, ``>=e_last``)."""
    edges = list(bins)
    if length < edges[0]:
        return f"<{edges[0]}"
    for lo, hi in zip(edges, edges[1:]):
        if lo <= length < hi:
            return f"{lo}-{hi}"
    return f">={edges[-1]}"


# ============================================================================================ results
def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{100 * v:.1f}"
    return str(v)


def markdown(rows: Sequence[dict]) -> str:
    """One table per (suite, dataset): rows = methods, columns = (length bin ×) metric, values in % (answer_nll in
    nats / token)."""
    out = []
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["suite"], r["dataset"]), []).append(r)
    for (suite, ds), rs in groups.items():
        metrics = [m for m in METRICS + ("answer_nll",) if any(m in r for r in rs)]
        lengths = list(dict.fromkeys(r.get("length") for r in rs))
        methods = list(dict.fromkeys(r["method"] for r in rs))
        cols = [(L, m) for L in lengths for m in metrics]
        head = [f"{m}" if L is None else f"{L}: {m}" for L, m in cols]
        adapt = any("adapt_s" in r for r in rs)
        out += [f"### {suite} / {ds} (values in %, n = examples per cell)", "",
                "| method | " + " | ".join(head) + " | n | wall s |" + (" adapt s |" if adapt else ""),
                "|---" * (len(cols) + 3 + adapt) + "|"]
        by = {(r["method"], r.get("length")): r for r in rs}
        for meth in methods:
            cells = [(f"{by[(meth, L)][m]:.2f}" if m == "answer_nll" else _fmt(by[(meth, L)][m]))
                     if (meth, L) in by and m in by[(meth, L)] else "–" for L, m in cols]
            mine = [by[(meth, L)] for L in lengths if (meth, L) in by]
            n = sorted({r["n"] for r in mine})
            wall = sum(r.get("wall_s", 0.0) for r in mine)
            line = f"| {meth} | " + " | ".join(cells) + f" | {'/'.join(map(str, n))} | {wall:.2f} |"
            if adapt:
                ad = [r["adapt_s"] for r in mine if "adapt_s" in r]
                line += f" {sum(ad):.2f} |" if ad else " – |"
            out.append(line)
        notes = sorted({r["note"] for r in rs if r.get("note")})
        out += [""] + [f"* {t}" for t in notes] + ([""] if notes else [])
    if any("answer_nll" in r for r in rows):
        out.append("answer_nll: mean negative log-likelihood of the gold answer as the reply, nats / token (not %; "
                   "lower is better).")
    out.append("wall s: producing adapters + answering, summed over the row's cells; adapt s: producing the adapters "
               "alone (D2L: internalising the documents; CD: distilling one LoRA per document; T2L: generating from "
               "the descriptions). " + ("Times leave JIT compilation out (--warmup)." if rows and all(
        r.get("timed_after_warmup") for r in rows) else "Times include JIT compilation of each new shape."))
    return "\n".join(out)


def write_results(rows: Sequence[dict], workdir: str, name: str) -> tuple[str, str]:
    """Writes ``workdir/eval/<name>.json`` and ``.md``; returns their paths."""
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"invalid results name {name!r} (a plain file name without '/')")
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    jpath, mpath = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}.md")
    for path, text in ((jpath, json.dumps(list(rows), indent=1) + "\n"), (mpath, markdown(rows) + "\n")):
        write_text(path, text)
    return jpath, mpath


def clean(rows: Iterable[dict]) -> list[dict]:
    """Rows with numpy scalars turned into Python numbers (JSON-serialisable)."""
    out = []
    for r in rows:
        out.append({k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()})
    return out
