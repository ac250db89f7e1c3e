"""The bundled tools' code, loaded from their manifests and called through the kernel."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.flow.manifest import load_tools
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage
from engine.kernel.tables import ToolCallRow
from engine.kernel.tools import ToolError, tool_from_manifest
from engine.llm.scripted import ScriptedBackend


@pytest.fixture
def kernel(tmp_path: Path) -> Kernel:
    bundled = load_tools([]).tools
    kernel = Kernel(ScriptedBackend.from_responses([]), Storage(f"sqlite:///{tmp_path / 'db.sqlite'}"),
                    tools=[tool_from_manifest(bundled[name]) for name in ("calculator", "read_file", "write_file")],
                    workspaces=tmp_path / "workspaces")
    kernel.open_run("run", "math", ["calculator"])
    for run in ("run1", "run2"):
        kernel.open_run(run, "writer", ["read_file", "write_file"])
    return kernel


def calc(kernel: Kernel, expression: str):
    return asyncio.run(kernel.call_tool("math", "run", "calculator", {"expression": expression})).result["result"]


@pytest.mark.parametrize(("expression", "value"), [
    ("(12.5 * 4) / sqrt(16)", 12.5),
    ("180 / 2.5 * 1000 / 3600", 20.0),
    ("2 ^ 10", 1024),
    ("15% * 240", 36.0),
    ("7 % 3 + 50%", 1.5),
    ("round(pi * 2, 3)", 6.283),
    ("factorial(5) + max(3, 7) - abs(-2)", 125),
    ("log10(1000) + floor(2.7)", 5.0),
    # units cancel out
    ("3.5 * minutes / seconds", 210),
    ("2 * weeks / hours", 336),
    ("90 * km / (45 * minutes) / (km / h)", 120),
    ("4 * litres / (500 * ml)", 8),
    ("5 * miles / kilometres", 8.04672),
    ("(3 * m + 20 * cm) / cm", 320),
    ("min(3, 4) * min / s", 180),  # min() the function, min the minute
    # as soon as units cancel out, the number is plain: pint would round it, or take a remainder, in hours/minute
    ("round(90 * minutes / hours)", 2),
    ("round(2.25 * hours / minutes, 1)", 135),
    ("(2 * hours / minutes) % 7", 1),
])
def test_arithmetic(kernel: Kernel, expression: str, value: float) -> None:
    assert calc(kernel, expression) == pytest.approx(value)


@pytest.mark.parametrize(("expression", "why"), [
    ("90 * km / (45 * minutes)", r"gives 2\.0 km/min, not a number: its units do not cancel out"),
    ("3 * m + 2 * s", "Cannot convert from 'meter'"),
    ("2 * apples", "'apples' is not defined"),
])
def test_units_left_over_or_unknown_are_refused_with_a_reason(expression: str, why: str) -> None:
    from tools.calculator import calculate

    with pytest.raises(ValueError, match=f"cannot evaluate .*{why}"):
        calculate(expression)


@pytest.mark.parametrize("expression", [
    "__import__('os').system('true')", "().__class__", "9 ** 9 ** 9", "1 / 0", "factorial(10 ** 6)", "'a' * 3",
    "open('x')", "sqrt(-1)", "2 +",
])
def test_anything_else_is_refused_with_a_reason(kernel: Kernel, expression: str) -> None:
    from tools.calculator import calculate

    with pytest.raises(ToolError, match=r"cannot evaluate|not arithmetic|does not match"):  # the manifest's pattern
        calc(kernel, expression)
    with pytest.raises(ValueError, match=r"cannot evaluate|not arithmetic"):  # and the code itself
        calculate(expression)


def test_every_call_is_recorded(kernel: Kernel) -> None:
    calc(kernel, "1 + 1")
    with pytest.raises(ToolError):
        calc(kernel, "1 / 0")
    rows = kernel.storage.rows(ToolCallRow)
    assert [(r.result, r.error is None) for r in rows] == [({"expression": "1 + 1", "result": 2}, True), (None, False)]


def files(kernel: Kernel, run: str, name: str, **arguments):
    return asyncio.run(kernel.call_tool("writer", run, name, arguments)).result


def test_files_stay_in_the_run_workspace(kernel: Kernel, tmp_path: Path) -> None:
    assert files(kernel, "run1", "write_file", path="notes/a.md", content="héllo") == {"path": "notes/a.md",
                                                                                      "bytes": 6}
    assert (tmp_path / "workspaces" / "run1" / "notes" / "a.md").read_text() == "héllo"
    assert files(kernel, "run1", "read_file", path="notes/a.md")["content"] == "héllo"
    with pytest.raises(ToolError, match="no file"):
        files(kernel, "run2", "read_file", path="notes/a.md")  # another run, another workspace
    (tmp_path / "secret.txt").write_text("no")
    for path in ("../../secret.txt", "/etc/passwd", "notes/../../../secret.txt"):
        with pytest.raises(ToolError, match="outside the run's workspace"):
            files(kernel, "run1", "read_file", path=path)
    with pytest.raises(ToolError, match="outside"):
        files(kernel, "run1", "write_file", path="../escape.txt", content="x")
    assert not (tmp_path / "workspaces" / "escape.txt").exists()


def test_a_symlink_out_of_the_workspace_is_refused(kernel: Kernel, tmp_path: Path) -> None:
    files(kernel, "run1", "write_file", path="a.txt", content="x")
    (tmp_path / "workspaces" / "run1" / "link").symlink_to(tmp_path)
    with pytest.raises(ToolError, match="outside"):
        files(kernel, "run1", "read_file", path="link/db.sqlite")


@pytest.fixture
def travel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Kernel:
    monkeypatch.setenv("FLOWRUN_TRAVEL_DB", str(tmp_path / "travel.db"))
    names = ("city_search", "flight_search", "distance", "restaurant_search", "attraction_search",
             "accommodation_search")
    bundled = load_tools([]).tools
    kernel = Kernel(ScriptedBackend.from_responses([]), Storage(f"sqlite:///{tmp_path / 'db.sqlite'}"),
                    tools=[tool_from_manifest(bundled[n]) for n in (*names, "sql_query")])
    kernel.open_run("run", "travel", names)
    kernel.open_run("analysis", "analyst", ["sql_query"])  # its default database is the travel database
    return kernel


def trip(kernel: Kernel, name: str, **arguments):
    return asyncio.run(kernel.call_tool("travel", "run", name, arguments)).result


def test_the_travel_database_supports_a_multi_day_trip(travel: Kernel) -> None:
    cities = trip(travel, "city_search", state="Texas")["cities"]
    assert len(cities) >= 4 and "Austin" in cities
    flights = trip(travel, "flight_search", origin="Seattle", destination="Austin", date="2025-03-10")["flights"]
    assert flights and all(f["flight"].startswith("F") and len(f["flight"]) == 8 and f["price"] > 0 for f in flights)
    taxi = trip(travel, "distance", origin="Seattle", destination="Austin", mode="taxi")
    drive = trip(travel, "distance", origin="Seattle", destination="Austin", mode="self-driving")
    assert 1500 < taxi["miles"] == drive["miles"] < 3000 and taxi["cost"] > drive["cost"]
    for city in cities:
        assert len(trip(travel, "restaurant_search", city=city, limit=50)["restaurants"]) >= 9  # 3 meals, 3 days
        assert len(trip(travel, "attraction_search", city=city)["attractions"]) >= 3
        stays = trip(travel, "accommodation_search", city=city)["accommodations"]
        assert stays and stays == sorted(stays, key=lambda s: (s["price"], s["name"]))


def test_travel_answers_are_deterministic(travel: Kernel, tmp_path: Path) -> None:
    first = trip(travel, "flight_search", origin="Miami", destination="Denver", date="2025-06-01")
    from tools.travel import flight_search

    assert flight_search(origin="miami", destination="denver", date="2025-06-01") == first  # any case, called direct
    assert trip(travel, "flight_search", origin="Miami", destination="Denver", date="2025-06-02") != first
    from tools.travel import build

    build(tmp_path / "again.db")
    assert (tmp_path / "again.db").read_bytes() == (tmp_path / "travel.db").read_bytes()


def test_travel_errors_name_what_exists(travel: Kernel) -> None:
    from tools.travel import city_search, restaurant_search

    with pytest.raises(ValueError, match=r"no city 'Atlantis'.*cities: Albany"):
        restaurant_search(city="Atlantis")  # the code itself, as a manifest without enums would call it
    with pytest.raises(ValueError, match="no state 'Ohio'"):
        city_search(state="Ohio")
    with pytest.raises(ToolError, match='"Atlantis" is not one of'):
        trip(travel, "restaurant_search", city="Atlantis")  # the manifest's enums
    with pytest.raises(ToolError, match="mode"):
        trip(travel, "distance", origin="Austin", destination="Dallas", mode="walking")


def test_the_calculator_pattern_admits_exactly_its_functions_and_names() -> None:
    import re

    from tools.calculator import FUNCTIONS, NAMES

    pattern = load_tools([]).tools["calculator"].parameters["properties"]["expression"]["pattern"]
    words = set(re.findall(r"[a-z][a-z0-9]*", pattern))
    assert words >= set(FUNCTIONS) | set(NAMES)
    assert re.fullmatch(pattern, "round(16 * pi, 2) + 15% - 2^3")
    for runaway in ("15% of 240", "1.1.1.1", "12 * 7, 12", "2 * apples", "os", "3 hours"):
        assert not re.fullmatch(pattern, runaway)


# Each spelling of a unit the calculator's pattern admits (the rest it refuses, above).
UNITS = ["s", "sec", "second", "seconds", "min", "minute", "minutes", "h", "hr", "hour", "hours", "day", "days",
         "week", "weeks", "year", "years", "mm", "millimetre", "millimeters", "cm", "centimetres", "m", "metre",
         "meters", "km", "kilometre", "kilometers", "inch", "inches", "ft", "foot", "feet", "yd", "yards", "mi",
         "mile", "miles", "mg", "milligrams", "g", "gram", "grams", "kg", "kilogram", "tonne", "tonnes", "oz",
         "ounce", "lb", "pounds", "ml", "millilitre", "milliliters", "l", "L", "litre", "litres", "liter", "gallon",
         "gallons", "hectare", "acres", "mph", "kph"]


def test_the_calculator_pattern_admits_units_that_the_calculator_knows() -> None:
    import re

    from tools.calculator import calculate

    pattern = load_tools([]).tools["calculator"].parameters["properties"]["expression"]["pattern"]
    for unit in UNITS:
        expression = f"2.5 * {unit} / ({unit} * 5)"
        assert re.fullmatch(pattern, expression), unit
        assert calculate(expression)["result"] == pytest.approx(0.5), unit


def test_the_travel_manifests_enumerate_exactly_the_database(travel: Kernel) -> None:
    # A small model's constrained decoding can only name places that exist; the enums must follow the data.
    from tools.travel import CITIES

    cities = sorted(city for state in CITIES.values() for city in state)
    rows = query(travel, "SELECT name FROM cities ORDER BY name", max_rows=1000)["rows"]
    assert [r[0] for r in rows] == cities
    for tool in travel.tools.tools.values():
        for name, spec in tool.parameters["properties"].items():
            if name in ("origin", "destination", "city"):
                assert spec["enum"] == cities, (tool.name, name)
            elif name == "state":
                assert spec["enum"] == list(CITIES), tool.name


def query(kernel: Kernel, text: str, **extra):
    return asyncio.run(kernel.call_tool("analyst", "analysis", "sql_query", {"query": text, **extra})).result


def test_sql_query_reads_the_travel_database(travel: Kernel) -> None:
    result = query(travel, "SELECT state, count(*) AS n FROM cities GROUP BY state ORDER BY n DESC, state LIMIT 2")
    assert result["columns"] == ["state", "n"] and result["rows"] == [["California", 5], ["Texas", 5]]
    many = query(travel, "SELECT name FROM restaurants", max_rows=3)
    assert len(many["rows"]) == 3 and many["truncated"]


@pytest.mark.parametrize("statement", [
    "DELETE FROM cities", "UPDATE cities SET state = 'x'", "DROP TABLE cities", "INSERT INTO cities VALUES (1,2,3,4)",
    "ATTACH DATABASE ':memory:' AS other", "PRAGMA writable_schema = 1", "SELECT 1; DELETE FROM cities",
    "CREATE TABLE t (x)",
])
def test_sql_query_refuses_anything_but_reading(travel: Kernel, statement: str) -> None:
    with pytest.raises(ToolError, match="only one read-only SELECT"):
        query(travel, statement)
    assert query(travel, "SELECT count(*) FROM cities")["rows"] == [[30]]
