"""rec_agent's answers are built from the search results (issue 12): when the model reads a request right (its city,
budget and kind of place), every recommendation is a real place that fits, whatever the model would have retyped."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from engine.kernel.tool_code import load_entry
from engine.resources import data_dir
from tests.conftest import FLOWS
from tests.test_interpreter import run

EVALS = FLOWS / "evals"
FLOW = FLOWS / "rec_agent.yaml"
SEARCH = {"hotel": ("search_hotels", "accommodation_search"), "restaurant": ("search_restaurants", "restaurant_search")}
places_in = load_entry("travel_checks.py:places_in", EVALS)
real_names = load_entry("rec_checks.py:real_names", EVALS)


def read_right(request: str, kind: str, budget: int | None = None) -> list[dict[str, Any]]:
    """The model's answers of a run that reads `request` right: its first city, its "under $N", `kind` (asked
    only where the examples' vote is tied) and the search of either kind in that city."""
    city = places_in(request)[0][1]
    if budget is None:
        under = re.search(r"under \$(\d+)", request)
        budget = int(under.group(1)) if under else 0
    searches = [{"key": step, "text": json.dumps({"tool": tool, "arguments": {"city": city, "limit": 50}})}
                for step, tool in SEARCH.values()]
    return [{"key": "understand", "text": json.dumps({"city": city, "budget": budget})},
            {"key": "direction", "text": json.dumps(kind)}, *searches]


def search(tool: str, city: str) -> list[dict[str, Any]]:
    found = load_entry(f"travel.py:{tool}", data_dir("tools"))(city, 50)
    return found["accommodations" if tool == "accommodation_search" else "restaurants"]


def dataset() -> list[Any]:
    lines = (EVALS / "rec_agent.jsonl").read_text(encoding="utf-8").splitlines()
    return [pytest.param(case, id=case["name"]) for case in map(json.loads, lines)]


@pytest.mark.parametrize("case", dataset())
def test_a_request_read_right_gets_only_real_places_that_fit(case: dict[str, Any], tmp_path: Path) -> None:
    """Of the kind the run was routed to (how often that is the right kind is measured by `flowrun eval`)."""
    request, kind = case["inputs"]["request"], case["routes"]["direction"]
    outcome, _ = run(FLOW, read_right(request, kind), case["inputs"], tmp_path)
    assert outcome.status == "finished", outcome.error
    routed = next(kind for kind, (step, _) in SEARCH.items() if step in outcome.path)
    score, why = real_names(outcome.answer, {**case, "routes": {"direction": routed}})
    assert score == 1.0, why
    assert 1 <= len(outcome.answer["recommendations"]) <= 3


def test_no_cuisine_named_gives_the_three_best_rated_with_their_figures(tmp_path: Path) -> None:
    outcome, _ = run(FLOW, read_right("dinner in Austin", "restaurant"), {"request": "dinner in Austin"}, tmp_path)
    best = sorted(search("restaurant_search", "Austin"), key=lambda r: -r["rating"])[:3]
    assert outcome.answer == {"recommendations": [
        {"name": r["name"], "price": f"${r['average_cost']} a person",
         "why": f"{r['cuisine']} food, rated {r['rating']}"} for r in best]}
    assert len({r["cuisine"] for r in best}) > 1  # so the cuisine filter kept all of them


def test_a_budget_nothing_meets_gives_no_recommendation_rather_than_one_over_it(tmp_path: Path) -> None:
    request = "a hotel in Austin under $100"
    assert min(a["price"] for a in search("accommodation_search", "Austin")) >= 100
    outcome, _ = run(FLOW, read_right(request, "hotel"), {"request": request}, tmp_path)
    assert outcome.status == "finished", outcome.error
    assert outcome.answer == {"recommendations": []}

