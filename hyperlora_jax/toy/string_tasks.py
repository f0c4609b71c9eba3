"""Toy string tasks for Text-to-LoRA: 40 deterministic transformations of short lowercase words, each with
hand-written paraphrased descriptions.

A word is 3-6 lowercase ASCII letters with at least one vowel and one consonant (so that every task has a
non-empty answer); every character the character tokenizer of ``hyperlora_jax.tiny`` encodes. Examples are pure
functions of (seed, index): ``make_word(seed, index)`` and ``example(task, seed, index) -> (word, answer)``.

Splits (fixed, documented by ``HELDOUT_TASKS`` and ``N_HELDOUT_DESCRIPTIONS``):
  * 6 whole tasks are held out (``HELDOUT_TASKS``): T2L never trains on them; they are mostly compositions whose
    parts are training tasks (e.g. ``upper_reverse`` = ``reverse`` then ``upper``);
  * of each of the 34 training tasks, the last ``N_HELDOUT_DESCRIPTIONS`` descriptions are held out
    (``train_descriptions`` / ``heldout_descriptions``).
"""
from __future__ import annotations

import os
import string

import numpy as np

VOWELS = "aeiou"
MIN_LEN, MAX_LEN = 3, 6


def _dedupe(w: str) -> str:
    return "".join(dict.fromkeys(w))


def _caesar(w: str) -> str:
    return "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in w)


def _up(f):
    return lambda w: f(w).upper()


_OPS = {
    "copy": lambda w: w,
    "reverse": lambda w: w[::-1],
    "sort": lambda w: "".join(sorted(w)),
    "sort_desc": lambda w: "".join(sorted(w, reverse=True)),
    "double": lambda w: f"{w} {w}",
    "first_letter": lambda w: w[0],
    "last_letter": lambda w: w[-1],
    "first_two": lambda w: w[:2],
    "last_two": lambda w: w[-2:],
    "drop_vowels": lambda w: "".join(c for c in w if c not in VOWELS),
    "vowels_only": lambda w: "".join(c for c in w if c in VOWELS),
    "rotate_left": lambda w: w[1:] + w[0],
    "rotate_right": lambda w: w[-1] + w[:-1],
    "length": lambda w: str(len(w)),
    "count_vowels": lambda w: str(sum(c in VOWELS for c in w)),
    "swap_ends": lambda w: w[-1] + w[1:-1] + w[0],
    "capitalize": lambda w: w[0].upper() + w[1:],
    "dedupe": _dedupe,
    "spaced": lambda w: " ".join(w),
    "stutter": lambda w: "".join(c + c for c in w),
    "caesar": _caesar,
    "drop_first": lambda w: w[1:],
    "drop_last": lambda w: w[:-1],
    "mirror": lambda w: w + w[::-1],
    "upper": lambda w: w.upper(),
    "ends": lambda w: w[0] + w[-1],
}
for _name in ("reverse", "sort", "double", "first_letter", "last_letter", "drop_vowels", "rotate_left", "spaced",
              "stutter", "mirror", "drop_first", "first_two", "caesar", "ends"):
    _OPS[f"upper_{_name}"] = _up(_OPS[_name])

TASK_FUNCTIONS: dict = dict(_OPS)
TASK_NAMES: tuple = tuple(TASK_FUNCTIONS)
HELDOUT_TASKS = ("upper_reverse", "upper_drop_vowels", "upper_last_letter", "upper_stutter", "sort_desc", "last_two")
TRAIN_TASKS = tuple(t for t in TASK_NAMES if t not in HELDOUT_TASKS)
N_HELDOUT_DESCRIPTIONS = 2

# Adapters of the toy world (oracle / multi-task LoRAs and T2L's generated ones): rank, alpha (scale alpha / r),
# target modules of the string base model.
LORA_RANK, LORA_ALPHA, LORA_TARGET_MODULES = 4, 8.0, ("q_proj", "v_proj", "down_proj")


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


# Hand-written paraphrases, 10 per task. For training tasks the last N_HELDOUT_DESCRIPTIONS are held out.
DESCRIPTIONS: dict = {
    "copy": (
        "Repeat the word exactly as it is given.",
        "Copy the input without changing anything.",
        "Answer with the very same word.",
        "Echo the given string back unchanged.",
        "Return the input word as is.",
        "Write the word again, identical to the input.",
        "Output the string with no modification at all.",
        "Reproduce the text you were given, letter for letter.",
        "Give back precisely the word you received.",
        "Just say the input word once more without altering it.",
    ),
    "reverse": (
        "Reverse the order of the letters in the word.",
        "Write the word backwards.",
        "Spell the input from its last letter to its first.",
        "Return the string reversed.",
        "Flip the word so it reads right to left.",
        "Output the characters of the word in reverse order.",
        "Read the word from the end and write what you read.",
        "Turn the word around, last character first.",
        "Give the mirror-order spelling of the input, ending with its first letter.",
        "Produce the input string read back to front.",
    ),
    "sort": (
        "Sort the letters of the word in alphabetical order.",
        "Arrange the characters from a to z.",
        "Rewrite the word with its letters alphabetized.",
        "Put the letters of the input in ascending alphabetical order.",
        "Order the word's characters as they appear in the alphabet.",
        "Return the letters sorted from smallest to largest.",
        "List every letter of the word, alphabetically arranged, as one string.",
        "Reorder the characters so that they are in dictionary order.",
        "Alphabetize the characters of the given string.",
        "Give the word's letters rearranged into a-to-z order.",
    ),
    "sort_desc": (
        "Sort the letters of the word in reverse alphabetical order.",
        "Arrange the characters from z down to a.",
        "Put the letters of the input in descending alphabetical order.",
        "Order the word's letters backwards through the alphabet.",
        "Return the characters sorted from largest to smallest.",
        "Rewrite the word with its letters in z-to-a order.",
        "Alphabetize the letters but in descending order.",
        "Sort the characters so the latest letter of the alphabet comes first.",
        "Give the letters of the word arranged in reverse dictionary order.",
        "List the word's characters from the end of the alphabet to the start.",
    ),
    "double": (
        "Write the word twice, separated by a space.",
        "Repeat the input two times with a space in between.",
        "Say the word and then say it again.",
        "Duplicate the word, putting a space between the copies.",
        "Output two copies of the given string separated by a blank.",
        "Answer with the word followed by a space and the same word.",
        "Give the input doubled: word, space, word.",
        "Echo the string two times in a row, spaced apart.",
        "Produce the word repeated once more after a space.",
        "Return the given word written two times with one space.",
    ),
    "first_letter": (
        "Give the first letter of the word.",
        "What is the initial character of the input?",
        "Answer with only the opening letter of the string.",
        "Return the character at the start of the word.",
        "Output just the leading letter.",
        "Write the letter the word begins with.",
        "Reply with the very first character of the given word.",
        "Extract the first character of the string.",
        "Tell me which letter starts the word.",
        "Keep only the beginning letter of the input and drop the rest.",
    ),
    "last_letter": (
        "Give the last letter of the word.",
        "What is the final character of the input?",
        "Answer with only the closing letter of the string.",
        "Return the character at the end of the word.",
        "Output just the trailing letter.",
        "Write the letter the word ends with.",
        "Reply with the very last character of the given word.",
        "Extract the final character of the string.",
        "Tell me which letter finishes the word.",
        "Keep only the ending letter of the input and drop the rest.",
    ),
    "first_two": (
        "Give the first two letters of the word.",
        "Return the opening pair of characters.",
        "Answer with the initial two characters of the input.",
        "Output the word's first two letters only.",
        "Keep the leading two letters and discard the rest.",
        "Write the two characters the word starts with.",
        "Extract a two-letter prefix from the string.",
        "Reply with the beginning two letters of the given word.",
        "Take just the first pair of letters of the input.",
        "Cut the word down to its first two characters.",
    ),
    "last_two": (
        "Give the last two letters of the word.",
        "Return the closing pair of characters.",
        "Answer with the final two characters of the input.",
        "Output the word's last two letters only.",
        "Keep the trailing two letters and discard the rest.",
        "Write the two characters the word ends with.",
        "Extract a two-letter suffix from the string.",
        "Reply with the ending two letters of the given word.",
        "Take just the final pair of letters of the input.",
        "Cut the word down to its last two characters.",
    ),
    "drop_vowels": (
        "Remove all vowels from the word.",
        "Delete every a, e, i, o and u from the input.",
        "Write the word without its vowels.",
        "Keep only the consonants of the string.",
        "Strip the vowels out and return what is left.",
        "Output the input with each vowel taken away.",
        "Return the consonants of the word in their original order.",
        "Erase the vowel letters from the given string.",
        "Drop the letters a, e, i, o, u and answer with the remaining ones.",
        "Give the word with all of its vowels omitted.",
    ),
    "vowels_only": (
        "Keep only the vowels of the word.",
        "Remove all consonants from the input.",
        "Write just the vowels of the string, in order.",
        "Return the letters a, e, i, o, u that appear in the word.",
        "Delete every consonant and answer with what remains.",
        "Output the vowel letters of the input only.",
        "Extract the vowels from the given word.",
        "Strip the consonants out of the string.",
        "Give the sequence of vowels found in the word.",
        "Answer with the input after throwing away every non-vowel letter.",
    ),
    "rotate_left": (
        "Move the first letter of the word to the end.",
        "Rotate the word left by one character.",
        "Take the opening letter and append it after the others.",
        "Shift every letter one place to the left, wrapping the first around to the back.",
        "Return the word starting from its second letter, with the first letter placed last.",
        "Cycle the string once to the left.",
        "Put the initial character at the end of the word.",
        "Perform a left rotation of the characters by one position.",
        "Send the leading letter to the back of the string.",
        "Rewrite the word so its first character becomes its last.",
    ),
    "rotate_right": (
        "Move the last letter of the word to the front.",
        "Rotate the word right by one character.",
        "Take the final letter and put it before the others.",
        "Shift every letter one place to the right, wrapping the last around to the front.",
        "Return the word beginning with its final letter followed by the rest.",
        "Cycle the string once to the right.",
        "Put the ending character at the start of the word.",
        "Perform a right rotation of the characters by one position.",
        "Bring the trailing letter to the beginning of the string.",
        "Rewrite the word so its last character becomes its first.",
    ),
    "length": (
        "Count the letters in the word and answer with the number.",
        "How many characters does the input have?",
        "Reply with the length of the given word.",
        "Return the number of letters in the string.",
        "Tell me how long the word is, as a digit.",
        "Output the character count of the input.",
        "Give the total number of characters in the word.",
        "Measure the word and write its length.",
        "Answer with a digit: the size of the string in letters.",
        "Say how many letters make up the word.",
    ),
    "count_vowels": (
        "Count the vowels in the word and answer with the number.",
        "How many vowels does the input contain?",
        "Reply with the number of a, e, i, o, u letters in the word.",
        "Return how many vowel characters the string has.",
        "Tell me the vowel count of the given word as a digit.",
        "Output the number of vowels found in the input.",
        "Give the total count of vowels in the word.",
        "Count only the vowel letters and write the result.",
        "Answer with a digit: how many vowels appear in the string.",
        "Say how many of the word's letters are vowels.",
    ),
    "swap_ends": (
        "Swap the first and last letters of the word.",
        "Exchange the opening and closing characters.",
        "Trade places between the initial and the final letter.",
        "Return the word with its first and last characters switched.",
        "Put the last letter first and the first letter last, keeping the middle.",
        "Interchange the two end letters of the string.",
        "Switch the letters at both ends of the input.",
        "Write the word after swapping its outermost characters.",
        "Keep the middle as is but exchange the beginning and ending letters.",
        "Flip only the first and the last character of the given word.",
    ),
    "capitalize": (
        "Capitalize the first letter of the word.",
        "Make only the initial letter upper case.",
        "Write the word with a capital first letter and the rest lower case.",
        "Turn the opening character into a capital.",
        "Return the word in title case.",
        "Uppercase just the first character of the input.",
        "Start the word with a capital letter.",
        "Give the string with its leading letter capitalized.",
        "Convert the first letter to upper case and leave the others alone.",
        "Answer with the word as it would be written at the start of a sentence.",
    ),
    "dedupe": (
        "Remove repeated letters, keeping the first occurrence of each.",
        "Write each distinct letter of the word once, in order of appearance.",
        "Delete duplicate characters from the input.",
        "Return the word without any letter repeated.",
        "Keep only the first time every letter appears.",
        "Drop letters that already occurred earlier in the string.",
        "Output the unique characters of the word in their original order.",
        "Eliminate the repeats so that no character shows up twice.",
        "Give the word with duplicated letters removed.",
        "Answer with each letter of the string a single time, first appearance kept.",
    ),
    "spaced": (
        "Put a space between every pair of letters.",
        "Spell the word out with spaces between the letters.",
        "Separate all characters of the input by single spaces.",
        "Write the letters of the word one by one, space separated.",
        "Insert a blank between consecutive characters.",
        "Return the string with its letters spread apart by spaces.",
        "Output each letter of the word followed by a space, except the last.",
        "Space out the characters of the given word.",
        "Give the word letter by letter with gaps in between.",
        "Answer with the input where neighbouring letters are divided by a space.",
    ),
    "stutter": (
        "Write every letter of the word twice.",
        "Double each character of the input.",
        "Repeat each letter two times in a row.",
        "Return the word with every character duplicated in place.",
        "Say each letter twice before moving on to the next.",
        "Output the string where all letters appear doubled.",
        "Make every character of the word occur two times consecutively.",
        "Duplicate the letters one by one, keeping their order.",
        "Give the word with each of its characters written twice.",
        "Answer with the input where every single letter is repeated once.",
    ),
    "caesar": (
        "Shift every letter one step forward in the alphabet.",
        "Replace each letter with the next letter of the alphabet, z becoming a.",
        "Apply a Caesar cipher with a shift of one.",
        "Move each character of the word up by one alphabet position.",
        "Encode the word by advancing all letters by one.",
        "Return the word with a becoming b, b becoming c, and so on.",
        "Substitute every letter with its successor in the alphabet.",
        "Increment each letter of the input by one place, wrapping around.",
        "Give the word rotated one letter forward through the alphabet.",
        "Answer with the string after a shift-by-one letter substitution.",
    ),
    "drop_first": (
        "Remove the first letter of the word.",
        "Delete the initial character of the input.",
        "Write the word without its opening letter.",
        "Return everything except the first character.",
        "Drop the leading letter and keep the rest.",
        "Output the string starting from its second letter.",
        "Cut off the beginning character of the word.",
        "Give the word minus its first letter.",
        "Strip away the letter the word starts with.",
        "Answer with all letters but the first one.",
    ),
    "drop_last": (
        "Remove the last letter of the word.",
        "Delete the final character of the input.",
        "Write the word without its closing letter.",
        "Return everything except the last character.",
        "Drop the trailing letter and keep the rest.",
        "Output the string up to but not including its final letter.",
        "Cut off the ending character of the word.",
        "Give the word minus its last letter.",
        "Strip away the letter the word ends with.",
        "Answer with all letters but the final one.",
    ),
    "mirror": (
        "Write the word followed by its reverse.",
        "Append the reversed word to the word itself.",
        "Make a palindrome by adding the word backwards after it.",
        "Return the input and then the same letters in reverse order, with no space.",
        "Output the string immediately followed by its mirror image.",
        "Concatenate the word with its backwards spelling.",
        "Give the word, then the word read from end to start, joined together.",
        "Extend the word with a reversed copy of itself.",
        "Answer with the input glued to its own reversal.",
        "Spell the word forwards and then backwards in one string.",
    ),
    "upper": (
        "Convert the word to upper case.",
        "Write the input in capital letters.",
        "Make every letter of the word uppercase.",
        "Return the string in all caps.",
        "Capitalize all the characters of the input.",
        "Output the word using only capital letters.",
        "Shout the word: every letter upper case.",
        "Rewrite the string with each letter turned into a capital.",
        "Give the uppercase version of the given word.",
        "Answer with the word in block capitals.",
    ),
    "ends": (
        "Give the first and the last letter of the word.",
        "Answer with the opening letter followed by the closing letter.",
        "Return only the two end characters of the input.",
        "Keep the initial and the final letter and drop the middle.",
        "Output the word's first character and then its last character.",
        "Write the letters at both ends of the string.",
        "Remove everything between the first and last letters.",
        "Reply with the starting letter and the ending letter together.",
        "Extract the outermost two characters of the word.",
        "Tell me the word's first and final letters as one string.",
    ),
    "upper_reverse": (
        "Reverse the word and write it in capital letters.",
        "Write the word backwards in upper case.",
        "Spell the input from last letter to first, all caps.",
        "Return the string reversed and uppercased.",
        "Flip the word so it reads right to left, using capital letters.",
        "Output the characters in reverse order, converted to upper case.",
        "Turn the word around and capitalize every letter.",
        "Give the uppercase version of the word read back to front.",
        "Make the word all caps and then reverse it.",
        "Answer with the input backwards, every letter a capital.",
    ),
    "upper_sort": (
        "Sort the letters alphabetically and write them in upper case.",
        "Arrange the characters from a to z, all in capitals.",
        "Alphabetize the word and make every letter uppercase.",
        "Return the letters in ascending order as capital letters.",
        "Put the characters in dictionary order and convert them to upper case.",
        "Output the sorted word in all caps.",
        "Give the uppercase letters of the word arranged alphabetically.",
        "Order the letters as in the alphabet and capitalize them all.",
        "Make the word all caps with its letters sorted from A to Z.",
        "Answer with the alphabetized input written in capital letters.",
    ),
    "upper_double": (
        "Write the word twice in capital letters, separated by a space.",
        "Repeat the input two times in upper case with a space between.",
        "Say the word in all caps and then say it again.",
        "Duplicate the uppercased word, putting a space between the copies.",
        "Output two uppercase copies of the string separated by a blank.",
        "Answer with the capitalized word, a space, and the capitalized word again.",
        "Give the input doubled and in all caps.",
        "Make the word uppercase and write it two times with a space.",
        "Convert the word to capitals and repeat it once more after a space.",
        "Return two space-separated copies of the word in upper case.",
    ),
    "upper_first_letter": (
        "Give the first letter of the word as a capital.",
        "Answer with the initial character in upper case.",
        "Return the opening letter of the string, capitalized.",
        "Output just the leading letter, written in upper case.",
        "Write the letter the word begins with as a capital letter.",
        "Reply with the first character of the input in uppercase.",
        "Extract the starting letter and make it upper case.",
        "Tell me which letter starts the word, in capitals.",
        "Keep only the beginning letter and convert it to uppercase.",
        "Say the word's first letter as an upper case letter.",
    ),
    "upper_last_letter": (
        "Give the last letter of the word as a capital.",
        "Answer with the final character in upper case.",
        "Return the closing letter of the string, capitalized.",
        "Output just the trailing letter, written in upper case.",
        "Write the letter the word ends with as a capital letter.",
        "Reply with the last character of the input in uppercase.",
        "Extract the ending letter and make it upper case.",
        "Tell me which letter finishes the word, in capitals.",
        "Keep only the final letter and convert it to uppercase.",
        "Say the word's last letter as an upper case letter.",
    ),
    "upper_drop_vowels": (
        "Remove the vowels and write the rest in capital letters.",
        "Delete every vowel and uppercase the remaining letters.",
        "Write the word without vowels, in all caps.",
        "Keep only the consonants, converted to upper case.",
        "Strip the vowels out and capitalize what is left.",
        "Output the consonants of the input as capital letters.",
        "Return the uppercase word with its vowels taken away.",
        "Erase a, e, i, o and u, then make the result all caps.",
        "Give the capitalized consonants of the word in their original order.",
        "Answer with the input in upper case minus all its vowels.",
    ),
    "upper_rotate_left": (
        "Move the first letter to the end and write the word in capitals.",
        "Rotate the word left by one character and uppercase it.",
        "Put the initial letter at the back and make everything upper case.",
        "Cycle the string once to the left, in all caps.",
        "Return the left-rotated word using capital letters.",
        "Send the leading letter to the end and convert the word to upper case.",
        "Shift the letters one place left, wrapping around, all uppercase.",
        "Give the word starting from its second letter with the first placed last, in capitals.",
        "Capitalize every letter and move the first one to the end.",
        "Answer with the word rotated one step left and written in upper case.",
    ),
    "upper_spaced": (
        "Spell the word out in capital letters with spaces between them.",
        "Separate the characters by spaces and make them upper case.",
        "Write the letters one by one in uppercase, space separated.",
        "Put a space between every pair of letters, all in caps.",
        "Return the capitalized word with its letters spread apart.",
        "Output each upper case letter of the word separated by a blank.",
        "Space out the characters of the input and capitalize them.",
        "Give the word letter by letter in capitals with gaps between.",
        "Convert to uppercase and insert a space between adjacent letters.",
        "Answer with the spaced-out letters of the word as capitals.",
    ),
    "upper_stutter": (
        "Write every letter of the word twice, in capital letters.",
        "Double each character and make everything upper case.",
        "Repeat each letter two times in a row, all caps.",
        "Return the uppercase word with every character duplicated in place.",
        "Say each letter twice as a capital before moving to the next.",
        "Output the string with doubled letters, converted to uppercase.",
        "Capitalize the word and write each of its letters two times.",
        "Give every character of the input twice, in upper case.",
        "Make all letters capitals and repeat each one consecutively.",
        "Answer with the input where each letter is doubled and uppercased.",
    ),
    "upper_mirror": (
        "Write the word followed by its reverse, all in capital letters.",
        "Append the reversed word to the word and uppercase everything.",
        "Make an uppercase palindrome by adding the word backwards after it.",
        "Return the input and its reversal joined together, in all caps.",
        "Output the string followed by its mirror image, capitalized.",
        "Concatenate the word with its backwards spelling, using upper case.",
        "Give the word and then the word from end to start, in capitals.",
        "Capitalize the word and extend it with a reversed copy of itself.",
        "Spell the word forwards then backwards as one string of capital letters.",
        "Answer with the all-caps input glued to its own reversal.",
    ),
    "upper_drop_first": (
        "Remove the first letter and write the rest in capital letters.",
        "Delete the initial character and uppercase the remainder.",
        "Write the word without its opening letter, in all caps.",
        "Return everything except the first character, capitalized.",
        "Drop the leading letter and convert the rest to upper case.",
        "Output the string from its second letter onward as capitals.",
        "Cut off the beginning character and make the word uppercase.",
        "Give the word minus its first letter, in upper case.",
        "Capitalize all letters except the first one, which you remove.",
        "Answer with all letters but the first, written as capitals.",
    ),
    "upper_first_two": (
        "Give the first two letters of the word in capital letters.",
        "Return the opening pair of characters in upper case.",
        "Answer with the initial two characters, capitalized.",
        "Output the word's first two letters only, all caps.",
        "Keep the leading two letters, make them uppercase, and discard the rest.",
        "Write the two characters the word starts with as capitals.",
        "Extract a two-letter prefix and convert it to upper case.",
        "Reply with the beginning two letters of the word in uppercase.",
        "Take just the first pair of letters and capitalize both.",
        "Cut the word to its first two characters written in capitals.",
    ),
    "upper_caesar": (
        "Shift every letter one step forward in the alphabet and write it in capitals.",
        "Replace each letter with the next one in the alphabet, all upper case.",
        "Apply a Caesar shift of one and uppercase the result.",
        "Move each character up by one alphabet position, as capital letters.",
        "Encode the word by advancing all letters by one, in all caps.",
        "Return the word with a becoming B, b becoming C, and so on.",
        "Substitute every letter with its capitalized successor in the alphabet.",
        "Increment each letter by one place, wrapping z to A, uppercase.",
        "Give the word rotated one letter forward through the alphabet, capitalized.",
        "Answer with the string after a shift-by-one cipher, in upper case.",
    ),
    "upper_ends": (
        "Give the first and the last letter of the word as capitals.",
        "Answer with the opening and closing letters in upper case.",
        "Return only the two end characters, capitalized.",
        "Keep the initial and the final letter, uppercase them, drop the middle.",
        "Output the word's first and last characters in all caps.",
        "Write the letters at both ends of the string as capital letters.",
        "Remove everything between the end letters and capitalize what remains.",
        "Reply with the starting and ending letters in uppercase.",
        "Extract the outermost two characters and make them upper case.",
        "Tell me the first and final letters of the word, written as capitals.",
    ),
}


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
    from hyperlora_jax.toy.assets import ASSETS
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
