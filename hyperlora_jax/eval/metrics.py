"""Evaluation metrics and answer extraction, pure Python (no downloads, no nltk / rouge_score dependency).

D2L (spec D2L.md section 13):
  closed-book QA (SQuAD, DROP, ROPES, LongBench)  SQuAD-normalised bag-of-words token F1, max over gold answers
                                                  (``token_f1``); exact match (``exact_match``) reported beside it.
  everything else, NIAH included                 ROUGE-L F1 with stemming (``rouge_l``), as ``rouge_score``:
                                                  lowercase, non-[a-z0-9] runs → space, Porter stem of tokens
                                                  longer than 3 characters, LCS-based F-measure.
T2L (spec T2L.md section 9.2):
  multiple choice   ``extract_choice``: strip whitespace and the characters :`'"(.) , lowercase, first matching
                    prefix among a–z, 0–9; compared with the target label.
  GSM8K             ``extract_last_number``: the last number in the output equals the integer answer.
  BoolQ             ``extract_yes_no``: the first yes/no (true/false) word.

The Porter stemmer is the original algorithm (Porter 1980) with NLTK's default-mode changes that matter for
ordinary English words (step 1a ``ies`` on 4-letter words, step 1c, step 2's ``alli``/``fulli``/``lessli``/``logi``/
``bli`` rules); rare irregular forms of NLTK's exception list are not reproduced.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Optional, Sequence, Union

Answers = Union[str, Sequence[str]]


def _golds(answers: Answers) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    golds = [str(a) for a in answers]
    if not golds:
        raise ValueError("no gold answers given")
    return golds


# ============================================================================================ SQuAD-style
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles (a, an, the), collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, answers: Answers) -> float:
    """1.0 when the SQuAD-normalised prediction equals any normalised gold answer."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in _golds(answers)))


def contains(prediction: str, answers: Answers) -> float:
    """1.0 when a SQuAD-normalised gold answer appears in the normalised prediction as whole words (an answer
    given in a sentence counts; "17" does not match "1743")."""
    p = f" {normalize_answer(prediction)} "
    return float(any(g and f" {g} " in p for g in (normalize_answer(x) for x in _golds(answers))))


def _f1_tokens(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:  # SQuAD v2 convention: both empty → 1, one empty → 0
        return float(pred == gold)
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def token_f1(prediction: str, answers: Answers) -> float:
    """SQuAD bag-of-words F1 between normalised token lists, max over gold answers."""
    pred = normalize_answer(prediction).split()
    return max(_f1_tokens(pred, normalize_answer(g).split()) for g in _golds(answers))


# ============================================================================================ ROUGE-L
def rouge_tokenize(text: str, stem: bool = True) -> list[str]:
    """``rouge_score``'s default tokenizer: lowercase, non-alphanumerics → space, stem tokens longer than 3."""
    toks = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    return [porter_stem(t) if stem and len(t) > 3 else t for t in toks]


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_single(prediction: str, target: str, stem: bool = True) -> float:
    p, t = rouge_tokenize(prediction, stem), rouge_tokenize(target, stem)
    lcs = lcs_length(t, p)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(t)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, answers: Answers, stem: bool = True) -> float:
    """ROUGE-L F-measure (LCS based), max over gold answers."""
    return max(rouge_l_single(prediction, g, stem) for g in _golds(answers))


# ============================================================================================ answer extraction
CHOICE_LABELS = tuple("abcdefghijklmnopqrstuvwxyz0123456789")
_CHOICE_STRIP = " \t\n\r:`'\"(.)"


def extract_choice(text: str, labels: Iterable[str] = CHOICE_LABELS) -> Optional[str]:
    """The T2L reference's choice extraction: strip whitespace and :`'"(.) , lowercase, first label that prefixes
    what is left (labels are compared lowercased). None when no label matches."""
    s = text.strip().strip(_CHOICE_STRIP).lower()
    for lab in labels:
        lab = str(lab).lower()
        if lab and s.startswith(lab):
            return lab
    return None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_last_number(text: str) -> Optional[float]:
    """The last number in ``text`` (commas as thousands separators), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def number_match(prediction: str, answer: Union[str, float, int]) -> float:
    """GSM8K: 1.0 when the last number of ``prediction`` equals the numeric ``answer``."""
    got = extract_last_number(prediction)
    want = extract_last_number(str(answer)) if isinstance(answer, str) else float(answer)
    return float(got is not None and want is not None and abs(got - want) < 1e-6)


def extract_yes_no(text: str) -> Optional[str]:
    """'yes' / 'no' from the first yes/no/true/false word of ``text``, else None."""
    for w in re.findall(r"[a-z]+", text.lower()):
        if w in ("yes", "true"):
            return "yes"
        if w in ("no", "false"):
            return "no"
    return None


# ============================================================================================ Porter stemmer
_VOWELS = set("aeiou")


def _cons(w: str, i: int) -> bool:
    c = w[i]
    if c in _VOWELS:
        return False
    if c == "y":
        return i == 0 or not _cons(w, i - 1)
    return True


def _m(stem: str) -> int:
    """Porter's measure: number of VC sequences in ``stem``."""
    forms = "".join("c" if _cons(stem, i) else "v" for i in range(len(stem)))
    return len(re.findall(r"v+c+", forms))


def _has_vowel(stem: str) -> bool:
    return any(not _cons(stem, i) for i in range(len(stem)))


def _double_cons(w: str) -> bool:
    return len(w) >= 2 and w[-1] == w[-2] and _cons(w, len(w) - 1)


def _cvc(w: str) -> bool:
    return (len(w) >= 3 and _cons(w, len(w) - 3) and not _cons(w, len(w) - 2) and _cons(w, len(w) - 1)
            and w[-1] not in "wxy")


def _replace(w: str, rules, cond) -> str:
    for suf, rep in rules:
        if w.endswith(suf):
            stem = w[:len(w) - len(suf)]
            return stem + rep if cond(stem) else w
    return w


_STEP2 = (("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
          ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"), ("ization", "ize"),
          ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"),
          ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"), ("fulli", "ful"),
          ("lessli", "less"), ("logi", "log"))
_STEP2 = tuple(sorted(_STEP2, key=lambda r: -len(r[0])))  # the longest matching suffix decides
_STEP3 = (("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""),
          ("ness", ""))
_STEP4 = ("al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism", "ate",
          "iti", "ous", "ive", "ize")
_STEP4 = tuple(sorted(_STEP4, key=len, reverse=True))


def porter_stem(word: str) -> str:
    """Porter stem of a lowercase word (see the module docstring for the variant)."""
    w = word
    if len(w) <= 2:
        return w
    # step 1a
    if w.endswith("sses"):
        w = w[:-2]
    elif w.endswith("ies"):
        w = w[:-1] if len(w) == 4 else w[:-2]
    elif w.endswith("ss"):
        pass
    elif w.endswith("s"):
        w = w[:-1]
    # step 1b
    extra = False
    if w.endswith("eed"):
        if _m(w[:-3]) > 0:
            w = w[:-1]
    elif w.endswith("ed") and _has_vowel(w[:-2]):
        w, extra = w[:-2], True
    elif w.endswith("ing") and _has_vowel(w[:-3]):
        w, extra = w[:-3], True
    if extra:
        if w.endswith(("at", "bl", "iz")):
            w += "e"
        elif _double_cons(w) and w[-1] not in "lsz":
            w = w[:-1]
        elif _m(w) == 1 and _cvc(w):
            w += "e"
    # step 1c (NLTK: y → i only after a consonant that is not the first letter)
    if w.endswith("y") and len(w) > 2 and _cons(w, len(w) - 2):
        w = w[:-1] + "i"
    # steps 2-4
    w = _replace(w, _STEP2, lambda s: _m(s) > 0)
    w = _replace(w, _STEP3, lambda s: _m(s) > 0)
    for suf in _STEP4:
        if w.endswith(suf):
            stem = w[:len(w) - len(suf)]
            if _m(stem) > 1 and (suf != "ion" or stem.endswith(("s", "t"))):
                w = stem
            break
    # step 5a
    if w.endswith("e"):
        stem = w[:-1]
        if _m(stem) > 1 or (_m(stem) == 1 and not _cvc(stem)):
            w = stem
    # step 5b
    if _m(w) > 1 and _double_cons(w) and w.endswith("l"):
        w = w[:-1]
    return w


def mean(values: Iterable[float]) -> float:
    vals = list(values)
    return float(sum(vals) / len(vals)) if vals else float("nan")
