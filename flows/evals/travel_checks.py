"""Scorers for travel_agent's answers (travel_agent.jsonl): is a plan sound against the travel database?

A plan is TravelPlanner's format: a list of days (or its JSON text), each an object with `days` (1, 2, ...),
`current_city` ("Austin", or "from Seattle to Austin" on a day of travel; "from A to B to A" when one day goes there
and back), `transportation` (one leg per move, separated by ";": "Flight Number: F0123456, from A to B, Departure
Time: 08:05, Arrival Time: 11:40", "Self-driving, from A to B, duration: ..., distance: ..., cost: ..." or "Taxi,
from A to B, ..."; a flight leaves after the day's previous flight lands), `breakfast`, `lunch`, `dinner` and
`accommodation` ("Name, City"), `attraction` ("Name, City", several separated by ";"), and "-" where nothing
applies. A day without travel has all three meals and an attraction; every night but the last has an accommodation,
for at least its minimum nights.

The trip a plan must fit is read from the case's query: the origin city after "from", the destination (a city or
a state: the first other place named), the days ("3 days", "a three-day trip") and the date (YYYY-MM-DD). Facts
come from the travel tools' own code (tools/travel.py), read-only.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from datetime import date as Date
from datetime import timedelta
from functools import cache
from itertools import pairwise
from typing import Any, NamedTuple

from engine.jsontext import parse_json
from engine.kernel.tool_code import load_entry
from engine.resources import data_dir

FIELDS = ("days", "current_city", "transportation", "breakfast", "attraction", "lunch", "dinner", "accommodation")
MEALS = ("breakfast", "lunch", "dinner")
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}
FLIGHT = re.compile(r"Flight Number:\s*(F\d+),\s*from (.+?) to (.+?),\s*Departure Time:\s*(\d{1,2}:\d{2}),"
                    r"\s*Arrival Time:\s*(\d{1,2}:\d{2})\s*$", re.IGNORECASE)
ROAD = re.compile(r"(Self-driving|Taxi),\s*from (.+?) to (.+?)(?:,(.*))?$", re.IGNORECASE)


class Unsound(Exception):
    """The first problem found in a plan."""


class Trip(NamedTuple):
    """What the query asks for."""

    origin: str
    destination: str  # a city or a state
    days: int
    date: Date


@cache
def tool(name: str) -> Callable[..., Any]:
    """The travel tool `name` (a function of tools/travel.py)."""
    return load_entry(f"travel.py:{name}", data_dir("tools"))


@cache
def _places() -> dict[str, str]:
    """Each city of the database -> its state; each state -> "" (none)."""
    db = sqlite3.connect(f"file:{tool('database')()}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT name, state FROM cities").fetchall()
    finally:
        db.close()
    return {name: state for name, state in rows} | {state: "" for _, state in rows}


def _canonical(name: str) -> str | None:
    return next((p for p in _places() if p.casefold() == name.strip().casefold()), None)


def _names() -> str:
    """A pattern that matches any place (the longest first: New York City, not New York)."""
    return "|".join(re.escape(p) for p in sorted(_places(), key=len, reverse=True))


def places_in(text: str) -> list[tuple[int, str]]:
    """(offset, canonical name) of each city and state `text` names, in order."""
    return [(m.start(), _canonical(m.group(1))) for m in re.finditer(rf"\b({_names()})\b", text, re.IGNORECASE)]


def trip_of(query: str) -> Trip:
    """The trip `query` asks for; a ValueError when it does not say where from, where to, how long or when."""
    origin = re.search(rf"\bfrom\s+({_names()})\b", query, re.IGNORECASE)
    days = re.search(rf"\b(\d+|{'|'.join(NUMBERS)})[- ]days?\b", query, re.IGNORECASE)
    when = re.search(r"\b\d{4}-\d{2}-\d{2}\b", query)
    if not (origin and days and when):
        raise ValueError(f"the query {query!r} must name the origin (from CITY), the days (N days) and the date "
                         "(YYYY-MM-DD)")
    start = _canonical(origin.group(1))
    others = [place for at, place in places_in(query) if at != origin.start(1)]
    if not _places()[start] or not others:
        raise ValueError(f"the query {query!r} must go from a city of the database to another city or a state")
    count = days.group(1).lower()
    return Trip(start, others[0], int(NUMBERS.get(count, count)), Date.fromisoformat(when.group()))


def sound_plan(answer: Any, case: dict[str, Any]) -> tuple[float, str]:
    """(1.0, why) when `answer` is a sound plan for the trip the case's query asks for, else (0.0, its first
    problem)."""
    trip = trip_of(case["inputs"]["query"])
    try:
        _check(_days(answer), trip)
    except Unsound as exc:
        return 0.0, str(exc)
    return 1.0, f"a sound {trip.days}-day plan from {trip.origin} to {trip.destination}"


def _days(answer: Any) -> list[Any]:
    if isinstance(answer, str):
        try:
            answer = parse_json(answer)
        except ValueError as exc:
            raise Unsound(f"the plan is not JSON: {exc}") from None
    if not isinstance(answer, list):
        raise Unsound(f"the plan is a {type(answer).__name__}, not a list of days")
    return answer


def _check(days: list[Any], trip: Trip) -> None:
    if len(days) != trip.days:
        raise Unsound(f"the plan has {len(days)} days, the query asks for {trip.days}")
    here, used, nights = trip.origin, {}, []
    for n, day in enumerate(days, 1):
        if not isinstance(day, dict) or any(f not in day for f in FIELDS):
            raise Unsound(f"day {n} is not an object with {', '.join(FIELDS)}")
        if day["days"] != n:
            raise Unsound(f"day {n} says it is day {day['days']!r}")
        cities = _route(n, str(day["current_city"]), here, trip, last=n == len(days))
        _transport(n, str(day["transportation"]), cities, trip.date + timedelta(days=n - 1))
        travelling = len(cities) > 1
        for field in (*MEALS, "attraction"):
            items = [] if day[field] == "-" else [i for i in str(day[field]).split(";") if i.strip()]
            if not items and not travelling:
                raise Unsound(f"day {n} has no {field}: a day without travel has three meals and an attraction")
            if len(items) > 1 and field != "attraction":
                raise Unsound(f"day {n}: {field} {day[field]!r} names more than one restaurant")
            for item in items:
                place = _place(n, field, item, cities)
                if place in used:
                    raise Unsound(f"day {n}: {field} {item.strip()!r} repeats {used[place]}")
                used[place] = f"day {n}'s {field}"
        here = cities[-1]
        nights.append(_accommodation(n, str(day["accommodation"]), here, last=n == len(days)))
    _minimum_nights(nights)


def _route(n: int, text: str, here: str, trip: Trip, last: bool) -> list[str]:
    """The cities of day `n` in order (one when it has no travel), checked against where the day starts."""
    named = re.fullmatch(r"\s*from (.+?)((?: to .+?)+)\s*", text, re.IGNORECASE)
    names = [named.group(1), *named.group(2).split(" to ")[1:]] if named else [text]
    cities = [_canonical(c) for c in names]
    if None in cities or any(not _places()[c] for c in cities):
        raise Unsound(f"day {n}: current_city {text!r} names a place that is not a city of the database")
    if cities[0] != here:
        raise Unsound(f"day {n} starts in {cities[0]}, but the plan is in {here}")
    if n == 1 and len(cities) == 1:
        raise Unsound(f"day 1 does not leave {here}: give it as from {here} to ...")
    for city in cities[1:-1] if last else cities[1:]:
        if city == trip.origin or trip.destination not in (city, _places()[city]):
            raise Unsound(f"day {n} goes to {city}, which is not in {trip.destination}")
    if last and cities[-1] != trip.origin:
        raise Unsound(f"the last day ends in {cities[-1]}, not back in {trip.origin}")
    return cities


def _transport(n: int, text: str, cities: list[str], day: Date) -> None:
    legs = [] if text.strip() == "-" else [leg.strip() for leg in text.split(";") if leg.strip()]
    moves = list(pairwise(cities))
    if len(legs) != len(moves):
        raise Unsound(f"day {n}: transportation {text!r} has {len(legs)} legs for the {len(moves)} moves of "
                      f"current_city")
    landed = "00:00"  # when the day's last flight so far landed ("24:00" after midnight)
    for leg, (a, b) in zip(legs, moves, strict=True):
        flight, road = FLIGHT.match(leg), ROAD.match(leg)
        found = flight or road
        if not found:
            raise Unsound(f"day {n}: transportation {leg!r} is neither a flight (Flight Number: ...), "
                          "Self-driving nor Taxi")
        if (_canonical(found.group(2)), _canonical(found.group(3))) != (a, b):
            raise Unsound(f"day {n}: transportation {leg!r} does not go from {a} to {b}")
        if flight:
            flights = tool("flight_search")(a, b, day.isoformat())["flights"]
            times = (flight.group(4).zfill(5), flight.group(5).zfill(5))
            if not any((f["flight"], f["departure"], f["arrival"]) == (flight.group(1), *times) for f in flights):
                raise Unsound(f"day {n}: there is no flight {flight.group(1)} from {a} to {b} on {day} at "
                              f"{times[0]}-{times[1]}")
            if times[0] < landed:
                raise Unsound(f"day {n}: flight {flight.group(1)} leaves at {times[0]}, before the flight before it "
                              f"lands ({landed})")
            landed = times[1] if times[1] > times[0] else "24:00"
        else:
            _road(n, leg, road.group(4) or "", tool("distance")(a, b, road.group(1).lower()))


def _road(n: int, leg: str, details: str, facts: dict[str, Any]) -> None:
    """The distance and cost a road leg states, where it states them, are the database's (to the unit)."""
    for key, fact in (("distance", facts["miles"]), ("cost", facts["cost"])):
        stated = re.search(rf"{key}:\s*\$?([\d,]+(?:\.\d+)?)", details, re.IGNORECASE)
        if stated and abs(float(stated.group(1).replace(",", "")) - fact) > 1:
            raise Unsound(f"day {n}: {leg!r} states {key} {stated.group(1)}, the database says {fact}")


def _place(n: int, field: str, item: str, cities: list[str]) -> tuple[str, str, str]:
    """(kind, name, city) of "Name, City" in `field` of day `n`, which must be in one of the day's cities."""
    name, _, city = item.strip().rpartition(",")
    found = _canonical(city)
    if found not in cities:
        raise Unsound(f"day {n}: {field} {item.strip()!r} is not in {' or '.join(cities)} (give it as Name, City)")
    kind = "attractions" if field == "attraction" else "restaurants"
    known = {r["name"].casefold() for r in tool(f"{kind[:-1]}_search")(found, 50)[kind]}
    if name.strip().casefold() not in known:
        raise Unsound(f"day {n}: {field} {name.strip()!r} is not one of the {kind} of {found}")
    return kind, name.strip().casefold(), found


def _accommodation(n: int, text: str, here: str, last: bool) -> tuple[str, int] | None:
    """(name, minimum nights) of the accommodation of night `n`, or None on the last day."""
    if last:
        if text.strip() != "-":
            raise Unsound(f"day {n}: the last day goes home and needs no accommodation, not {text!r}")
        return None
    name, _, city = text.strip().rpartition(",")
    if _canonical(city) != here:
        raise Unsound(f"day {n}: accommodation {text!r} is not in {here}, where the day ends")
    stays = [s for s in tool("accommodation_search")(here, 50)["accommodations"]
             if s["name"].casefold() == name.strip().casefold()]
    if not stays:
        raise Unsound(f"day {n}: accommodation {name.strip()!r} is not one of the accommodations of {here}")
    return f"{name.strip()}, {here}", min(s["minimum_nights"] for s in stays)


def _minimum_nights(nights: list[tuple[str, int] | None]) -> None:
    """Each stay (consecutive nights in one place) is at least as long as that place's minimum nights."""
    start = 0
    for n in range(1, len(nights) + 1):
        if n == len(nights) or nights[n] != nights[start]:
            stay = nights[start]
            if stay is not None and n - start < stay[1]:
                raise Unsound(f"day {start + 1}: {stay[0]} takes at least {stay[1]} nights, the plan stays "
                              f"{n - start}")
            start = n
