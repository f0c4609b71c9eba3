"""Toy string tasks for Text-to-LoRA: 40 deterministic transformations of short lowercase words, each with 10
hand-written paraphrased descriptions.

The tasks factor into 21 *plain* transformations (``PLAIN_TASKS``: reverse, sort, hashtag, leetspeak, ...) and a
*capital letters* modifier: ``upper`` (the word in capitals) and 18 ``upper_<plain>`` tasks (the plain answer in
capitals). Each plain task has its own salient vocabulary (its descriptions all talk about "backwards", or
"alphabetical", or "hashtag", ...), so that a small sentence encoder (all-MiniLM-L6-v2) separates the tasks by their
descriptions: a toy world where the task *description* is informative, as it is for Text-to-LoRA's real tasks. (An
earlier set with near-twin tasks — rotate left / right, drop / keep the vowels, first / last letter — was not:
MiniLM put their paraphrases on top of each other.) The descriptions were edited until a logistic regression
on their MiniLM embeddings, trained on 9 descriptions per training task, named the 10th 99.7 % of the time,
every slot taking its turn (the held-out slots included: seen while writing, never while training).

Descriptions: 10 per plain task and for ``upper``; ``upper_<x>``'s k-th description is ``<x>``'s k-th description
combined with the k-th capital-letters clause of ``CAPS_CLAUSES`` (e.g. "Write the word backwards. Use uppercase
letters only."), so a held-out description of a training task is unseen in both of its parts.

A word is 3-6 lowercase ASCII letters with at least one vowel and one consonant (so that every task has a
non-empty answer); every character the character tokenizer of ``hyperlora_jax.tiny`` encodes. Examples are pure
functions of (seed, index): ``make_word(seed, index)`` and ``example(task, seed, index) -> (word, answer)``.

Splits (fixed, documented by ``HELDOUT_TASKS`` and ``N_HELDOUT_DESCRIPTIONS``):
  * 6 whole tasks are held out (``HELDOUT_TASKS``): unseen combinations of a plain transformation T2L trains on
    and the capital-letters modifier it trains on with 13 other transformations (e.g. ``upper_reverse``);
  * of each of the 34 training tasks, the last ``N_HELDOUT_DESCRIPTIONS`` descriptions are held out
    (``train_descriptions`` / ``heldout_descriptions``).

``task_tag(task)`` is the factorised tag the string base is pretrained with (``"07:"`` for plain task 7,
``"U07:"`` for its capital-letters version; toy/string_sources.py).
"""
from __future__ import annotations

import os
import string

import numpy as np

VOWELS = "aeiou"
MIN_LEN, MAX_LEN = 3, 6
_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"})


def _dedupe(w: str) -> str:
    return "".join(dict.fromkeys(w))


def _caesar(w: str) -> str:
    return "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in w)


PLAIN_FUNCTIONS: dict = {
    "copy": lambda w: w,
    "reverse": lambda w: w[::-1],
    "sort": lambda w: "".join(sorted(w)),
    "double": lambda w: f"{w} {w}",
    "first_letter": lambda w: w[0],
    "length": lambda w: str(len(w)),
    "spaced": lambda w: " ".join(w),
    "caesar": _caesar,
    "mirror": lambda w: w + w[::-1],
    "dedupe": _dedupe,
    "drop_vowels": lambda w: "".join(c for c in w if c not in VOWELS),
    "vowel_star": lambda w: "".join("*" if c in VOWELS else c for c in w),
    "parens": lambda w: f"({w})",
    "exclaim": lambda w: w + "!",
    "ing": lambda w: w + "ing",
    "hashtag": lambda w: "#" + w,
    "plural": lambda w: w + "s",
    "half": lambda w: w[:(len(w) + 1) // 2],
    "dotcom": lambda w: w + ".com",
    "leet": lambda w: w.translate(_LEET),
    "hello": lambda w: "hello " + w,
}
PLAIN_TASKS: tuple = tuple(PLAIN_FUNCTIONS)
# plain tasks without a capital-letters version: copy's is ``upper``; length's answer is a digit; hello's is left out
# to keep 40 tasks
_NO_UPPER = ("copy", "length", "hello")


def _up(f):
    return lambda w: f(w).upper()


TASK_FUNCTIONS: dict = dict(PLAIN_FUNCTIONS)
TASK_FUNCTIONS["upper"] = lambda w: w.upper()
for _name in PLAIN_TASKS:
    if _name not in _NO_UPPER:
        TASK_FUNCTIONS[f"upper_{_name}"] = _up(PLAIN_FUNCTIONS[_name])
TASK_NAMES: tuple = tuple(TASK_FUNCTIONS)
HELDOUT_TASKS = ("upper_reverse", "upper_sort", "upper_double", "upper_drop_vowels", "upper_hashtag", "upper_dotcom")
TRAIN_TASKS = tuple(t for t in TASK_NAMES if t not in HELDOUT_TASKS)
N_HELDOUT_DESCRIPTIONS = 2

# Adapters of the toy world (oracle / multi-task LoRAs and T2L's generated ones): rank, alpha (scale alpha / r),
# target modules of the string base model.
LORA_RANK, LORA_ALPHA, LORA_TARGET_MODULES = 4, 8.0, ("q_proj", "v_proj", "down_proj")


def task_tag(task: str) -> str:
    """The string base's pretraining tag of ``task``: ``"NN:"`` (NN = index into PLAIN_TASKS) for a plain task,
    ``"UNN:"`` for its capital-letters version (``upper`` is ``"U00:"``, the capitals of ``copy``)."""
    if task not in TASK_FUNCTIONS:
        raise ValueError(f"unknown string task {task!r} (known: {', '.join(TASK_NAMES)})")
    if task == "upper":
        return "U00:"
    if task.startswith("upper_"):
        return f"U{PLAIN_TASKS.index(task[len('upper_'):]):02d}:"
    return f"{PLAIN_TASKS.index(task):02d}:"


def make_word(seed: int, index: int) -> str:
    """The word of example ``index`` under ``seed``: 3-6 letters, >= 1 vowel and >= 1 consonant."""
    rng = np.random.default_rng([int(seed), int(index), 17])
    while True:
        n = int(rng.integers(MIN_LEN, MAX_LEN + 1))
        w = "".join(rng.choice(list(string.ascii_lowercase), n))
        if any(c in VOWELS for c in w) and any(c not in VOWELS for c in w):
            return w


def apply_task(task: str, word: str) -> str:
    """The answer of ``task`` on ``word``; an unknown task or a word outside [a-z]{3,6} is a ValueError."""
    if task not in TASK_FUNCTIONS:
        raise ValueError(f"unknown string task {task!r} (known: {', '.join(TASK_NAMES)})")
    if not (MIN_LEN <= len(word) <= MAX_LEN and all(c in string.ascii_lowercase for c in word)):
        raise ValueError(f"a toy string-task word is {MIN_LEN}-{MAX_LEN} lowercase letters, got {word!r}")
    return TASK_FUNCTIONS[task](word)


def example(task: str, seed: int, index: int) -> tuple[str, str]:
    """(word, answer) of example ``index`` of ``task`` under ``seed``."""
    w = make_word(seed, index)
    return w, apply_task(task, w)


# Hand-written paraphrases, 10 per plain task (and for ``upper``). For training tasks the last
# N_HELDOUT_DESCRIPTIONS are held out.
PLAIN_DESCRIPTIONS: dict = {
    "copy": (
        "Repeat the word exactly as it is given.",
        "Copy the word without changing anything.",
        "Echo the word back unchanged.",
        "Return the same word, unchanged.",
        "Write the word again exactly, unchanged.",
        "Output an identical copy of the word.",
        "Leave the word unchanged and answer with it.",
        "Give back the word exactly as you received it.",
        "Answer with an exact copy of the input word.",
        "Simply echo the same word back, with no change.",
    ),
    "reverse": (
        "Reverse the order of the letters in the word.",
        "Write the word backwards.",
        "Spell the word backwards, from its end to its start.",
        "Return the word reversed.",
        "Give the word with its letters in reverse order.",
        "Read the word backwards and write what you read.",
        "Output the reversed spelling of the word.",
        "Turn the word around so that it is written backwards.",
        "Answer with the word spelled in reverse.",
        "Produce the input written backwards.",
    ),
    "sort": (
        "Sort the letters of the word in alphabetical order.",
        "Arrange the word's letters alphabetically.",
        "Alphabetize the letters of the word.",
        "Put the letters in alphabetical order, from a to z.",
        "Rewrite the word with its letters sorted alphabetically.",
        "Return the letters of the word sorted from a to z.",
        "Order the characters of the word alphabetically.",
        "Give the word's letters rearranged in alphabetical order.",
        "Answer with the letters of the input sorted into alphabetical order.",
        "List the word's letters alphabetically as one string.",
    ),
    "double": (
        "Write the word twice, separated by a space.",
        "Repeat the word two times with a space in between.",
        "Say the word twice.",
        "Give the word two times, separated by a space.",
        "Output the word, a space, and the word again.",
        "Return the word written two times.",
        "Duplicate the whole word: write it twice with a space.",
        "Answer with the word repeated twice.",
        "Write the input word two times in a row, spaced apart.",
        "Produce the word twice, with one space between the two.",
    ),
    "first_letter": (
        "Give the first letter of the word.",
        "Answer with only the first letter.",
        "Return the initial letter of the word.",
        "Write just the first letter of the word.",
        "Output the word's first letter and nothing else.",
        "What is the first letter of the word?",
        "Reply with the initial letter of the word, the first one.",
        "Keep only the first letter of the word.",
        "Tell me the first letter the word starts with.",
        "Extract the initial letter of the input.",
    ),
    "length": (
        "Count the letters in the word and answer with the number.",
        "How many letters does the word have?",
        "Return the length of the word as a count of letters.",
        "Give the number of characters in the word.",
        "Answer with the word's length as a number.",
        "Count how many letters the word contains.",
        "Output the letter count of the word.",
        "Reply with how long the word is, in letters.",
        "Tell me the number of letters in the input.",
        "What is the length of this word? Answer with a digit.",
    ),
    "spaced": (
        "Put a space between every two letters of the word.",
        "Spell the word out with spaces between the letters.",
        "Separate the letters of the word with spaces.",
        "Write the letters of the word one by one, separated by spaces.",
        "Insert a space between consecutive letters.",
        "Space out the letters of the word.",
        "Return the word with a space after each letter except the last.",
        "Output the letters of the word spaced apart.",
        "Answer with the word's letters divided by single spaces.",
        "Spread the letters of the input apart with spaces.",
    ),
    "caesar": (
        "Shift every letter one step forward in the alphabet.",
        "Replace each letter with the next letter of the alphabet, z becoming a.",
        "Apply a Caesar cipher with a shift of one.",
        "Encode the word by moving each letter to the next one in the alphabet.",
        "Advance every letter of the word by one alphabet position.",
        "Substitute each letter with its successor in the alphabet.",
        "Return the word with a becoming b, b becoming c, and so on through the alphabet.",
        "Encrypt the word with a Caesar shift of one letter.",
        "Change each letter into the letter that follows it in the alphabet.",
        "Answer with the word after a one-letter Caesar shift.",
    ),
    "mirror": (
        "Write the word followed by its reverse, making a palindrome.",
        "Turn the word into a palindrome by appending it backwards.",
        "Make a palindrome: the word, then the word reversed.",
        "Append the reversed word to the word itself to form a palindrome.",
        "Build a palindrome from the word by adding its reverse after it.",
        "Give the palindrome formed by the word and its mirror image.",
        "Extend the word with its backwards spelling into a palindrome.",
        "Output the word and its reversal joined into a palindrome.",
        "Answer with a palindrome made of the input followed by the input backwards.",
        "Create a palindrome by gluing the word to its reversed form.",
    ),
    "dedupe": (
        "Remove repeated letters, keeping the first occurrence of each.",
        "Delete duplicate letters from the word.",
        "Write each distinct letter of the word once, in order.",
        "Return the word without any duplicate letters.",
        "Keep only the first appearance of every letter, dropping duplicates.",
        "Drop letters that already appeared earlier in the word.",
        "Output the unique letters of the word in their original order.",
        "Eliminate duplicates so that every letter occurs only once.",
        "Give the word with its repeated letters removed.",
        "Answer with the input after deleting every duplicate letter.",
    ),
    "drop_vowels": (
        "Remove all vowels from the word.",
        "Keep only the consonants of the word.",
        "Write the word without its vowels, consonants only.",
        "Delete every vowel and return the consonants.",
        "Strip the vowels a, e, i, o, u from the word.",
        "Return the consonants of the word in their original order.",
        "Output the word with all vowels removed.",
        "Erase the vowels, leaving only consonants.",
        "Answer with just the consonants of the input.",
        "Give the word once its vowels have been deleted.",
    ),
    "vowel_star": (
        "Replace every vowel in the word with an asterisk.",
        "Write the word with each vowel turned into a star (*).",
        "Swap all vowels for asterisks.",
        "Mask the vowels of the word with * symbols.",
        "Return the word where a, e, i, o and u become asterisks.",
        "Put an asterisk in place of each vowel.",
        "Hide the vowels behind stars, keeping the other letters.",
        "Change every vowel to the * character.",
        "Answer with the word, its vowels replaced by asterisks.",
        "Substitute a star symbol for each vowel of the input.",
    ),
    "parens": (
        "Put the word in parentheses.",
        "Wrap the word in round brackets.",
        "Enclose the word between parentheses ( and ).",
        "Write the word inside parentheses.",
        "Surround the word with an opening and a closing parenthesis.",
        "Return the word in brackets, like (word).",
        "Place parentheses around the word.",
        "Output the word enclosed in round brackets.",
        "Answer with the input put between parentheses.",
        "Bracket the word with ( in front and ) after it.",
    ),
    "exclaim": (
        "Add an exclamation mark after the word.",
        "Write the word followed by an exclamation point.",
        "Exclaim the word: put ! at its end.",
        "Append an exclamation mark to the word.",
        "Return the word with a ! after it.",
        "End the word with an exclamation point.",
        "Say the word with excitement, adding an exclamation mark.",
        "Output the word and then an exclamation mark.",
        "Answer with the input plus a trailing exclamation point.",
        "Put an exclamation mark right after the word.",
    ),
    "ing": (
        "Add the suffix ing to the word.",
        "Append ing to the end of the word.",
        "Write the word followed by the ending ing.",
        "Put -ing after the word, like an English gerund.",
        "Return the word with ing attached at the end.",
        "Turn the word into an -ing form by adding ing.",
        "End the word with the ending ing.",
        "Output the word plus the suffix -ing.",
        "Answer with the input followed by ing.",
        "Attach the ending -ing to the word, without changing it.",
    ),
    "hashtag": (
        "Turn the word into a hashtag.",
        "Put a # sign in front of the word.",
        "Write the word as a hashtag, like #word.",
        "Prefix the word with the hash symbol #.",
        "Make a social media hashtag out of the word.",
        "Return the word with a hashtag symbol before it.",
        "Add # at the start of the word.",
        "Tag the word with a leading # character.",
        "Answer with the input written as a hashtag.",
        "Place the hash sign # right before the word.",
    ),
    "plural": (
        "Make the word plural by adding an s.",
        "Write the plural of the word: append the letter s.",
        "Add an s to the end of the word to make it plural.",
        "Return the plural form, the word followed by s.",
        "Pluralize the word by appending s.",
        "Give the word with an s attached, as a plural.",
        "Form the plural by putting s after the word.",
        "Output the word plus a final s, to mean more than one.",
        "Answer with the plural of the input, made by adding s.",
        "Turn the word into its plural with a trailing s.",
    ),
    "half": (
        "Give the first half of the word, rounding up.",
        "Cut the word in half and keep the front half.",
        "Return the front half of the word's letters.",
        "Write only the first half of the word.",
        "Keep half of the letters, the front half, with the middle letter for odd lengths.",
        "Output the half of the word that comes first.",
        "Halve the word and answer with its beginning half.",
        "Split the word into two halves and return the first one.",
        "Answer with the front half of the input, rounded up.",
        "Take half of the word, starting from the front.",
    ),
    "dotcom": (
        "Turn the word into a web address by adding .com.",
        "Append .com to the word.",
        "Write the word as a website domain ending in .com.",
        "Make a dot-com domain name out of the word.",
        "Return the word followed by .com.",
        "Add the domain ending .com after the word.",
        "Give the web domain made of the word and .com.",
        "Output the word as the name of a .com website.",
        "Answer with the input turned into a .com domain.",
        "Form a website address from the word by attaching .com.",
    ),
    "leet": (
        "Write the word in leetspeak.",
        "Convert the word to leet, with digits replacing the letters a, e, i, o, s and t.",
        "Translate the word into hacker-style leetspeak.",
        "Use leetspeak digits for letters: a as 4, e as 3, o as 0, and so on.",
        "Return the leet version of the word.",
        "Encode the word in 1337 leetspeak.",
        "Spell the word the leetspeak way, numbers standing in for some letters.",
        "Rewrite the word in leet, like h4ck3r.",
        "Answer with the input translated into leetspeak.",
        "Turn the word into leet speak by swapping certain letters for look-alike digits.",
    ),
    "hello": (
        "Greet the word: say hello followed by the word.",
        "Answer with hello and then the word.",
        "Write hello, a space, and the word.",
        "Say hello to the word.",
        "Put the greeting hello in front of the word.",
        "Return hello followed by the word.",
        "Prefix the word with the greeting hello and a space.",
        "Output a greeting: hello, then the word.",
        "Respond by saying hello and the input word.",
        "Greet with hello before repeating the word.",
    ),
}
UPPER_DESCRIPTIONS = (
    "Write the word in capital letters.",
    "Convert the word to uppercase.",
    "Rewrite the word in all caps.",
    "Make every letter of the word uppercase.",
    "Return the word in upper case letters.",
    "Change all the letters to capitals.",
    "Spell the word using only uppercase letters.",
    "Put the whole word in block capitals.",
    "Answer with the same word written in capital letters.",
    "Answer with the word fully uppercased.",
)
# The k-th description of upper_<x> puts the k-th clause around <x>'s k-th description: "{D}" is it as written,
# "{d}" with a lowercase first letter.
CAPS_CLAUSES = (
    "{D} Write the result in capital letters, all uppercase.",
    "{D} Use uppercase capital letters only.",
    "In all caps, with capital letters: {d}",
    "{D} Answer in upper case, every letter a capital.",
    "Using capital letters in uppercase, {d}",
    "{D} Every letter of the answer must be an uppercase capital.",
    "{D} Capitalize every letter of the result, all caps.",
    "In block capitals, all uppercase: {d}",
    "{D} Give the answer in uppercase, all capital letters.",
    "In capitals only: {d} Use upper case.",
)


def _with_caps(description: str, k: int) -> str:
    return CAPS_CLAUSES[k].format(D=description, d=description[0].lower() + description[1:])


DESCRIPTIONS: dict = dict(PLAIN_DESCRIPTIONS)
DESCRIPTIONS["upper"] = UPPER_DESCRIPTIONS
for _name in TASK_NAMES:
    if _name.startswith("upper_"):
        DESCRIPTIONS[_name] = tuple(_with_caps(d, k) for k, d in enumerate(PLAIN_DESCRIPTIONS[_name[len("upper_"):]]))


def train_descriptions(task: str) -> tuple:
    """Descriptions T2L trains on: all but the last N_HELDOUT_DESCRIPTIONS of a training task (a held-out task
    has none)."""
    if task in HELDOUT_TASKS:
        return ()
    return DESCRIPTIONS[task][:len(DESCRIPTIONS[task]) - N_HELDOUT_DESCRIPTIONS]


def heldout_descriptions(task: str) -> tuple:
    """Descriptions evaluated and never trained on: the last N_HELDOUT_DESCRIPTIONS of a training task, all of a
    held-out task's."""
    if task in HELDOUT_TASKS:
        return DESCRIPTIONS[task]
    return DESCRIPTIONS[task][len(DESCRIPTIONS[task]) - N_HELDOUT_DESCRIPTIONS:]


def _check():
    missing = [t for t in TASK_NAMES if t not in DESCRIPTIONS or len(set(DESCRIPTIONS[t])) < 10]
    if missing or set(DESCRIPTIONS) != set(TASK_NAMES):
        raise AssertionError(f"string tasks without 10 distinct descriptions: {missing}")


_check()


# ============================================================================================ shipped checkpoints
def _asset(*parts: str, marker: str) -> str:
    from hyperlora_jax.packaged import ASSETS
    path = os.path.join(ASSETS, *parts)
    if not os.path.isfile(os.path.join(path, marker)):
        raise FileNotFoundError(f"{path} is missing from the package (or lacks {marker}); reinstall hyperlora_jax")
    return path


def strings_base_dir() -> str:
    """The string-task base model, HF layout (reproduced by configs/toy_base.py:strings)."""
    return _asset("toy_strings_base", marker="config.json")


def oracle_lora_dir(task: str | None = None) -> str:
    """The per-task oracle LoRAs (PEFT dirs, one per task of TASK_NAMES; configs/toy_strings_lora.py:oracle):
    the directory holding them, or the one of ``task``."""
    if task is None:
        return _asset("toy_strings_loras", "oracle", TASK_NAMES[0], marker="adapter_config.json").rsplit(os.sep, 1)[0]
    if task not in TASK_FUNCTIONS:
        raise ValueError(f"unknown string task {task!r}")
    return _asset("toy_strings_loras", "oracle", task, marker="adapter_config.json")


def multitask_lora_dir() -> str:
    """The multi-task LoRA (PEFT dir; configs/toy_strings_lora.py:multitask): trained on the training tasks with
    the (training) description in the user turn before the word."""
    return _asset("toy_strings_loras", "multitask", marker="adapter_config.json")
