"""Scoring one case's run: its answer against the case's checks (engine.answers, shared with `flowrun test`), a
scorer's or a judge's verdict as a number, and the labels its decisions took against the case's routes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine import answers
from engine.kernel.bounds import max_result
from engine.kernel.tables import StepRow
from engine.kernel.tool_code import ToolError
from engine.kernel.workers import WorkerPool

SCORER_SECONDS = 60.0  # per call: a scorer past it is stopped (its worker process killed) and the case scores 0
_VERDICTS = {"pass": True, "true": True, "yes": True, "fail": False, "false": False, "no": False}


def verdict(value: Any) -> tuple[float, str | None] | None:
    """A scorer's or judge's answer as (score in [0, 1], its reason): true/false, pass/fail (as text, in any case,
    maybe quoted), a number in [0, 1] (maybe as text), [score, reason], or {"score": ..., "reason": ...}. None when
    it is none of these."""
    reason = None
    if isinstance(value, dict) and "score" in value:
        value, reason = value["score"], value.get("reason")
    elif isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[1], str | None):
        value, reason = value
    if isinstance(value, str):
        word = value.strip().strip('"').strip().lower()
        if word in _VERDICTS:
            value = _VERDICTS[word]
        else:
            try:
                value = float(word)
            except ValueError:
                return None
    if isinstance(value, bool):
        return float(value), reason
    if isinstance(value, int | float) and 0 <= value <= 1:
        return float(value), reason
    return None


def answer_score(expect: dict[str, Any], answer: Any) -> tuple[float, list[str]]:
    """1 when the answer passes every check of `expect` that needs no code (equals, number, contains, matches,
    schema), else 0 with what failed."""
    problems = answers.problems(expect, answer, ignore_case=True)
    return (0.0 if problems else 1.0), problems


class Scorers:
    """Scorer functions (`file.py:function` beside the data file, or `package.module:function`), each call in a
    worker process of the tool manager's kind: bounded by SCORER_SECONDS, and a scorer that crashes or exits takes
    only its worker with it."""

    def __init__(self, entries: Sequence[str], base: Path, calls: int) -> None:
        self.base = str(base)
        self.pool = WorkerPool([(entry, self.base) for entry in entries], calls)
        self.gate = asyncio.Semaphore(calls)

    async def score(self, entry: str, answer: Any, case: dict[str, Any]) -> tuple[float, str | None]:
        """The scorer's verdict on `answer` for `case`: (score, reason)."""
        request = {"entry": entry, "base": self.base, "arguments": {"answer": answer, "case": case},
                   "workspace": None, "call_key": None, "limit": max_result()}
        async with self.gate:
            try:
                reply = await self.pool.call(request, SCORER_SECONDS)
            except TimeoutError:
                return 0.0, f"the scorer {entry} took over {SCORER_SECONDS:g} s and was stopped"
            except ToolError as exc:
                return 0.0, f"the scorer {entry} failed: {exc}"
        if "error" in reply:
            return 0.0, f"the scorer {entry} raised {reply['type']}: {reply['error']}"
        found = verdict(reply["result"])
        if found is None:
            return 0.0, (f"the scorer {entry} returned {answers.answer_text(reply['result'])[:200]}: a scorer "
                         "returns a bool, a number in [0, 1] or (score, reason)")
        return found

    def close(self) -> None:
        self.pool.close()


def routes_taken(routes: dict[str, str | list[str]], steps: Sequence[StepRow]) -> dict[str, tuple[int, int]]:
    """Per decision of `routes`: (right labels, labelled visits). A label (text) is meant for every visit, a list
    for each visit in turn; a visit that was expected and did not happen, or happened and was not expected (past
    the end of a list), counts as wrong."""
    found = {}
    for step, labels in routes.items():
        taken = [s.branch for s in steps if s.step == step]
        wanted = [labels] * max(1, len(taken)) if isinstance(labels, str) else labels
        found[step] = (sum(t == w for t, w in zip(taken, wanted, strict=False)), max(len(wanted), len(taken)))
    return found
