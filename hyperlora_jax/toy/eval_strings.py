"""Evaluation of the T2L toy (string tasks): exact-match accuracy of greedy generations.

Splits (``hyperlora_jax.toy.string_tasks``):
  train_tasks_heldout_descriptions   the 34 training tasks, each with its held-out descriptions (never trained on)
  heldout_tasks                      the 6 held-out tasks, each with all of its descriptions
Each (task, description) pair gets ``n_per_description`` fresh words (``make_word(eval seed, j)``, j counting
through the split), so every method sees exactly the same examples.

Methods (rows of ``WORKDIR/eval/results.json``: {"method", "split", "accuracy", "n"}):
  base            the string base model, user turn = the bare word (it has every skill but no task signal)
  multitask_lora  one LoRA trained on all training tasks with the description in the user turn; evaluated with the
                  evaluated description in the user turn ("<description>\\n<word>")
  oracle_lora     the task's own LoRA (trained on that task only, held-out tasks included), user turn = the word
  t2l             the adapter T2L generates from the evaluated description (MiniLM embedding), user turn = the word
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from hyperlora_jax.eval.answering import chat_ids
from hyperlora_jax.io.atomic import write_text
from hyperlora_jax.lora import Adapter
from hyperlora_jax.toy import string_tasks as st

log = logging.getLogger("hyperlora_jax.toy.eval_strings")

SPLITS = ("train_tasks_heldout_descriptions", "heldout_tasks")
METHODS = ("base", "multitask_lora", "oracle_lora", "t2l")


@dataclasses.dataclass(frozen=True)
class Item:
    task: str
    desc_k: int            # index into string_tasks.DESCRIPTIONS[task]
    description: str
    word: str
    answer: str


def eval_items(split: str, n_per_description: int, seed: int) -> list[Item]:
    """The examples of ``split``: for each task of the split and each of its evaluated descriptions,
    ``n_per_description`` words."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    if n_per_description < 1:
        raise ValueError(f"n_per_description must be >= 1, got {n_per_description}")
    tasks = st.TRAIN_TASKS if split == SPLITS[0] else st.HELDOUT_TASKS
    items, j = [], 0
    for t in tasks:
        held = st.heldout_descriptions(t)
        for k, d in enumerate(st.DESCRIPTIONS[t]):
            if d not in held:
                continue
            for _ in range(n_per_description):
                w, a = st.example(t, seed, j)
                items.append(Item(t, k, d, w, a))
                j += 1
    return items


def max_new_tokens(tok) -> int:
    """One generation length for every task and split (so one program compiles): the longest answer any task gives
    on a longest word, in tokens, plus the end token and one spare. Exact for a character tokenizer (the string
    base's); a BPE tokenizer splits other words into more tokens than this probe word, so configs on a BPE base set
    ``eval.max_new_tokens`` instead."""
    word = "bcdefa"[:st.MAX_LEN]
    return max(len(tok(st.apply_task(t, word), add_special_tokens=False)["input_ids"]) for t in st.TASK_NAMES) + 2


def exact_match(params, cfg, tok, contents: Sequence[str], answers: Sequence[str], *, adapter: Adapter | None = None,
                batch_size: int = 64, max_new: int = 0) -> np.ndarray:
    """Greedy generation for each user turn ``contents[i]`` (with adapter row i, if given); [N] bool: the decoded
    answer (special tokens dropped, stripped) equals ``answers[i]``. Every batch has ``batch_size`` rows (the last
    one padded by repeating its last row), prompts are left-padded to one length for the whole call and the
    generation length is ``max_new`` (0: ``max_new_tokens(tok)``): one compiled program per call shape."""
    from hyperlora_jax.generation import generate
    if len(contents) != len(answers):
        raise ValueError(f"{len(contents)} prompts but {len(answers)} answers")
    if not contents:
        raise ValueError("no prompts to evaluate")
    if adapter is not None and adapter.batch_size != len(contents):
        raise ValueError(f"adapter has {adapter.batch_size} rows for {len(contents)} prompts")
    max_new = int(max_new) or max_new_tokens(tok)
    longest_answer = max(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
    if longest_answer + 1 > max_new:
        raise ValueError(f"an answer of {longest_answer} tokens (+ the end token) does not fit the generation length "
                         f"{max_new}; raise eval.max_new_tokens")
    stops = sorted(set(cfg.eos_token_ids) | {tok.eos_token_id})
    all_prompts = [chat_ids(tok, c) for c in contents]
    longest = max(len(p) for p in all_prompts)
    hits = []
    for s in range(0, len(contents), batch_size):
        idx = list(range(s, min(s + batch_size, len(contents))))
        padded = idx + [idx[-1]] * (batch_size - len(idx))
        out = generate(params, cfg, [all_prompts[i] for i in padded], max_new_tokens=max_new, stop_tokens=stops,
                       adapter=adapter.take(padded) if adapter is not None else None, pad_to=longest)
        for i, row in zip(idx, out):
            hits.append(tok.decode(row, skip_special_tokens=True).strip() == answers[i])
    return np.asarray(hits, bool)


def load_bank(dirs: Sequence[str], cfg) -> Adapter:
    """PEFT directories -> one Adapter with a row per directory."""
    from hyperlora_jax.lora import stack_adapters
    from hyperlora_jax.io.peft_io import import_peft
    return stack_adapters([import_peft(d, cfg) for d in dirs])


def evaluate(params, cfg, tok, *, t2l_adapters: Callable[[list[Item]], Adapter] | None, oracle_root: str = "",
             multitask_dir: str = "", n_per_description: int = 4, seed: int = 1234, batch_size: int = 64,
             methods: Sequence[str] = METHODS, max_new: int = 0) -> list[dict]:
    """Rows {"method", "split", "accuracy", "n"} for every method of ``methods`` that has what it needs
    (``t2l_adapters``: items -> one adapter row per item; ``oracle_root``: a directory with one PEFT subdirectory
    per task; ``multitask_dir``: a PEFT directory). ``accuracy`` is the exact-match fraction over ``n`` examples.
    ``max_new``: the generation length (0: derived from the tokenizer, ``max_new_tokens(tok)``)."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown evaluation methods {bad} (known: {', '.join(METHODS)})")
    oracle = load_bank([os.path.join(oracle_root, t) for t in st.TASK_NAMES], cfg) if (
        oracle_root and "oracle_lora" in methods) else None
    multi = load_bank([multitask_dir], cfg) if multitask_dir and "multitask_lora" in methods else None
    rows = []
    for split in SPLITS:
        items = eval_items(split, n_per_description, seed)
        words, answers = [it.word for it in items], [it.answer for it in items]
        t2l = t2l_adapters(items) if (t2l_adapters is not None and "t2l" in methods) else None
        like = next((a for a in (oracle, t2l, multi) if a is not None), None)
        for m in methods:
            t0 = time.perf_counter()
            if m == "base":   # through a zero adapter (= the base model): the adapters' compiled program
                hits = exact_match(params, cfg, tok, words, answers, batch_size=batch_size, max_new=max_new,
                                   adapter=like.zeros_like(len(items)) if like is not None else None)
            elif m == "multitask_lora" and multi is not None:
                from hyperlora_jax.toy.string_sources import user_content
                hits = exact_match(params, cfg, tok, [user_content(it.word, it.description) for it in items],
                                   answers, adapter=multi.take([0] * len(items)), batch_size=batch_size,
                                   max_new=max_new)
            elif m == "oracle_lora" and oracle is not None:
                ad = oracle.take([st.TASK_NAMES.index(it.task) for it in items])
                hits = exact_match(params, cfg, tok, words, answers, adapter=ad, batch_size=batch_size,
                                   max_new=max_new)
            elif m == "t2l" and t2l is not None:
                hits = exact_match(params, cfg, tok, words, answers, adapter=t2l, batch_size=batch_size,
                                   max_new=max_new)
            else:
                log.warning("eval: skipping %s (no adapter given)", m)
                continue
            rows.append({"method": m, "split": split, "accuracy": float(hits.mean()), "n": int(hits.size)})
            log.info("eval %s / %s: %.3f (%.1fs)", m, split, hits.mean(), time.perf_counter() - t0)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table: one line per method, one column per split (accuracy %, n)."""
    acc = {(r["method"], r["split"]): r for r in rows}
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    methods += sorted({r["method"] for r in rows} - set(methods))
    lines = ["T2L toy (string tasks): exact match, greedy",
             "| method | " + " | ".join(SPLITS) + " |", "|---" * (len(SPLITS) + 1) + "|"]
    for m in methods:
        cells = [f"{100 * acc[(m, s)]['accuracy']:.1f}% (n={acc[(m, s)]['n']})" if (m, s) in acc else "-"
                 for s in SPLITS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(rows: list[dict], workdir: str) -> str:
    """WORKDIR/eval/results.json (written to a temporary file, then renamed)."""
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    return write_text(path, json.dumps(rows, indent=1))


def evaluate_t2l_run(method, trainable, workdir: str) -> dict:
    """The final evaluation of a ``configs/t2l.py:toy`` run (T2L method, source 'toy_strings'): adapters from the
    run's hypernetwork for the precomputed MiniLM embeddings of the evaluated descriptions; oracle and multi-task
    LoRAs from ``eval.oracle_dir`` / ``eval.multitask_dir`` (the shipped ones by default). Writes
    WORKDIR/eval/results.json and prints the table."""
    from hyperlora_jax.toy.string_sources import description_table
    ec = method.config.eval
    _, table = description_table()
    emb = np.asarray(method.task_embs)

    def t2l_adapters(items):
        rows = [table[(it.task, it.desc_k)] for it in items]
        return method.adapters_for(trainable, emb[rows])

    methods = tuple(ec.get("methods", METHODS))
    if not methods:
        log.info("eval: eval.methods is empty, no evaluation")
        return None
    base = method.frozen()["base"]
    rows = evaluate(base, method.model_cfg, method.format_pair.tok, t2l_adapters=t2l_adapters,
                    oracle_root=ec.get("oracle_dir", "") or "", multitask_dir=ec.get("multitask_dir", "") or "",
                    n_per_description=int(ec.n_per_description), seed=int(ec.seed),
                    batch_size=int(ec.get("batch_size", 64)), methods=methods,
                    max_new=int(ec.get("max_new_tokens", 0)))
    path = write_results(rows, workdir)
    print(format_table(rows), flush=True)
    return {"results": path, "rows": rows}


def quick_bank_check(method, params, n: int, seed: int = 99) -> dict:
    """Exact match of a trained ``lora`` bank on ``n`` fresh words per task (user turn as in its training data);
    prints and returns {task: accuracy} (per-task bank) or {"all": accuracy}."""
    from hyperlora_jax.toy.string_sources import user_content
    names = method.data.task_names
    texts = st.DESCRIPTIONS
    in_prompt = bool(method.config.data.get("description_in_prompt", False))
    items, slots = [], []
    for s, t in enumerate(names):
        descs = st.heldout_descriptions(t) if t in st.TRAIN_TASKS else texts[t]
        for j in range(n):
            w, a = st.example(t, seed, s * n + j)
            items.append((user_content(w, descs[j % len(descs)] if in_prompt else None), a))
            slots.append(s if method.per_task else 0)
    ad = method.adapter(params, jnp.asarray(slots, jnp.int32))
    hits = exact_match(method.frozen()["base"], method.model_cfg, method.tok, [c for c, _ in items],
                       [a for _, a in items], adapter=ad)
    per = {t: float(hits[s * n:(s + 1) * n].mean()) for s, t in enumerate(names)}
    print("lora bank exact match: mean %.3f | " % hits.mean() +
          " ".join(f"{t}={v:.2f}" for t, v in per.items()), flush=True)
    return per if method.per_task else {"all": float(hits.mean())}
