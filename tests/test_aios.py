"""`flowrun import-aios`: legacy AIOS agent configs become format-1 flows that validate cleanly."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from click.testing import CliRunner

from engine.cli import main
from engine.flow.aios import import_aios, to_yaml
from engine.flow.loader import load_file, load_yaml
from engine.flow.validate import check_flow_text
from tests.conftest import FIXTURES

AIOS = FIXTURES / "aios"


def _import(path: Path, tools) -> tuple[dict, list]:
    imported = import_aios(load_file(path), tools)
    return imported.data, imported.diagnostics


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_legacy_travel_agent_imports_cleanly_with_its_24_step_graph(tools) -> None:
    data, problems = _import(AIOS / "travel_agent.json", tools)
    assert problems == []
    checked = check_flow_text(to_yaml(data, None, "travel_agent.json"), "imported.yaml", tools)
    assert checked.diagnostics == []  # not even a warning
    kinds = Counter(step.kind for step in checked.flow.steps.values())
    assert (kinds["process"], kinds["decision"], kinds["terminal"]) == (17, 6, 1)
    assert checked.graph.number_of_edges() == 29  # one way on from each process, two branches from each decision


def test_every_branch_of_a_decision_is_kept_and_names_are_case_insensitive(tools) -> None:
    source = (AIOS / "travel_agent.json").read_text()
    assert "::step 10" in source and "STEP 23:::decision" in source  # the fixture does mix cases
    data, _ = _import(AIOS / "travel_agent.json", tools)
    steps = data["steps"]
    assert steps["step_2"]["branches"] == {"city": "step_4", "state": "step_3"}
    assert steps["step_23"]["branches"] == {"no": "step_9", "yes": "step_24"}
    assert steps["step_9"]["next"] == "step_10"
    assert next(iter(steps)) == "step_1"


def test_tools_from_prose_tool_info(tools) -> None:
    data, _ = _import(AIOS / "travel_agent.json", tools)
    assert data["tools"] == ["city_search", "distance", "flight_search", "restaurant_search", "attraction_search",
                             "accommodation_search"]


def test_real_aios_config_with_workflow_and_vendor_tools(tools) -> None:
    path = AIOS / "math_agent_aios.json"
    data, problems = _import(path, tools)
    line = _line_of(path, "wolfram/wolfram_alpha")
    assert [(d.code, d.line) for d in problems] == [("FR502", line)]
    assert problems[0].message.split("'")[1] == "currency_converter"  # wolfram_alpha is a tool of flowrun's
    assert data["tools"] == ["wolfram_alpha", "calculator"]
    assert [s["kind"] for s in data["steps"].values()] == ["process", "process", "terminal"]
    assert check_flow_text(to_yaml(data, None, path.name), "m.yaml", tools).diagnostics == []


def test_config_without_flow_becomes_process_then_terminal(tools) -> None:
    data, problems = _import(AIOS / "description_only.json", tools)
    assert problems == []
    assert [s["kind"] for s in data["steps"].values()] == ["process", "terminal"]
    assert data["description"] == "You answer questions about {{ templates }} briefly. Be kind."
    assert check_flow_text(to_yaml(data, None, "d.json"), "d.yaml", tools).diagnostics == []


def test_template_markup_in_legacy_text_is_kept_literal(tools) -> None:
    config = {"name": "T", "description": "d", "flow": ["Step 1:::Terminal:::Answer as {{json}}.:::"]}
    data, problems = _import_text(json.dumps(config), tools)
    assert problems == []
    assert data["steps"]["step_1"]["instruction"] == "{% raw %}Answer as {{json}}.{% endraw %}"
    assert check_flow_text(to_yaml(data, None, "t.json"), "t.yaml", tools).diagnostics == []


def _import_text(text: str, tools) -> tuple[dict, list]:
    imported = import_aios(load_yaml(text, "config.json"), tools)
    return imported.data, imported.diagnostics


def test_broken_legacy_flow_is_reported_at_each_bad_entry(tools) -> None:
    path = AIOS / "broken.json"
    data, problems = _import(path, tools)
    assert data is None
    assert [(d.code, d.line) for d in problems] == [
        ("FR501", _line_of(path, "Step 2:::Choice")),
        ("FR501", _line_of(path, "Step 3:::Decision")),
        ("FR501", _line_of(path, "Step 4:::Process")),
    ]
    assert "Step 9" in problems[1].message


def test_malformed_configs_are_diagnostics_not_exceptions(tools) -> None:
    for text in ("[1, 2]", '{"name": ""}', '{"name": "x", "description": 5}', '{"name": "x", "flow": "nope"}',
                 '{"name": "x", "flow": [7, "a:::b"]}', '{"name": "x", "tool_info": "calculator"}', "{broken"):
        _, problems = _import_text(text, tools)
        assert problems and all(d.code in ("FR001", "FR501") for d in problems), text


def test_cli_writes_a_flow_that_validates(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "travel.yaml"
    out.parent.mkdir()
    runner = CliRunner()
    result = runner.invoke(main, ["import-aios", str(AIOS / "travel_agent.json"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    header = out.read_text().splitlines()[0]
    schema = (out.parent / header.split("$schema=")[1]).resolve()
    assert schema.name == "flow.schema.json" and schema.is_file()
    assert runner.invoke(main, ["validate", "--strict", str(out)]).exit_code == 0


def test_cli_fails_on_a_broken_config() -> None:
    result = CliRunner().invoke(main, ["import-aios", str(AIOS / "broken.json")])
    assert result.exit_code == 2
    assert f"broken.json:{_line_of(AIOS / 'broken.json', 'Step 2:::Choice')}:9: error FR501" in result.output
