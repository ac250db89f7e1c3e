"""Scorers for trip_team's answers (trip_team.jsonl): a sound plan, and a real place to eat each evening?

The answer is travel_agent's plan (a list of days, TravelPlanner's format: see travel_checks.py) with each day's
`dinner_place` added by rec_agent: {name, price, why}, or null where the recommendation agent failed that day. A
team answer scores 1.0 when the plan is sound (travel_checks.py:sound_plan), at most a quarter of the days have no
dinner place (what the map tolerates), and each dinner place is a restaurant of the travel database in the city
where the traveller is that evening (where a day of travel arrives).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.jsontext import parse_json
from engine.kernel.tool_code import load_entry

_here = Path(__file__).parent
_sound_plan = load_entry("travel_checks.py:sound_plan", _here)
_places_in = load_entry("travel_checks.py:places_in", _here)
_tool = load_entry("travel_checks.py:tool", _here)


def team_plan(answer: Any, case: dict[str, Any]) -> tuple[float, str]:
    """(1.0, why) when `answer` is a sound plan whose days have real dinner places where the traveller is that
    evening, at most a quarter of them missing; else (0.0, the first problem)."""
    if isinstance(answer, str):
        try:
            answer = parse_json(answer)
        except ValueError as exc:
            return 0.0, f"the answer is not JSON: {exc}"
    if not isinstance(answer, list) or not all(isinstance(day, dict) for day in answer):
        return 0.0, "the answer is not a list of days"
    score, why = _sound_plan([{k: v for k, v in day.items() if k != "dinner_place"} for day in answer], case)
    if score < 1.0:
        return score, why
    missing = [day.get("days") for day in answer if day.get("dinner_place") is None]
    if len(missing) > len(answer) // 4:
        return 0.0, f"days {missing} have no dinner place: more than a quarter of the {len(answer)} days"
    for day in answer:
        place = day.get("dinner_place")
        if place is None:
            continue
        named = _places_in(str(day.get("current_city", "")))
        if not named:
            return 0.0, f"day {day.get('days')}: its city {day.get('current_city')!r} is not a known place"
        city = named[-1][1]  # where the day ends
        names = {r["name"].casefold() for r in _tool("restaurant_search")(city, 50)["restaurants"]}
        name = place.get("name") if isinstance(place, dict) else None
        if not isinstance(name, str) or name.strip().casefold() not in names:
            return 0.0, f"day {day.get('days')}: dinner at {name!r}, which is not a restaurant of {city}"
    return 1.0, f"{why}, with a real dinner place on {len(answer) - len(missing)} of its {len(answer)} days"
