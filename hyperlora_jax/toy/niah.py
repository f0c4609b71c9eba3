"""Toy needle-in-a-haystack documents for the character-level toy world.

A document is a haystack of short filler sentences built from a small word list with one needle sentence
``the magic number is NNNN.`` inserted at a random sentence boundary. The question is ``what is the magic number?``
and the answer the digits. Every example is a pure function of (seed, index), and its length is measured in the
character tokenizer's tokens (= characters), so lengths are exact.
"""
from __future__ import annotations

import dataclasses

import numpy as np

WORDS = ("the sky was grey and the river ran slow past old stone walls where moss grew thick "
         "a small bird sang near the quiet farm while cold wind moved dry leaves over the hill "
         "people walked along the road to the market with bread fish and warm tea in baskets "
         "light rain fell on green fields and tall trees bent under heavy clouds at dusk").split()
QUESTION = "magic number?"


@dataclasses.dataclass(frozen=True)
class NiahExample:
    document: str
    answer: str
    depth: float          # relative position of the needle in the document, 0..1
    question: str = QUESTION


def needle(number: str) -> str:
    return f"the magic number is {number}."


def make_example(seed: int, index: int, length: int, digits: int = 4) -> NiahExample:
    """A document of exactly ``length`` characters (>= the needle) with the needle at a random sentence boundary."""
    rng = np.random.default_rng([seed, index, length])
    number = "".join(str(d) for d in rng.integers(0, 10, digits))
    pin = needle(number)
    if length < len(pin):
        raise ValueError(f"a toy NIAH document needs at least {len(pin)} characters, asked for {length}")
    sentences, total = [], 0
    while total < length - len(pin):
        n = int(rng.integers(3, 8))
        s = " ".join(rng.choice(WORDS, n)) + "."
        sentences.append(s)
        total += len(s) + 1
    pos = int(rng.integers(0, len(sentences) + 1))
    parts = sentences[:pos] + [pin] + sentences[pos:]
    text = " ".join(parts)
    # trim haystack characters (never the needle) to hit the exact length
    start = len(" ".join(parts[:pos])) + (1 if pos else 0)
    excess = len(text) - length
    if excess > 0:
        after = text[start + len(pin):]
        cut_after = min(excess, len(after))
        after = after[:len(after) - cut_after]
        before = text[:start]
        before = before[excess - cut_after:]
        text = before + pin + after
        start = len(before)
    return NiahExample(document=text, answer=number, depth=start / max(length - len(pin), 1))
