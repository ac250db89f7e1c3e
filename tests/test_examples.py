"""The example agents in flows/: valid with zero warnings, and shaped as their descriptions say."""

from __future__ import annotations

import re
from pathlib import Path

import networkx as nx
import pytest

from engine.flow.diagnostics import RULES
from engine.flow.model import all_steps
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
def test_own_agents_use_tools_and_repeat_work(path: Path) -> None:
    """Each uses tools, its own (its sub-flows' too) or those of the agents it calls, and loops, maps over items or
    retries."""
    checked = load_flow(path)
    flows = checked.compiled.flows()
    assert any(step.used_tools() for flow in flows for _, step in all_steps(flow))
    assert not nx.is_directed_acyclic_graph(checked.graph) or any(
        step.kind == "map" or step.retry for step in checked.flow.steps.values())


def test_the_team_examples_run_agents_in_each_new_kind_of_step() -> None:
    kinds = {step.kind for name in ("trip_team", "review_loop", "math_sheet")
             for step in load_flow(FLOWS / f"{name}.yaml").flow.steps.values()}
    assert {"agent", "map"} <= kinds


def test_travel_agent_asks_the_model_only_to_read_the_request() -> None:
    steps = load_flow(FLOWS / "travel_agent.yaml").flow.steps.values()
    asks = [s.id for s in steps if s.kind != "decision" and s.output is None and s.arguments is None]
    assert asks == ["parse_query"]  # every other step is data: `output`, a tool's `arguments` or `decide`
    assert all(s.decide for s in steps if s.kind == "decision")
    assert not any(re.fullmatch(r"step_?\d+", s.id) for s in steps)  # meaningful ids


def test_readme_rule_table_matches_the_rules() -> None:
    rows = re.findall(r"^\| (FR\d{3}) \| ([a-z-]+) \| (error|warning) \|", (ROOT / "README.md").read_text(), re.M)
    assert rows == [(r.code, r.name, r.severity.value) for r in RULES.values()]


def test_readme_tools_table_lists_every_bundled_tool_as_its_manifest_says() -> None:
    from engine.flow.manifest import load_tools

    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", (ROOT / "README.md").read_text(),
                      re.M)
    tools = load_tools([]).tools
    assert [name for name, *_ in rows] == sorted(tools)
    for name, provider, variables, hosts in rows:
        manifest = tools[name]
        assert provider.strip() == (manifest.provider or "flowrun (offline)")
        assert variables.strip() == (", ".join(f"`{v}`" for v in manifest.variables) or "—")
        assert hosts.strip() == (", ".join(f"`{h}`" for h in manifest.hosts) or "none")
