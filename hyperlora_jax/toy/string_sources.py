"""Data sources of the toy string-task world (``hyperlora_jax.toy.string_tasks``), registered in
``hyperlora_jax.data.sources``:

  lm  source 'toy_strings'   pretraining of the string base model (configs/toy_base.py:strings): a mixture of ALL
                             40 tasks; the user turn holds the bare word (no instruction) with probability
                             1 - ``data.tag_prob``, else ``string_tasks.task_tag(task) + word`` (``"07:"`` for
                             plain task 7, ``"U07:"`` for its capital-letters version: a factorised tag that helps
                             the base form one circuit per transformation and one for capitals); loss on the
                             answer + end token.
                             So the base has every skill but, given only a word, cannot know which one is wanted.
  t2l source 'toy_strings'   T2L SFT rows (also used by the 'lora' method): hierarchical task sampling over the
                             training tasks (or all tasks, ``data.tasks = 'all'``), a random training description
                             and a random word per row; ``data.description_in_prompt`` puts the description in the
                             user turn before the word (the multi-task LoRA baseline), else the user turn is the word.
  t2l evaluator 'toy_strings'   the final evaluation of a T2L run (``toy/eval_strings.py``: results table)
  lora evaluator 'toy_strings'  with ``eval.n`` > 0, a quick exact-match check of the trained LoRA bank

``TaskData.descriptions`` lists the descriptions of ALL 40 tasks in ``string_tasks.TASK_NAMES`` order (training and
held-out ones), so the encoder embeds every description the evaluation needs once, at startup;
``description_table()`` gives the row of each (task, description).
"""
from __future__ import annotations

import numpy as np

from hyperlora_jax.config import ModelConfig
from hyperlora_jax.data.sources import register_evaluator, register_source
from hyperlora_jax.eval.answering import chat_ids
from hyperlora_jax.methods.t2l import ChatFormatter, TaskData, hierarchical_index
from hyperlora_jax.toy import string_tasks as st

TRAIN_SEED_OFFSET = 0          # training words: make_word(seed, i); evaluation uses eval.seed (different)


def description_table() -> tuple[list[str], dict[tuple[str, int], int]]:
    """(all descriptions in task order, {(task, k): row}) for every task and each of its descriptions."""
    texts, rows = [], {}
    for t in st.TASK_NAMES:
        for k, d in enumerate(st.DESCRIPTIONS[t]):
            rows[(t, k)] = len(texts)
            texts.append(d)
    return texts, rows


def user_content(word: str, description: str | None = None) -> str:
    """The user turn: the bare word, or the description then the word on its own line."""
    return word if description is None else f"{description}\n{word}"


@register_source("lm", "toy_strings")
def lm_toy_strings(cfg: ModelConfig, data_cfg, seed: int):
    """Row i: a uniformly drawn task of all 40, word make_word(seed, i); fixed length data.seq_len."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(data_cfg.tokenizer)
    tag_prob = float(data_cfg.get("tag_prob", 0.5))
    seq_len = int(data_cfg.seq_len)

    def example(i):
        rng = np.random.default_rng([seed, i, 5])
        task = st.TASK_NAMES[int(rng.integers(len(st.TASK_NAMES)))]
        word, answer = st.example(task, seed, i)
        content = st.task_tag(task) + word if rng.random() < tag_prob else word
        prompt = chat_ids(tok, content)
        ids = prompt + list(tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"])
        if len(ids) > seq_len:
            raise ValueError(f"toy_strings example of {len(ids)} tokens exceeds data.seq_len {seq_len}")
        tokens = np.full(seq_len, tok.pad_token_id, np.int32)
        tokens[:len(ids)] = ids
        mask = np.zeros(seq_len, np.float32)
        mask[len(prompt) - 1:len(ids) - 1] = 1.0      # positions predicting the answer and the end token
        return {"tokens": tokens, "loss_mask": mask,
                "segment_ids": (np.arange(seq_len) < len(ids)).astype(np.int32)}
    return example, None


@register_source("t2l", "toy_strings")
def t2l_toy_strings(fmt: ChatFormatter | None, data_cfg, seed: int) -> TaskData:
    """Rows {desc_index, task_index, tokens, loss_mask, segment_ids} (SFT rows: ``fmt`` must be a ChatFormatter);
    task_index is into ``task_names`` (the sampled tasks), desc_index into ``descriptions`` (all 40 tasks')."""
    which = data_cfg.get("tasks", "train")
    if which not in ("train", "all"):
        raise ValueError(f"data.tasks must be 'train' or 'all' for the toy_strings source, got {which!r}")
    if fmt is None:
        raise ValueError("the toy_strings source builds SFT rows: it needs t2l.mode 'sft'")
    names = list(st.TRAIN_TASKS if which == "train" else st.TASK_NAMES)
    texts, rows = description_table()
    in_prompt = bool(data_cfg.get("description_in_prompt", False))
    group = int(data_cfg.get("n_tasks_per_batch", len(names)))
    # a held-out task (only sampled with data.tasks = 'all', for oracle LoRAs) draws from all its descriptions
    train_desc = {t: [rows[(t, k)] for k in range(len(st.train_descriptions(t)) or len(st.DESCRIPTIONS[t]))]
                  for t in names}

    def example(i):
        task_i, rng = hierarchical_index(i, len(names), group, seed)
        t = names[task_i]
        d = train_desc[t][int(rng.integers(len(train_desc[t])))]
        word, answer = st.example(t, seed + TRAIN_SEED_OFFSET, int(rng.integers(2 ** 31)))
        out = {"desc_index": np.int32(d), "task_index": np.int32(task_i)}
        out.update(fmt(user_content(word, texts[d] if in_prompt else None), answer))
        return out

    return TaskData(example, None, texts, names, [None] * len(names))


@register_evaluator("t2l", "toy_strings")
def t2l_toy_strings_eval(method, trainable, frozen, workdir):
    from hyperlora_jax.toy.eval_strings import evaluate_t2l_run
    return evaluate_t2l_run(method, trainable, workdir)


@register_evaluator("lora", "toy_strings")
def lora_toy_strings_eval(method, params, frozen, workdir):
    """{task: accuracy} (or {"all": accuracy}) on ``eval.n`` words per task; None when ``eval.n`` is 0."""
    n = int(method.config.get("eval", {}).get("n", 0) or 0)
    if not n:
        return None
    from hyperlora_jax.toy.eval_strings import quick_bank_check
    return quick_bank_check(method, params, n)
