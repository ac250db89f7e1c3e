"""Self-consistency (`samples: N`, `vote: majority`): one model call of a step drawn N times, the most common answer
kept.

Sample n (from 1) of step `s` is asked with the request key `s#n` (engine.llm.base.sample_key), derived from where
it stands and not from when it is answered, so that a resumed or replayed run gives each sample its own recorded
answer whatever order they finish in (engine.kernel.journal), and a cassette can answer one sample (`key: s#2`) or
all of a step's (`key: s`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SAMPLE_TEMPERATURE = 0.7  # a step's `temperature` unless it gives one: varied answers that still mostly make sense


@dataclass(frozen=True)
class Unfit:
    """A sample whose answer cannot be counted (not a label, not data matching the schema, not a valid call)."""

    problem: str


def sample_options(options: dict[str, Any], temperature: float | None, n: int) -> dict[str, Any]:
    """The model options of sample `n`: the run's, at the samples' temperature. A top_k of 1 (greedy) is dropped and
    a seed moved on by `n`, since either would give every sample the same answer."""
    out = {**options, "temperature": SAMPLE_TEMPERATURE if temperature is None else temperature}
    if out.get("top_k") == 1:
        del out["top_k"]
    if "seed" in out:
        out["seed"] += n
    return out


@dataclass(frozen=True)
class Tally:
    """How a vote went: `winner` is the index of the sample kept; `counts` maps the first sample (from 1) giving
    each distinct answer to how many gave it, most first; `unfit` lists the samples that could not be counted."""

    winner: int
    counts: dict[int, int]
    unfit: list[int]

    def record(self) -> dict[str, Any]:
        """What a step's record keeps of the vote (the answers themselves are in the samples' syscalls)."""
        return {"vote": "majority", "samples": sum(self.counts.values()) + len(self.unfit), "winner": self.winner + 1,
                "counts": {str(n): c for n, c in self.counts.items()}, "unfit": self.unfit}


def majority(answers: list[Any]) -> Tally | None:
    """The most common of `answers` (in sample order; an Unfit one is not counted), compared as canonical JSON; a
    tie goes to the answer drawn first. None when no answer can be counted."""
    first: dict[str, int] = {}
    counts: dict[int, int] = {}
    unfit = []
    for n, answer in enumerate(answers, 1):
        if isinstance(answer, Unfit):
            unfit.append(n)
            continue
        seen = first.setdefault(json.dumps(answer, sort_keys=True, ensure_ascii=False, separators=(",", ":")), n)
        counts[seen] = counts.get(seen, 0) + 1
    if not counts:
        return None
    ranked = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return Tally(next(iter(ranked)) - 1, ranked, unfit)
