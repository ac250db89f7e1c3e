"""The travel database and its tools: city_search, flight_search, distance, restaurant_search,
attraction_search, accommodation_search, place_search (the places a text names); and trip_dates, the calendar
of a trip.

The database is a SQLite file generated deterministically (same seed, same rows) on first use under the flowrun
cache (`$XDG_CACHE_HOME/flowrun`, else `~/.cache/flowrun`; FLOWRUN_TRAVEL_DB names another file), or with
`python tools/travel.py PATH`. Seven US states, 30 cities; flights exist on every date, with numbers and prices
that depend on the date.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import sqlite3
import sys
from datetime import date as Date
from datetime import timedelta
from pathlib import Path
from typing import Any

VERSION = 1
CITIES = {  # state -> city -> (latitude, longitude)
    "Texas": {"Austin": (30.27, -97.74), "Dallas": (32.78, -96.80), "Houston": (29.76, -95.37),
              "San Antonio": (29.42, -98.49), "El Paso": (31.76, -106.49)},
    "California": {"Los Angeles": (34.05, -118.24), "San Francisco": (37.77, -122.42),
                   "San Diego": (32.72, -117.16), "Sacramento": (38.58, -121.49), "Fresno": (36.74, -119.79)},
    "Washington": {"Seattle": (47.61, -122.33), "Spokane": (47.66, -117.43), "Tacoma": (47.25, -122.44),
                   "Olympia": (47.04, -122.90)},
    "New York": {"New York City": (40.71, -74.01), "Buffalo": (42.89, -78.88), "Rochester": (43.16, -77.61),
                 "Albany": (42.65, -73.76)},
    "Florida": {"Miami": (25.76, -80.19), "Orlando": (28.54, -81.38), "Tampa": (27.95, -82.46),
                "Jacksonville": (30.33, -81.66)},
    "Illinois": {"Chicago": (41.88, -87.63), "Springfield": (39.78, -89.65), "Peoria": (40.69, -89.59),
                 "Rockford": (42.27, -89.09)},
    "Colorado": {"Denver": (39.74, -104.99), "Boulder": (40.01, -105.27), "Colorado Springs": (38.83, -104.82),
                 "Fort Collins": (40.59, -105.08)},
}
CUISINES = ["American", "Mexican", "Italian", "Chinese", "Japanese", "Indian", "Thai", "French", "BBQ", "Seafood",
            "Vegetarian", "Cafe"]
WORDS = ["Golden", "Blue", "Old", "Little", "Silver", "Green", "Red", "Lucky", "Happy", "Royal", "Sunny", "Urban"]
PLACES = ["Oak", "River", "Harbor", "Garden", "Corner", "Lantern", "Table", "Spoon", "Fork", "Bridge", "Hill"]
SIGHTS = ["Museum of Art", "History Museum", "Botanical Garden", "City Park", "Science Center", "Zoo", "Aquarium",
          "Old Town", "Riverwalk", "Observation Tower"]
STAYS = ["Inn", "Hotel", "Suites", "Lodge", "Guesthouse", "Apartments"]
ROOMS = ["Entire home", "Private room", "Shared room"]


def database() -> Path:
    """The travel database, built on first use."""
    named = os.environ.get("FLOWRUN_TRAVEL_DB")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flowrun"
    path = Path(named) if named else cache / f"travel-{VERSION}.db"
    if not path.is_file():
        build(path)
    return path


def build(path: Path) -> None:
    """Write the travel database to `path` (the same rows every time)."""
    rng = random.Random(VERSION)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    db = sqlite3.connect(partial)
    db.executescript("""
        CREATE TABLE cities (name TEXT PRIMARY KEY, state TEXT, latitude REAL, longitude REAL);
        CREATE TABLE restaurants (name TEXT, city TEXT, cuisine TEXT, average_cost INTEGER, rating REAL);
        CREATE TABLE attractions (name TEXT, city TEXT, address TEXT, hours TEXT);
        CREATE TABLE accommodations (name TEXT, city TEXT, price INTEGER, rating REAL, room_type TEXT,
                                     minimum_nights INTEGER, maximum_occupancy INTEGER);
    """)
    for state, cities in CITIES.items():
        for city, (lat, lon) in cities.items():
            db.execute("INSERT INTO cities VALUES (?, ?, ?, ?)", (city, state, lat, lon))
            for _ in range(12):
                name = f"{rng.choice(WORDS)} {rng.choice(PLACES)} {rng.choice(CUISINES)}"
                db.execute("INSERT INTO restaurants VALUES (?, ?, ?, ?, ?)",
                           (name, city, name.rsplit(" ", 1)[1], rng.randint(10, 90), round(rng.uniform(3, 5), 1)))
            for sight in rng.sample(SIGHTS, 6):
                db.execute("INSERT INTO attractions VALUES (?, ?, ?, ?)",
                           (f"{city} {sight}", city, f"{rng.randint(1, 999)} {rng.choice(PLACES)} Street",
                            f"{rng.randint(7, 10)}:00-{rng.randint(16, 21)}:00"))
            for _ in range(6):
                db.execute("INSERT INTO accommodations VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (f"{rng.choice(WORDS)} {rng.choice(PLACES)} {rng.choice(STAYS)}", city,
                            rng.randint(60, 400), round(rng.uniform(3, 5), 1), rng.choice(ROOMS),
                            rng.choice([1, 1, 1, 2, 3]), rng.randint(1, 6)))
    db.commit()
    db.close()
    partial.replace(path)


def _connect() -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{database()}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


def _city(db: sqlite3.Connection, name: str) -> sqlite3.Row:
    row = db.execute("SELECT * FROM cities WHERE lower(name) = lower(?)", (name.strip(),)).fetchone()
    if row is None:
        known = ", ".join(r["name"] for r in db.execute("SELECT name FROM cities ORDER BY name"))
        raise ValueError(f"no city {name!r} in the travel database; cities: {known}")
    return row


def _miles(a: sqlite3.Row, b: sqlite3.Row) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (a["latitude"], a["longitude"], b["latitude"], b["longitude"]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 3958.8 * 2 * math.asin(math.sqrt(h)) * 1.2  # roads are longer than the great circle


def city_search(state: str) -> dict[str, Any]:
    """The cities of `state`."""
    with _connect() as db:
        rows = db.execute("SELECT name FROM cities WHERE lower(state) = lower(?) ORDER BY name", (state.strip(),))
        cities = [r["name"] for r in rows]
    if not cities:
        raise ValueError(f"no state {state!r} in the travel database; states: {', '.join(CITIES)}")
    return {"state": state, "cities": cities}


def distance(origin: str, destination: str, mode: str) -> dict[str, Any]:
    """Distance, duration and cost from `origin` to `destination` by taxi or self-driving."""
    with _connect() as db:
        a, b = _city(db, origin), _city(db, destination)
    miles = _miles(a, b)
    per_mile = 2.5 if mode == "taxi" else 0.35
    return {"origin": a["name"], "destination": b["name"], "mode": mode, "miles": round(miles),
            "hours": round(miles / 55, 1), "cost": round(miles * per_mile)}


def flight_search(origin: str, destination: str, date: str) -> dict[str, Any]:
    """Flights from `origin` to `destination` on `date` (YYYY-MM-DD): number, times, price."""
    try:
        day = Date.fromisoformat(date)
    except ValueError:
        raise ValueError(f"{date!r} is not a date: use YYYY-MM-DD") from None
    with _connect() as db:
        a, b = _city(db, origin), _city(db, destination)
    if a["name"] == b["name"]:
        return {"origin": a["name"], "destination": b["name"], "date": date, "flights": []}
    miles = _miles(a, b) / 1.2
    seed = int(hashlib.sha256(f"{a['name']}|{b['name']}|{day}".encode()).hexdigest()[:12], 16)
    rng = random.Random(seed)
    flights = []
    for _ in range(rng.randint(1, 4) if miles > 150 else 0):
        departure = rng.randint(6 * 60, 21 * 60)
        arrival = departure + round(45 + miles / 8)
        flights.append({"flight": f"F{rng.randint(0, 9999999):07d}", "departure": f"{departure // 60:02d}:"
                        f"{departure % 60:02d}", "arrival": f"{arrival // 60 % 24:02d}:{arrival % 60:02d}",
                        "price": round(60 + miles * rng.uniform(0.08, 0.2))})
    flights.sort(key=lambda f: f["departure"])
    return {"origin": a["name"], "destination": b["name"], "date": date, "flights": flights}


def place_search(text: str) -> dict[str, Any]:
    """The cities and states of the database that `text` names, in the order it names them (the longest name first
    where names overlap: New York City, not New York)."""
    with _connect() as db:
        rows = db.execute("SELECT name, state FROM cities").fetchall()
    places = {r["name"]: {"name": r["name"], "kind": "city", "state": r["state"]} for r in rows}
    places |= {r["state"]: {"name": r["state"], "kind": "state"} for r in rows}
    names = "|".join(re.escape(p) for p in sorted(places, key=len, reverse=True))
    found = [places[next(p for p in places if p.casefold() == m.group(1).casefold())]
             for m in re.finditer(rf"\b({names})\b", text, re.IGNORECASE)]
    return {"places": found}


def trip_dates(start: str, days: int) -> dict[str, Any]:
    """The date of each day of a trip of `days` days from `start` (YYYY-MM-DD)."""
    try:
        first = Date.fromisoformat(start)
    except ValueError:
        raise ValueError(f"{start!r} is not a date: use YYYY-MM-DD") from None
    return {"start": start, "days": days, "dates": [(first + timedelta(days=n)).isoformat() for n in range(days)]}


def _listing(table: str, columns: str, city: str, limit: int, order: str) -> dict[str, Any]:
    with _connect() as db:
        name = _city(db, city)["name"]
        rows = db.execute(f"SELECT {columns} FROM {table} WHERE city = ? ORDER BY {order} LIMIT ?", (name, limit))
        return {"city": name, table: [dict(r) for r in rows]}


def restaurant_search(city: str, limit: int = 10) -> dict[str, Any]:
    """Restaurants of `city`, best rated first."""
    return _listing("restaurants", "name, cuisine, average_cost, rating", city, limit, "rating DESC, name")


def attraction_search(city: str, limit: int = 10) -> dict[str, Any]:
    """Attractions of `city`."""
    return _listing("attractions", "name, address, hours", city, limit, "name")


def accommodation_search(city: str, limit: int = 10) -> dict[str, Any]:
    """Accommodations of `city`, cheapest first."""
    columns = "name, price, rating, room_type, minimum_nights, maximum_occupancy"
    return _listing("accommodations", columns, city, limit, "price, name")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else database()
    build(target)
    print(target)
