"""The example agents in flows/: valid with zero warnings, and shaped as their descriptions say."""

from __future__ import annotations

import re
from pathlib import Path

import networkx as nx
import pytest

from engine.flow.diagnostics import RULES
from engine.flow.validate import load_flow
from tests.conftest import FLOW_FILES, FLOWS, ROOT

EXAMPLES = FLOW_FILES
AIOS_AGENTS = {"travel_agent", "math_agent", "narrative_agent", "rec_agent"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_valid_without_warnings_and_has_schema_header(path: Path) -> None:
    checked = load_flow(path)
    assert checked.diagnostics == []
    header = path.read_text().splitlines()[0]
    assert header.startswith("# yaml-language-server: $schema=")
    assert (path.parent / header.split("=", 1)[1]).resolve() == (ROOT / "schemas" / "flow.schema.json").resolve()


def test_the_aios_agents_and_at_least_two_more_are_there() -> None:
    names = {p.stem for p in EXAMPLES}
    assert names >= AIOS_AGENTS
    assert len(names - AIOS_AGENTS) >= 2


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.stem not in AIOS_AGENTS], ids=lambda p: p.stem)
def test_own_agents_use_tools_and_a_loop(path: Path) -> None:
    checked = load_flow(path)
    assert checked.flow.tools
    assert any(step.used_tools() for step in checked.flow.steps.values())
    assert not nx.is_directed_acyclic_graph(checked.graph)


def test_travel_agent_has_the_aios_shape() -> None:
    checked = load_flow(FLOWS / "travel_agent.yaml")
    kinds = [step.kind for step in checked.flow.steps.values()]
    assert len(kinds) == 24
    assert (kinds.count("process"), kinds.count("decision"), kinds.count("terminal")) == (17, 6, 1)
    assert not any(re.fullmatch(r"step_?\d+", sid) for sid in checked.flow.steps)  # meaningful ids


def test_readme_rule_table_matches_the_rules() -> None:
    rows = re.findall(r"^\| (FR\d{3}) \| ([a-z-]+) \| (error|warning) \|", (ROOT / "README.md").read_text(), re.M)
    assert rows == [(r.code, r.name, r.severity.value) for r in RULES.values()]
