"""T2L SFT tasks (Lots-of-LoRAs / Super-NaturalInstructions style) with several descriptions per task, from local files.

``tasks_dir`` holds one entry per task:

* a Super-NaturalInstructions task file ``<task>.json`` (``Definition: [str]``, ``Instances: [{input, output[]}]``,
  optional ``descriptions: [str]``), or
* a folder ``<task>/`` with data files (JSON / JSONL / parquet rows ``input, output[]`` as in the Hub
  ``Lots-of-LoRAs/taskNNN_*`` datasets, whose ``input`` is the full prompt "Definition: … Positive Example … Now
  complete the following example - Input: … Output:") and ``metadata.yaml`` / ``metadata.json`` with
  ``descriptions: [str]`` (the reference's ``tasks/lol_NNN/metadata.yaml``).

``descriptions_file`` (JSON ``{task: [str]}``) adds descriptions. Preprocessing follows T2L spec 7.1:
``task_def`` = definition + " Please complete the task without any explanation." (+ "\\nThe answer should be a
comma-separated list of possible completions." when there are several outputs), ``problem`` = the instance input,
``answer`` = ", ".join(outputs). At most ``max_per_task`` examples per task (reference ``train[:10000]``); tasks in
``val_tasks`` train on the first ``1 − val_fraction`` and validate on the rest (reference ``train[:90%]/[90%:]``).

Records: ``task, task_index, task_def, problem, answer``. Descriptions are per task, not per example:
``info.metadata["tasks"]`` (sorted names; ``task_index`` indexes it) and ``info.metadata["descriptions"]``
(``{task: [str]}``). Skipped rows are counted in ``info.metadata["skipped"][split]``.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from hyperlora_jax.data.tfds.common import BuildCounter, _BadRow, as_str_list, read_rows, tensor, text_feature

NO_EXPLANATION = " Please complete the task without any explanation."
MULTI_ANSWER = "\nThe answer should be a comma-separated list of possible completions."


@dataclasses.dataclass(eq=False)
class T2LTasksConfig(tfds.core.BuilderConfig):
    tasks_dir: str = ""
    descriptions_file: str | None = None
    max_per_task: int = 10_000
    val_tasks: tuple = ()
    val_fraction: float = 0.1


def parse_lol_input(text: str) -> tuple[str | None, str | None]:
    """(definition, problem) from a Lots-of-LoRAs ``input`` prompt; None where a marker is missing."""
    definition = problem = None
    if "Definition: " in text:
        definition = text.split("Definition: ", 1)[1].split("\n\nPositive Example", 1)[0]
    rest = text.split("Now complete the following example -", 1)
    if len(rest) == 2:
        after = rest[1].split("Input: ", 1)[-1]
        problem = after.split("\nOutput:", 1)[0]
    return definition, problem


def task_def_text(definition: str, n_outputs: int) -> str:
    return definition + NO_EXPLANATION + (MULTI_ANSWER if n_outputs > 1 else "")


def _load_meta(folder: str) -> dict:
    for name in ("metadata.yaml", "metadata.yml", "metadata.json"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            with open(p) as f:
                if name.endswith(".json"):
                    return json.load(f)
                import yaml
                return yaml.safe_load(f) or {}
    return {}


def discover(cfg: T2LTasksConfig) -> dict[str, dict]:
    """task -> {"rows": iterator factory, "definition": str | None, "descriptions": [str]}."""
    tasks = {}
    for entry in sorted(os.listdir(cfg.tasks_dir)):
        path = os.path.join(cfg.tasks_dir, entry)
        if os.path.isdir(path):
            meta = _load_meta(path)
            files = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if f.endswith((".jsonl", ".parquet")) or (f.endswith(".json") and f != "metadata.json"))
            tasks[entry] = {"files": files, "definition": None, "descriptions": list(meta.get("descriptions") or [])}
        elif entry.endswith(".json"):
            with open(path) as f:
                obj = json.load(f)
            if not isinstance(obj, dict) or "Instances" not in obj:
                continue
            d = obj.get("Definition")
            d = d[0] if isinstance(d, list) and d else d
            tasks[entry[:-5]] = {"instances": obj["Instances"], "definition": d if isinstance(d, str) else None,
                                 "descriptions": list(obj.get("descriptions") or [])}
    if cfg.descriptions_file:
        with open(cfg.descriptions_file) as f:
            for task, descs in json.load(f).items():
                if task in tasks:
                    tasks[task]["descriptions"] += list(descs)
    return tasks


class T2lTasks(tfds.core.GeneratorBasedBuilder):
    """Instruction tasks with per-task natural-language descriptions (T2L SFT)."""

    name = "t2l_tasks"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIG_CLASS = T2LTasksConfig
    BUILDER_CONFIGS = [T2LTasksConfig(name="default", description="pass tasks_dir= in a T2LTasksConfig")]

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "task": text_feature(), "task_index": tensor((), np.int32), "task_def": text_feature(),
                "problem": text_feature(), "answer": text_feature(),
            }),
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        if not cfg.tasks_dir or not os.path.isdir(cfg.tasks_dir):
            raise ValueError(f"t2l_tasks needs a local tasks_dir (got {cfg.tasks_dir!r})")
        tasks = discover(cfg)
        names = sorted(tasks)
        md = self.info.metadata
        md["tasks"] = names
        md["descriptions"] = {t: tasks[t]["descriptions"] for t in names}
        md["tasks_without_descriptions"] = [t for t in names if not tasks[t]["descriptions"]]
        rows = {t: self._task_rows(t, tasks[t], BuildCounter(self, "train")) for t in names}
        splits = {"train": self._generate_examples(names, rows, "train")}
        if cfg.val_tasks:
            splits["validation"] = self._generate_examples(names, rows, "validation")
        return splits

    def _task_rows(self, task, spec, counter):
        """Cached list of valid (task_def, problem, answer) of a task, at most max_per_task, in file order."""
        cache = []

        def load():
            if cache:
                return cache[0]
            out = []
            raw = spec.get("instances")
            if raw is None:
                raw = (r for f in spec["files"] for r in read_rows(f))
            for row in raw:
                if len(out) >= self.builder_config.max_per_task:
                    break
                if isinstance(row, _BadRow) or not isinstance(row, dict):
                    counter.add(f"{task}/malformed")
                    continue
                inp, outs = row.get("input"), as_str_list(row.get("output"))
                if row.get("output") is None or (outs is not None and not any(o.strip() for o in outs)):
                    counter.add(f"{task}/missing_answer")
                    continue
                if not isinstance(inp, str) or outs is None:
                    counter.add(f"{task}/non_text")
                    continue
                definition, problem = spec["definition"], inp
                if definition is None:
                    definition, problem = parse_lol_input(inp)
                if not definition or problem is None or not problem.strip():
                    counter.add(f"{task}/unparsable_input")
                    continue
                out.append((task_def_text(definition, len(outs)), problem, ", ".join(outs)))
            cache.append(out)
            return out
        return load

    def _generate_examples(self, names, rows, split):
        cfg = self.builder_config
        for ti, task in enumerate(names):
            items = rows[task]()
            lo, hi = 0, len(items)
            if task in cfg.val_tasks:
                cut = int(round(len(items) * (1 - cfg.val_fraction)))
                lo, hi = (0, cut) if split == "train" else (cut, len(items))
            elif split != "train":
                continue
            for j in range(lo, hi):
                task_def, problem, answer = items[j]
                yield f"{task}/{j}", {"task": task, "task_index": ti, "task_def": task_def, "problem": problem,
                                      "answer": answer}
