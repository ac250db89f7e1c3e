"""flows/travel_agent.yaml: its places match the travel database, its plans are sound (flows/evals/travel_checks.py)
for any trip it has read right, it holds the model's reading to the places the request names, and on the real
default model it answers with a sound plan."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import date, timedelta
from itertools import cycle
from pathlib import Path
from typing import Any

import pytest

from engine.flow.manifest import load_tools
from engine.flow.templates import render
from engine.flow.validate import load_flow
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage
from engine.kernel.tool_code import load_entry
from engine.kernel.tools import ToolError, tool_from_manifest
from engine.llm.scripted import ScriptedBackend
from tests.conftest import FLOWS, ROOT
from tests.test_interpreter import run, stored_steps

FLOW = FLOWS / "travel_agent.yaml"
CHECKED = load_flow(FLOW)
places = load_entry("travel_places.py:places", FLOWS)
with_places = load_entry("travel_places.py:with_places", FLOWS)
sound_plan = load_entry("travel_checks.py:sound_plan", FLOWS / "evals")
trip_of = load_entry("travel_checks.py:trip_of", FLOWS / "evals")


def reading(days: int, origin: str, destination: str, start: date) -> list[dict[str, str]]:
    """The model's answer to parse_query, as a cassette."""
    answer = {"days": days, "origin": origin, "destination": destination, "date": start.isoformat()}
    return [{"key": "parse_query", "text": json.dumps(answer)}]


def test_the_places_the_parse_is_held_to_are_the_databases() -> None:
    text = FLOW.read_text()
    assert with_places(text) == text  # `python flows/travel_places.py` would change nothing
    cities, states = places()
    defs = CHECKED.flow.steps["parse_query"].output_schema["$defs"]
    assert (defs["city"]["enum"], defs["state"]["enum"]) == (cities, states)
    assert len(cities) == 30 and len(states) == 7


def test_destination_kind_is_state_for_every_state_and_city_for_every_city() -> None:
    decide = CHECKED.flow.steps["destination_kind"].decide
    cities, states = places()
    for place in (*cities, *states):
        context = {"inputs": {}, "visits": {}, "steps": {"trip": {"output": {"destination": place}}}}
        assert render(decide, context).strip() == ("state" if place in states else "city"), place


def trips() -> list[tuple[int, str, str, date]]:
    """Trips of 1 to 6 days from every city of the database, to a state or a city in turn; and a short hop with
    no flight, a trip to another city of home's state, a leap day and a new year on the way."""
    cities, states = places()
    destinations = cycle([*states, *reversed(cities)])
    found = [(1, "Tacoma", "Olympia", date(2025, 3, 15)), (3, "Seattle", "Washington", date(2025, 12, 30)),
             (6, "Boulder", "Denver", date(2024, 2, 27))]
    for n, origin in enumerate(cities):
        destination = next(d for d in destinations if d != origin)
        found.append((n % 6 + 1, origin, destination, date(2025, 1, 1) + timedelta(days=11 * n)))
    return found


@pytest.mark.parametrize("days, origin, destination, start", trips(),
                         ids=lambda v: v.isoformat() if isinstance(v, date) else str(v))
def test_a_trip_read_right_gets_a_sound_plan(days: int, origin: str, destination: str, start: date,
                                             tmp_path: Path) -> None:
    query = f"{days} days from {origin} to {destination}, leaving {start.isoformat()}"
    assert trip_of(query) == (origin, destination, days, start)  # the scorer reads the same trip
    outcome, _ = run(CHECKED, reading(days, origin, destination, start), {"query": query}, tmp_path)
    assert outcome.status == "finished", outcome.error
    score, why = sound_plan(outcome.answer, {"inputs": {"query": query}})
    assert score == 1.0, why


def test_a_reading_that_names_places_the_request_does_not_is_corrected_from_the_request(tmp_path: Path) -> None:
    query = "From Orlando, I'd like to spend 3 days in Chicago, leaving 2025-12-01"
    wrong = reading(3, "Boulder", "Orlando", date(2025, 12, 1))  # an unnamed origin; the destination is home
    outcome, kernel = run(CHECKED, wrong, {"query": query}, tmp_path)
    assert outcome.status == "finished", outcome.error
    trip = next(s.output for s in stored_steps(kernel, outcome) if s.step == "trip")
    assert (trip["origin"], trip["destination"]) == ("Orlando", "Chicago")
    assert sound_plan(outcome.answer, {"inputs": {"query": query}})[0] == 1.0


@pytest.mark.parametrize("query, days", [
    ("A three-day trip from Denver to San Francisco, leaving on 2025-08-20", 3),
    ("Plan a 2-day trip from Denver to San Francisco starting 2025-08-20.", 2),
    ("Two days, from Denver to San Francisco, on 2025-08-20", 2),
    ("A week from Denver to San Francisco, 2025-08-20", 5),  # no number of days stated: the model's reading stays
    ("40 days from Denver to San Francisco, 2025-08-20", 5),  # more than the parse allows: the model's reading stays
])
def test_the_days_a_request_states_are_taken_over_the_models_reading(query: str, days: int, tmp_path: Path) -> None:
    outcome, kernel = run(CHECKED, reading(5, "Denver", "San Francisco", date(2025, 8, 20)), {"query": query},
                          tmp_path)
    assert outcome.status == "finished", outcome.error
    assert next(s.output for s in stored_steps(kernel, outcome) if s.step == "trip")["days"] == days
    assert len(outcome.answer) == days


def test_a_reading_the_request_bears_out_is_kept_even_against_the_order_it_names_places(tmp_path: Path) -> None:
    query = "I want to see Rochester for two days. I live in Tampa and can go on 2025-08-09."
    outcome, kernel = run(CHECKED, reading(2, "Tampa", "Rochester", date(2025, 8, 9)), {"query": query}, tmp_path)
    assert outcome.status == "finished", outcome.error
    plan = outcome.answer
    assert [d["current_city"] for d in plan] == ["from Tampa to Rochester", "from Rochester to Tampa"]
    assert next(s.output for s in stored_steps(kernel, outcome) if s.step == "trip")["origin"] == "Tampa"


def test_a_plan_never_repeats_a_place_and_says_dash_where_nothing_applies(tmp_path: Path) -> None:
    outcome, _ = run(CHECKED, reading(6, "Miami", "Denver", date(2025, 5, 1)),
                     {"query": "6 days from Miami to Denver, leaving 2025-05-01"}, tmp_path)
    plan = outcome.answer
    assert [d["days"] for d in plan] == [1, 2, 3, 4, 5, 6]
    meals = [d[f] for d in plan for f in ("breakfast", "lunch", "dinner") if d[f] != "-"]
    sights = [d["attraction"] for d in plan if d["attraction"] != "-"]
    assert len(meals) == len(set(meals)) >= 12 and len(sights) == len(set(sights)) >= 4
    assert all(d["transportation"] == "-" for d in plan[1:-1]) and plan[-1]["accommodation"] == "-"
    assert len({d["accommodation"] for d in plan[:-1]}) == 1


# --- the tools the flow added -----------------------------------------------------------------------------------

def call(name: str, tmp_path: Path, **arguments: Any) -> Any:
    kernel = Kernel(ScriptedBackend.from_responses([]), Storage(f"sqlite:///{tmp_path / 'db.sqlite'}"),
                    tools=[tool_from_manifest(load_tools([]).tools[name])])
    kernel.open_run("run", "travel", [name])
    return asyncio.run(kernel.call_tool("travel", "run", name, arguments)).result


def test_place_search_names_places_in_the_order_the_text_does(tmp_path: Path) -> None:
    found = call("place_search", tmp_path, text="4 days in texas? I leave from New York City, not Buffalo.")
    assert found["places"] == [{"name": "Texas", "kind": "state"},
                               {"name": "New York City", "kind": "city", "state": "New York"},
                               {"name": "Buffalo", "kind": "city", "state": "New York"}]
    assert call("place_search", tmp_path, text="Paris, Texasville and Dallasite")["places"] == []


def test_trip_dates_cross_months_and_leap_days(tmp_path: Path) -> None:
    assert call("trip_dates", tmp_path, start="2024-02-28", days=3)["dates"] == ["2024-02-28", "2024-02-29",
                                                                                 "2024-03-01"]
    with pytest.raises(ToolError, match="not a date"):
        call("trip_dates", tmp_path, start="2024-02-30", days=1)


# --- on the real default model ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_travel_agent_plans_a_sound_trip_on_the_embedded_model(tmp_path: Path) -> None:
    query = "3 days from Seattle to California, leaving 2025-03-10"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(FLOWS / "travel_agent.yaml"), "--backend", "embedded", "--json",
         "-i", f"query={query}", "--db", str(tmp_path / "runs.db")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "finished" and result["steps"][-1] == "plan"
    score, why = sound_plan(result["answer"], {"inputs": {"query": query}})
    assert score == 1.0, why
