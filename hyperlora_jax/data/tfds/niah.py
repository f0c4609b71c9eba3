"""NIAH "magic number" contexts (D2L spec 11.3), generated locally from a seed.

An example with k blocks has k−1 copies of the noise block and one needle sentence ("The special magic number is
dddd.") at an index drawn uniformly from depth bin b (``[floor(k·b/10), ceil(k·(b+1)/10) − 1]``), blocks joined with
"\\n"; examples are spread evenly over the 10 depth bins. A token bin [lo, hi) covers every block count k whose
measured length lies in [lo, hi), measured in the *target* tokenizer on the raw context (special tokens included), as
the reference does; without a tokenizer a fixed tokens-per-block heuristic is used. Lengths, counts, texts and seed
are config fields so the toy world can use short contexts.

Splits per token bin: ``train_{lo}_{hi}`` (only when hi ≤ ``train_max_hi``), ``validation_{lo}_{hi}``,
``test_{lo}_{hi}``. Records: context, prompt, response, num_blocks, depth_bin, needle_index, num_tokens (the bin's
measured length for k blocks). Differences from the reference: each split has its own RNG stream
(``numpy.random.default_rng([seed, lo, hi, split])``) instead of one global ``random`` sequence, so the realised
numbers differ while the distribution is the same.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow_datasets as tfds

from hyperlora_jax.data.tfds.common import tensor, text_feature

NOISE_BLOCK = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The special magic number is {magic_number}."
PROMPT = "What is the special magic number? Reply with only the number."
REFERENCE_BINS = ((32, 128), (128, 256), (256, 512), (512, 1024), (32, 1024)) \
    + tuple((1024 * i, 1024 * (i + 1)) for i in range(1, 16)) \
    + tuple((2 ** 14 + 2 ** 12 * i, 2 ** 14 + 2 ** 12 * (i + 1)) for i in range(4)) \
    + tuple((2 ** 15 + 2 ** 13 * i, 2 ** 15 + 2 ** 13 * (i + 1)) for i in range(12))
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass(eq=False)
class NiahConfig(tfds.core.BuilderConfig):
    tokenizer_dir: str | None = None       # local HF tokenizer directory; None → tokens_per_block heuristic
    bins: tuple = ((32, 128), (128, 256))  # token bins [lo, hi)
    train_max_hi: int = 1024               # training splits only for bins with hi ≤ this
    train_per_bin: int = 320_000           # training examples per bin, spread evenly over its k values
    val_per_bin: int = 1000
    test_per_bin: int = 1000
    seed: int = 42
    noise_block: str = NOISE_BLOCK
    needle: str = NEEDLE
    prompt: str = PROMPT
    sep: str = "\n"
    digits: int = 4
    tokens_per_block: int = 40


def depth_position(total_blocks: int, depth_bin: int, rng: np.random.Generator) -> int:
    """Needle index for depth bin ``depth_bin`` ∈ 0..9 among ``total_blocks`` blocks."""
    if total_blocks <= 1:
        return 0
    lo = math.floor(total_blocks * depth_bin / 10)
    hi = math.ceil(total_blocks * (depth_bin + 1) / 10) - 1
    lo = max(0, min(lo, total_blocks - 1))
    hi = max(lo, min(hi, total_blocks - 1))
    return int(rng.integers(lo, hi + 1))


def make_example(cfg: NiahConfig, k: int, depth_bin: int, rng: np.random.Generator) -> dict:
    k = max(1, k)
    magic = f"{int(rng.integers(0, 10 ** cfg.digits)):0{cfg.digits}d}"
    at = depth_position(k, depth_bin, rng)
    blocks = [cfg.noise_block] * (k - 1)
    blocks.insert(at, cfg.needle.format(magic_number=magic))
    return {"context": cfg.sep.join(blocks), "prompt": cfg.prompt, "response": magic, "num_blocks": k,
            "depth_bin": depth_bin, "needle_index": at}


def examples_for_k(cfg: NiahConfig, n: int, k: int, rng: np.random.Generator) -> list[dict]:
    """n examples with k blocks, spread evenly over the 10 depth bins, shuffled."""
    counts = [n // 10 + (1 if b < n % 10 else 0) for b in range(10)]
    out = [make_example(cfg, k, b, rng) for b, c in enumerate(counts) for _ in range(c)]
    return [out[i] for i in rng.permutation(len(out))]


def measured_lengths(cfg: NiahConfig, max_hi: int) -> list[int]:
    """lengths[k] = token count of a k-block context (needle last, number 0…0); lengths[0] = 0."""
    if cfg.tokenizer_dir is None:
        return [0] + [cfg.tokens_per_block * k for k in range(1, max_hi // cfg.tokens_per_block + 2)]
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(cfg.tokenizer_dir)
    needle = cfg.needle.format(magic_number="0" * cfg.digits)
    lengths, k = [0], 1
    while True:
        n = len(tok(cfg.sep.join([cfg.noise_block] * (k - 1) + [needle]))["input_ids"])
        lengths.append(n)
        if n >= max_hi:
            return lengths
        k += 1


def block_range(lengths: list[int], lo: int, hi: int) -> range:
    """Block counts k whose measured length lies in [lo, hi)."""
    return range(0) if not lengths else range(
        next((k for k in range(1, len(lengths)) if lengths[k] >= lo), len(lengths)),
        next((k for k in range(1, len(lengths)) if lengths[k] >= hi), len(lengths)))


def spread(total: int, n: int) -> list[int]:
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


class Niah(tfds.core.GeneratorBasedBuilder):
    """Needle-in-a-haystack magic-number contexts (D2L NIAH experiment)."""

    name = "niah"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIG_CLASS = NiahConfig
    BUILDER_CONFIGS = [
        NiahConfig(name="reference", description="reference bins 32-128 and 128-256; needs tokenizer_dir for the "
                   "reference's Gemma-2 measurement, otherwise 40 tokens per block"),
        NiahConfig(name="toy", bins=((16, 64), (64, 160)), train_per_bin=2000, val_per_bin=100, test_per_bin=100,
                   noise_block="Grass is green.", needle="Magic number is {magic_number}.",
                   prompt="What is the magic number?", tokens_per_block=4,
                   description="short contexts for the toy world (heuristic lengths unless tokenizer_dir is set)"),
    ]

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "context": text_feature(), "prompt": text_feature(), "response": text_feature(),
                "num_blocks": tensor((), np.int32), "depth_bin": tensor((), np.int32),
                "needle_index": tensor((), np.int32), "num_tokens": tensor((), np.int32),
            }),
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        lengths = measured_lengths(cfg, max(hi for _, hi in cfg.bins))
        self.info.metadata["lengths"] = lengths
        gens = {}
        for lo, hi in cfg.bins:
            ks = block_range(lengths, lo, hi)
            if not len(ks):
                self.info.metadata.setdefault("empty_bins", []).append([lo, hi])
                continue
            plan = {"validation": spread(cfg.val_per_bin, len(ks)), "test": spread(cfg.test_per_bin, len(ks))}
            if hi <= cfg.train_max_hi:
                plan["train"] = [max(1, cfg.train_per_bin // len(ks))] * len(ks)
            for split, counts in plan.items():
                gens[f"{split}_{lo}_{hi}"] = self._generate_examples(split, lo, hi, list(ks), counts, lengths)
        return gens

    def _generate_examples(self, split, lo, hi, ks, counts, lengths):
        cfg = self.builder_config
        rng = np.random.default_rng([cfg.seed, lo, hi, SPLIT_IDS[split]])
        for k, n in zip(ks, counts):
            for i, ex in enumerate(examples_for_k(cfg, n, k, rng)):
                yield f"{k}_{i}", {**ex, "num_tokens": lengths[k]}
