"""How alike a step's examples are to the question it is asked: which examples to show the model (`nearest`), and
the label a decision's examples vote for (`voted_label`), which lets a decision choose with no model call.

Alike means sharing words, each weighted by how few examples have it (a word that every example has, such as the
words of the question's own template, counts for nothing); numbers do not count, since the same kind of problem
comes with other numbers. It needs no model and no word list, and gives the same answer every time, so a resumed or
replayed run chooses as the first did.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from engine.flow.model import Example


def likeness(examples: Sequence[Example], question: str) -> list[float]:
    """How alike each example's input is to `question`: the weights of the words they share."""
    bags = [_words(e.input) for e in examples]
    have = {w: sum(w in bag for bag in bags) for w in set().union(*bags)}
    asked = _words(question)
    return [sum(math.log(len(bags) / have[w]) for w in bag & asked) for bag in bags]


def nearest(examples: Sequence[Example], question: str, shown: int | None) -> list[Example]:
    """The `shown` examples most like `question` (all of them when `shown` is None), the most alike last, where a
    small model copies from best. Ties keep the examples' order."""
    if shown is None or shown >= len(examples):
        return list(examples)
    return [examples[i] for i in reversed(_ranked(likeness(examples, question))[:shown])]


def voted_label(examples: Sequence[Example], question: str, voters: int | None) -> str | None:
    """The label (an example's answer) that the `voters` examples most like `question` (all when None) vote for,
    each with the weight of its likeness; None when no label wins outright (a tie, or no example shares a word
    that counts), so that something else must decide."""
    scores = likeness(examples, question)
    tally: dict[str, float] = {}
    for i in _ranked(scores)[:voters]:
        if scores[i] > 0:
            tally[examples[i].answer] = tally.get(examples[i].answer, 0.0) + scores[i]
    ranked = sorted(tally.values(), reverse=True)
    if not ranked or (len(ranked) > 1 and math.isclose(ranked[0], ranked[1])):
        return None
    return max(tally, key=tally.__getitem__)


def _ranked(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def _words(text: str) -> set[str]:
    return {_singular(w) for w in re.findall(r"[a-z]+", text.lower())}


def _singular(word: str) -> str:
    # crude, but it needs no word list: "3 boxes" is then like "a box", "glasses" like "a glass"
    if word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")) else word
