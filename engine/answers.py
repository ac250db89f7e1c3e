"""Checks on a run's answer, in one place for `flowrun test` (a case's `expect.answer`) and `flowrun eval` (a
data case's `expect`): equals, number (with tolerance or rel_tolerance), contains, matches, schema. A data answer
(not text) is checked as its JSON text by contains, matches and number."""

from __future__ import annotations

import json
import math
from typing import Any

import regex

from engine.json_schema import compile_schema
from engine.patterns import PatternError, compile_pattern, found_in

DEFAULT_TOLERANCE = 1e-6
# A number as people and models write it: a sign, digits (maybe in groups of three split by commas), a fraction and
# an exponent. "1,200 km" is 1200; "20 m/s" is 20.
_NUMBER = regex.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?<=\d)(?:[eE][-+]?\d+)?")


def answer_text(answer: Any) -> str:
    """The answer as text: itself when it is text, else its JSON."""
    return answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)


def read_number(answer: Any) -> float | None:
    """The answer itself when it is a number, else the first number in its text form (None: there is none)."""
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        return float(answer)
    found = _NUMBER.search(answer_text(answer))
    if found is None:
        return None
    value = float(found.group().replace(",", ""))
    return value if math.isfinite(value) else None


def problems(checks: dict[str, Any], answer: Any, *, ignore_case: bool = False) -> list[str]:
    """What about `answer` breaks `checks`, each as a readable difference (empty: nothing). `contains` ignores
    case with `ignore_case` (flowrun eval), and not without (flowrun test, as it always did)."""
    text = answer_text(answer)
    shown = text if len(text) <= 300 else text[:299] + "…"
    found = []
    if "equals" in checks and answer != checks["equals"]:
        found.append(f"the answer should be {json.dumps(checks['equals'], ensure_ascii=False)}, but is {shown}")
    if "number" in checks:
        found.extend(_number_problems(checks, answer, shown))
    wanted = checks.get("contains", [])
    for part in [wanted] if isinstance(wanted, str) else wanted:
        if (part.casefold() not in text.casefold()) if ignore_case else (part not in text):
            found.append(f"the answer should contain {part!r}, but is: {shown}")
    if "matches" in checks:
        try:
            if not found_in(compile_pattern(checks["matches"]), text):
                found.append(f"the answer should match /{checks['matches']}/, but is: {shown}")
        except PatternError as exc:
            found.append(f"the answer's check `matches`: {exc}")
    if "schema" in checks:
        errors = [e.message for e in compile_schema(checks["schema"]).iter_errors(answer)]
        if errors:
            found.append(f"the answer does not fit the schema ({'; '.join(errors)}): {shown}")
    return found


def _number_problems(checks: dict[str, Any], answer: Any, shown: str) -> list[str]:
    wanted = checks["number"]
    value = read_number(answer)
    if value is None:
        return [f"the answer should be the number {wanted:g}, but holds no number: {shown}"]
    if "rel_tolerance" in checks:
        room, how = checks["rel_tolerance"] * abs(wanted), f"within {checks['rel_tolerance']:g} of it"
    else:
        room = checks.get("tolerance", DEFAULT_TOLERANCE)
        how = f"within {room:g}"
    if abs(value - wanted) > room:
        return [f"the answer should be {wanted:g} ({how}), but its number is {value:g}: {shown}"]
    return []
