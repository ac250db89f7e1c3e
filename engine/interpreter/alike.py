"""How alike a step's examples are to the question it is asked: which examples to show the model (`nearest`), the
label a decision's examples vote for (`voted_label`), and the answer of the most alike example carried over to the
question's numbers and words (`carried_answer`); the last two let a step answer with no model call (`answer_by:
examples`).

Alike means sharing words, each weighted by how few examples have it (a word that every example has, such as the
words of the question's own template, counts for nothing); numbers do not count, since the same kind of problem
comes with other numbers. It needs no model and no word list, and gives the same answer every time, so a resumed or
replayed run chooses as the first did.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

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


def carried_answer(examples: Sequence[Example], question: str, tries: int | None) -> Any:
    """The answer of the most alike of the `tries` examples most like `question` (all when None) whose numbers pair
    with the question's, carried over to the question: each of its numbers that is one of its input's replaced by
    the question's number paired with it (numbers of its own, such as 100 in a percentage, stay), and each of its
    words that is one of its input's by the question's word in the same place; None when no example pairs.

    An example's numbers pair with the question's when there are as many and the example's are all different:
    first those that count the same thing (the word after them, "%" after them or "$" before them) pair in order,
    then the rest in order. So "300 g of rice for 6 people" carries over to "6 people need 300 g of rice".

    A word's place in the question is where it stands in the example's input, the two read side by side where
    they read alike (numbers all read alike), or what the question's number paired with the number it follows
    counts: "4 * hours / seconds" for "How many seconds are there in 4 hours?" carries over to "2 * weeks / hours"
    for "How many hours are there in 2 weeks?". A word found in two places that the question fills differently,
    or in a place it has nothing like, stays as it is."""
    scores = likeness(examples, question)
    asked = _numbers(question)
    for i in _ranked(scores)[:tries]:
        given = _numbers(examples[i].input)
        paired = _pairs(given, asked)
        if paired is not None:
            numbers = {given[g].text: asked[a].text for g, a in paired.items()}
            words = _aligned_words(examples[i].input, question,
                                   [(given[g].word, asked[a].word) for g, a in paired.items()])
            return _carried(examples[i].answer, numbers, words)
    return None


_BARE = r"(?<![\d.])\d+(?:\.\d+)?(?![\d.]*\d)"  # a whole number, not part of a longer one (1.5, not 1 of 1.5)
_NUMBER = re.compile(rf"(\$)?({_BARE})(\s*%|\s+[A-Za-z]+)?")  # with a "$" before it, or what it counts after it
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TOKEN = re.compile(rf"{_BARE}|[^\W\d_]+|\S")  # numbers, words (of any script), and the rest
_WORD = re.compile(r"[^\W\d_]+")


class _Number(NamedTuple):
    text: str  # as written
    counts: str  # what it counts, to pair by: "$", "%", or the word after it in the singular, lower case
    word: str  # the word after it as written, or ""


def _numbers(text: str) -> list[_Number]:
    """Each number of `text` with what it counts."""
    found = []
    for match in _NUMBER.finditer(_THOUSANDS.sub("", text)):
        dollar, number, after = match.groups()
        word = after.strip() if after and _WORD.fullmatch(after.strip()) else ""
        counts = "$" if dollar else "%" if after and after.strip() == "%" else _singular(word.lower())
        found.append(_Number(number, counts, word))
    return found


def _pairs(given: list[_Number], asked: list[_Number]) -> dict[int, int] | None:
    """The index of each of the example's numbers -> that of the question's paired with it, or None when they do
    not pair."""
    if len(given) != len(asked) or len({n.text for n in given}) != len(given):
        return None
    free = list(range(len(asked)))
    paired: dict[int, int] = {}
    for i, number in enumerate(given):
        j = next((j for j in free if asked[j].counts == number.counts), None)
        if j is not None:
            paired[i] = j
            free.remove(j)
    paired.update(zip((i for i in range(len(given)) if i not in paired), free, strict=True))
    return paired


def _aligned_words(given: str, asked: str, counted: list[tuple[str, str]]) -> dict[str, str]:
    """Each word of `given` -> the word of `asked` in its place (see carried_answer), where that is one word."""
    a, b = _TOKEN.findall(_THOUSANDS.sub("", given)), _TOKEN.findall(_THOUSANDS.sub("", asked))
    places: dict[str, set[str | None]] = {}
    for x, y in counted:
        if x:
            places.setdefault(x, set()).add(y or None)
    matcher = difflib.SequenceMatcher(None, [_shape(t) for t in a], [_shape(t) for t in b], autojunk=False)
    for _, i, i_end, j, j_end in matcher.get_opcodes():
        beside = i_end - i == j_end - j
        for k in range(i, i_end):
            if _WORD.fullmatch(a[k]):
                y = b[j + k - i] if beside else None
                places.setdefault(a[k], set()).add(y if y is not None and _WORD.fullmatch(y) else None)
    return {x: next(iter(ys)) for x, ys in places.items() if len(ys) == 1 and None not in ys}


def _shape(token: str) -> str:
    return "#" if token[0].isdigit() else token.lower()


def _carried(value: Any, numbers: dict[str, str], words: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _TOKEN.sub(lambda m: numbers.get(m.group(0)) or words.get(m.group(0)) or m.group(0), value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        number = numbers.get(str(value))
        return value if number is None else float(number) if "." in number else int(number)
    if isinstance(value, list):
        return [_carried(v, numbers, words) for v in value]
    if isinstance(value, dict):
        return {k: _carried(v, numbers, words) for k, v in value.items()}
    return value


def _ranked(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def _words(text: str) -> set[str]:
    return {_singular(w) for w in re.findall(r"[a-z]+", text.lower())}


def _singular(word: str) -> str:
    # crude, but it needs no word list: "3 boxes" is then like "a box", "glasses" like "a glass"
    if word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")) else word
