"""The compiler's graph, the schema mapping, and template analysis."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx

from engine.flow.compiler import compile_flow
from engine.flow.kinds import KINDS
from engine.flow.model import flow_from_data
from engine.flow.validate import check_flow_text

FLOW = """\
flowrun: 1
name: G
limits: {max_steps: 9}
steps:
  ask:
    kind: decision
    question: which?
    branches: {a: work, b: work, c: done}
  work:
    kind: process
    instruction: work
    next: ask
  done:
    kind: terminal
    instruction: end
"""


def test_graph_nodes_carry_steps_and_edges_carry_labels(tools) -> None:
    checked = check_flow_text(FLOW, "g.yaml", tools)
    assert checked.ok and not checked.diagnostics
    graph = checked.graph
    assert isinstance(graph, nx.DiGraph)
    assert checked.compiled.start == "ask"
    assert graph.nodes["work"]["step"].kind == "process"
    assert sorted(graph.edges(keys=True)) == [("ask", "done", "c"), ("ask", "work", "a"), ("ask", "work", "b"),
                                              ("work", "ask", "next")]
    assert all(data["label"] == key for _, _, key, data in graph.edges(keys=True, data=True))
    assert [checked.compiled.next("ask", label) for label in ("a", "c", "next")] == ["work", "done", None]


def test_every_kind_of_step_is_in_the_schema_and_has_an_executor() -> None:
    from engine.interpreter.steps import COSTS, EXECUTORS
    schema = json.loads((Path(__file__).parents[1] / "schemas" / "flow.schema.json").read_text())
    assert set(schema["$defs"]["step"]["properties"]["kind"]["enum"]) == set(KINDS) == set(EXECUTORS) == set(COSTS)


def test_start_defaults_to_first_step_and_can_be_set() -> None:
    data = {"steps": {"x": {"kind": "terminal", "instruction": "i"}, "y": {"kind": "terminal", "instruction": "i"}}}
    assert flow_from_data(data).start == "x"
    assert flow_from_data({**data, "start": "y"}).start == "y"


def test_terminal_edges_are_not_part_of_the_graph() -> None:
    flow = flow_from_data({"steps": {"t": {"kind": "terminal", "instruction": "i", "next": "t"}}})
    assert compile_flow(flow).graph.number_of_edges() == 0


def test_schema_errors_still_let_graph_checks_run(tools) -> None:
    text = ("flowrun: 1\nname: 5\nsteps:\n  a: {kind: process, instruction: go, next: ghost}\n"
            "  b: {kind: terminal, instruction: x}\n")
    codes = {d.code for d in check_flow_text(text, "x.yaml", tools).diagnostics}
    assert codes == {"FR003", "FR101", "FR102"}


def test_format_version_message_names_the_supported_version(tools) -> None:
    text = "flowrun: 7\nname: x\nsteps:\n  a: {kind: terminal, instruction: x}\n"
    (problem,) = check_flow_text(text, "v.yaml", tools).diagnostics
    assert problem.code == "FR005" and "7" in problem.message and "flowrun: 1" in problem.message


def test_invalid_step_id_is_located_at_the_key(tools) -> None:
    text = ("flowrun: 1\nname: x\nsteps:\n  ok: {kind: process, instruction: go, next: 2bad}\n"
            "  2bad: {kind: terminal, instruction: x}\n")
    problems = [(d.code, d.line, d.column) for d in check_flow_text(text, "i.yaml", tools).diagnostics]
    assert ("FR003", 5, 3) in problems


def test_templates_allow_jinja_locals_and_computed_keys(tools) -> None:
    text = """\
flowrun: 1
name: T
inputs:
  files: {type: array, items: {type: string}}
steps:
  a:
    kind: process
    instruction: >-
      {% set n = visits.a %}{% for f in inputs.files %}{{ loop.index }} {{ f | upper }}{% endfor %}
      {{ inputs.files[n - 1] }} {{ range(3) | list }}
    next: b
  b:
    kind: terminal
    instruction: "{{ steps.a.output }}"
"""
    assert check_flow_text(text, "t.yaml", tools).diagnostics == []


def test_decide_checks_every_constant_outcome(tools) -> None:
    text = """\
flowrun: 1
name: D
limits: {max_steps: 9}
steps:
  a:
    kind: decision
    question: q
    decide: "{{ 'x' if visits.a > 1 else ('y' if visits.a == 1 else 'z') }}"
    branches: {x: b, y: b}
  b:
    kind: terminal
    instruction: end
"""
    (problem,) = check_flow_text(text, "d.yaml", tools).diagnostics
    assert problem.code == "FR303" and "'z'" in problem.message


def test_decide_from_data_is_not_second_guessed(tools) -> None:
    text = """\
flowrun: 1
name: D
inputs:
  choice: {type: string}
steps:
  a:
    kind: decision
    question: q
    decide: "{{ inputs.choice }}"
    branches: {x: b, y: b}
  b:
    kind: terminal
    instruction: end
"""
    assert check_flow_text(text, "d.yaml", tools).diagnostics == []


def test_context_policy_is_read_from_the_flow(tools) -> None:
    base = "flowrun: 1\nname: C\nsteps:\n  a: {kind: terminal, instruction: x}\n"
    assert check_flow_text(base, "c.yaml", tools).flow.context_policy == "truncate"
    checked = check_flow_text(base + "context: {policy: summarize}\n", "c.yaml", tools)
    assert checked.diagnostics == [] and checked.flow.context_policy == "summarize"
    wrong = check_flow_text(base + "context: {policy: forget}\n", "c.yaml", tools)
    assert [d.code for d in wrong.diagnostics] == ["FR003"]
