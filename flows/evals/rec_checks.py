"""Scorers for rec_agent's answers (rec_agent.jsonl): are the places it recommends real, and do they fit?

The kind of place is the case's expected route (`routes: {direction: hotel | restaurant}`), the city the first
place its request names; the names are checked against what the travel tools know of that city. Where the request
says "under $N", a place must cost less (a hotel a night, a restaurant a person), and where it names a cuisine of
the database, a restaurant must serve it.
"""

from __future__ import annotations

import re
import sqlite3
from functools import cache
from pathlib import Path
from typing import Any

from engine.jsontext import parse_json
from engine.kernel.tool_code import load_entry

_places_in = load_entry("travel_checks.py:places_in", Path(__file__).parent)
_tool = load_entry("travel_checks.py:tool", Path(__file__).parent)
SEARCH = {"hotel": ("accommodation_search", "accommodations", "price"),
          "restaurant": ("restaurant_search", "restaurants", "average_cost")}


@cache
def _cuisines() -> list[str]:
    db = sqlite3.connect(f"file:{_tool('database')()}?mode=ro", uri=True)
    try:
        return [c for (c,) in db.execute("SELECT DISTINCT cuisine FROM restaurants")]
    finally:
        db.close()


def real_names(answer: Any, case: dict[str, Any]) -> tuple[float, str]:
    """(1.0, why) when `answer` recommends at least one place and each is a real place of the case's kind in its
    city that fits the request's price and cuisine, else (0.0, the first that is not)."""
    request = case["inputs"]["request"]
    places = _places_in(request)
    if not places:
        raise ValueError(f"the request {request!r} names no city of the travel database")
    city = places[0][1]
    tool, key, cost = SEARCH[case["routes"]["direction"]]
    rows = _tool(tool)(city, 50)[key]
    ceiling = re.search(r"under \$(\d+)", request, re.IGNORECASE)
    cuisine = next((c for c in _cuisines() if re.search(rf"\b{c}\b", request, re.IGNORECASE)), None)
    if isinstance(answer, str):
        try:
            answer = parse_json(answer)
        except ValueError as exc:
            return 0.0, f"the answer is not JSON: {exc}"
    found = answer.get("recommendations") if isinstance(answer, dict) else None
    if not isinstance(found, list) or not found:
        return 0.0, "the answer recommends nothing: it needs a non-empty list `recommendations`"
    for item in found:
        name = item.get("name") if isinstance(item, dict) else None
        same = [r for r in rows if isinstance(name, str) and r["name"].casefold() == name.strip().casefold()]
        if not same:
            return 0.0, f"{name!r} is not one of the {key} of {city}"
        if ceiling and all(r[cost] >= int(ceiling.group(1)) for r in same):
            return 0.0, f"{name!r} costs {same[0][cost]}, not under ${ceiling.group(1)}"
        if cuisine and key == "restaurants" and all(r["cuisine"] != cuisine for r in same):
            return 0.0, f"{name!r} serves {same[0]['cuisine']} food, not {cuisine}"
    return 1.0, f"all {len(found)} are {key} of {city} that fit the request"
