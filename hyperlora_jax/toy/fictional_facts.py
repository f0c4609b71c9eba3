"""Fictional-fact documents with one question per fact: knowledge no pretrained model has, generated offline.

``FictionalFacts(n, seed)[i]`` is a pure function of (seed, i): a short encyclopedic paragraph about an invented
entity (a town, a person, a species or a ship) stating ``min_facts..max_facts`` facts in random order, and one
question per fact whose answer is the value exactly as the paragraph states it::

    {"context": "Vellmora is a town on the river Quistan. It was founded in 1743. ...",
     "prompts": ["In which year was Vellmora founded?", ...], "responses": ["1743", ...]}

Names are built from syllables and values drawn from closed lists and number ranges, so an answer can only come
from the document. The record layout is the text layout of the ``d2l_qa`` dataset (context, prompts, responses).

With ``closed_answers=True`` an entity states only its facts whose value comes from a closed word list (colours,
goods, instruments, months, diets, habitats, figureheads; 2..3 per entity, so at most that many facts): a training
curriculum in which every answer is one of a few dozen known words and only the document says which.

With ``max_entities > 1`` a record describes ``min_entities..max_entities`` entities, one paragraph each (joined by
a blank line), and asks about the facts of all of them (longer documents whose answers sit anywhere in them).
``max_entities == 1`` (the default) gives exactly the single-entity records above.
"""
from __future__ import annotations

import numpy as np

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gl", "k", "kr", "l", "m", "n", "p", "qu", "r", "s", "st", "t", "th",
           "tr", "v", "vl", "z", "zh"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
_CODAS = ["", "", "n", "r", "s", "th", "l", "m", "x", "nd", "rk"]
COLOURS = ["amber", "cobalt", "crimson", "ivory", "jade", "lilac", "ochre", "saffron", "slate", "teal", "umber",
           "violet"]
GOODS = ["copper wire", "dried figs", "glass beads", "indigo dye", "salt fish", "sheep wool", "silver thread",
         "walnut oil", "clay pipes", "linen sails", "honey wine", "cedar boards"]
INSTRUMENTS = ["bassoon", "cello", "dulcimer", "harp", "lute", "oboe", "sitar", "trombone", "viola", "zither"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
DIETS = ["beetles", "berries", "lichen", "minnows", "moths", "pine seeds", "river snails", "water weed"]
HABITATS = ["cloud forests", "salt marshes", "basalt cliffs", "bamboo thickets", "alpine meadows", "mangrove swamps"]
FIGUREHEADS = ["heron", "lion", "mermaid", "stag", "swan", "wolf"]
# values drawn from the closed lists above (not invented names or numbers): the answers of ``closed_answers`` worlds
CLOSED_VALUES = frozenset(COLOURS + GOODS + INSTRUMENTS + MONTHS + DIETS + HABITATS + FIGUREHEADS)
KINDS = ("town", "person", "species", "ship")


def syllable_name(rng, syllables: tuple[int, int] = (2, 3)) -> str:
    """A capitalised invented word of 2..3 syllables."""
    n = int(rng.integers(syllables[0], syllables[1] + 1))
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if k == n - 1 else "")
             for k in range(n)]
    return "".join(parts).capitalize()


def _person(rng) -> str:
    return f"{syllable_name(rng, (2, 2))} {syllable_name(rng, (2, 3))}"


def _facts(kind: str, name: str, rng) -> tuple[str, list[tuple[str, str, str]]]:
    """(opening sentence, [(statement, question, answer)]) of one entity; each answer appears in its statement."""
    year = lambda lo, hi: str(int(rng.integers(lo, hi)))  # noqa: E731
    pick = lambda xs: str(rng.choice(xs))  # noqa: E731
    if kind == "town":
        river = syllable_name(rng)
        facts = [
            (f"It was founded in {(v := year(1100, 1950))}.", f"In which year was {name} founded?", v),
            (f"About {(v := f'{int(rng.integers(2, 900)) * 100:,}')} people live there.",
             f"How many people live in {name}?", v),
            (f"Its mayor is {(v := _person(rng))}.", f"Who is the mayor of {name}?", v),
            (f"The town is known for its {(v := pick(GOODS))}.", f"What is {name} known for?", v),
            (f"Its harvest festival takes place every {(v := pick(MONTHS))}.",
             f"In which month is the harvest festival of {name}?", v),
            (f"The town hall is painted {(v := pick(COLOURS))}.", f"What colour is the town hall of {name}?", v),
            (f"Its twin town is {(v := syllable_name(rng))}.", f"What is the twin town of {name}?", v),
        ]
        return f"{name} is a town on the river {river}.", facts
    if kind == "person":
        facts = [
            (f"{name.split()[0]} was born in {(v := year(1700, 1990))}.", f"In which year was {name} born?", v),
            (f"Their birthplace is the village of {(v := syllable_name(rng))}.", f"Where was {name} born?", v),
            (f"They invented the {(v := syllable_name(rng, (2, 2)).lower() + 'scope')}.",
             f"What did {name} invent?", v),
            (f"Their favourite colour is {(v := pick(COLOURS))}.", f"What is the favourite colour of {name}?", v),
            (f"They play the {(v := pick(INSTRUMENTS))}.", f"Which instrument does {name} play?", v),
            (f"Their dog is called {(v := syllable_name(rng, (2, 2)))}.", f"What is the name of {name}'s dog?", v),
            (f"They wrote {(v := str(int(rng.integers(2, 60))))} books.", f"How many books did {name} write?", v),
        ]
        return f"{name} is an inventor and writer.", facts
    if kind == "species":
        facts = [
            (f"It lives in {(v := pick(HABITATS))}.", f"Where does the {name} live?", v),
            (f"Its wingspan is {(v := str(int(rng.integers(5, 240))))} centimetres.",
             f"What is the wingspan of the {name} in centimetres?", v),
            (f"It feeds on {(v := pick(DIETS))}.", f"What does the {name} feed on?", v),
            (f"Its feathers are {(v := pick(COLOURS))}.", f"What colour are the feathers of the {name}?", v),
            (f"It was first described by {(v := _person(rng))}.", f"Who first described the {name}?", v),
            (f"It was discovered in {(v := year(1750, 2020))}.", f"In which year was the {name} discovered?", v),
            (f"A clutch holds {(v := str(int(rng.integers(1, 9))))} eggs.", f"How many eggs are in a clutch of the "
                                                                          f"{name}?", v),
        ]
        return f"The {name} is a species of bird.", facts
    facts = [
        (f"She was launched in {(v := year(1600, 1990))}.", f"In which year was the {name} launched?", v),
        (f"Her captain is {(v := _person(rng))}.", f"Who is the captain of the {name}?", v),
        (f"Her home port is {(v := syllable_name(rng))}.", f"What is the home port of the {name}?", v),
        (f"She carries {(v := pick(GOODS))}.", f"What cargo does the {name} carry?", v),
        (f"Her hull is painted {(v := pick(COLOURS))}.", f"What colour is the hull of the {name}?", v),
        (f"She has a crew of {(v := str(int(rng.integers(4, 400))))}.", f"How large is the crew of the {name}?", v),
        (f"Her figurehead shows a {(v := pick(FIGUREHEADS))}.",
         f"What does the figurehead of the {name} show?", v),
    ]
    return f"The {name} is a merchant ship.", facts


class FictionalFacts:
    """``n`` fictional-fact records (``len`` + ``[i]``), each a pure function of (seed, i); see the module."""

    def __init__(self, n: int, seed: int = 0, min_facts: int = 3, max_facts: int = 7, min_entities: int = 1,
                 max_entities: int = 1, closed_answers: bool = False):
        if n < 1:
            raise ValueError(f"fictional facts: the number of documents must be >= 1, got {n}")
        if not 1 <= min_facts <= max_facts <= 7:
            raise ValueError(f"fictional facts: need 1 <= min_facts <= max_facts <= 7, got {min_facts}, {max_facts}")
        if not 1 <= min_entities <= max_entities <= 64:
            raise ValueError(f"fictional facts: need 1 <= min_entities <= max_entities <= 64, got {min_entities}, "
                             f"{max_entities}")
        self.n, self.seed, self.min_facts, self.max_facts = int(n), int(seed), int(min_facts), int(max_facts)
        self.min_entities, self.max_entities = int(min_entities), int(max_entities)
        self.closed_answers = bool(closed_answers)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(f"record {i} of {self.n}")
        rng = np.random.default_rng([self.seed, i, 97])
        if self.max_entities == 1:
            return self.entity(rng)
        n_ent = int(rng.integers(self.min_entities, self.max_entities + 1))
        parts = [self.entity(rng) for _ in range(n_ent)]
        return {"context": "\n\n".join(p["context"] for p in parts),
                "prompts": [q for p in parts for q in p["prompts"]],
                "responses": [a for p in parts for a in p["responses"]]}

    def entity(self, rng) -> dict:
        """One entity's paragraph and its questions (a record of one entity), drawn from ``rng``."""
        kind = KINDS[int(rng.integers(len(KINDS)))]
        name = _person(rng) if kind == "person" else syllable_name(rng)
        opening, facts = _facts(kind, name, rng)
        if self.closed_answers:
            facts = [f for f in facts if f[2] in CLOSED_VALUES]
        k = int(rng.integers(self.min_facts, self.max_facts + 1))
        chosen = [facts[j] for j in rng.permutation(len(facts))[:k]]
        return {"context": " ".join([opening] + [s for s, _, _ in chosen]),
                "prompts": [q for _, q, _ in chosen], "responses": [a for _, _, a in chosen]}
