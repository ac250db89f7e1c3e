"""A `tool:` step's `arguments:` (the tool's arguments built from data, with no model call): what validation
reports, and what a run on the scripted backend calls, keeps and replays."""

from __future__ import annotations

from pathlib import Path

from engine.flow.validate import check_flow_text
from tests.test_interpreter import run, stored_steps
from tests.test_run_cli import cli
from tests.test_step_data import diagnostics, flow_file, model_calls

FLOW = """\
flowrun: 1
name: Twice
inputs:
  n: {type: integer}
  unit: {type: string}
tools: [calculator]
steps:
  compute:
    kind: process
    tool: calculator
    arguments: {expression: "{{ inputs.n }} * 2"}
    output: "{{ result.result }}"
    next: answer
  answer:
    kind: terminal
    output: "{{ steps.compute.output }} {{ inputs.unit }}"
"""


def test_a_tool_called_with_arguments_from_data_asks_the_model_nothing(tmp_path: Path) -> None:
    outcome, kernel = run(flow_file(tmp_path, FLOW), [], {"n": 21, "unit": "km"}, tmp_path)
    assert outcome.status == "finished", outcome.error
    assert outcome.answer == "42 km"
    assert model_calls(kernel) == []
    compute = stored_steps(kernel, outcome)[0]
    assert compute.tools[0]["tool"] == "calculator"
    assert compute.tools[0]["result"] == {"expression": "21 * 2", "result": 42}
    assert (compute.output, compute.prompt, compute.ask) == (42, None, "compute")


def test_an_argument_that_is_one_expression_keeps_its_value(tmp_path: Path) -> None:
    text = (FLOW.replace("[calculator]", "[sql_query]").replace("tool: calculator", "tool: sql_query")
            .replace('{expression: "{{ inputs.n }} * 2"}',
                     '{query: "SELECT {{ inputs.n }} * 2", max_rows: "{{ inputs.n }}"}')
            .replace("{{ result.result }}", "{{ result.rows | length }}"))
    outcome, kernel = run(flow_file(tmp_path, text), [], {"n": 3, "unit": "rows"}, tmp_path)
    assert outcome.status == "finished", outcome.error
    call = stored_steps(kernel, outcome)[0].tools[0]
    assert call["arguments"] == {"query": "SELECT 3 * 2", "max_rows": 3}  # max_rows stays a number, as it must
    assert call["result"]["rows"] == [[6]]
    assert outcome.answer == "1 rows"


def test_arguments_that_do_not_fit_the_tool_fail_the_run_naming_it(tmp_path: Path) -> None:
    text = FLOW.replace('"{{ inputs.n }} * 2"', '"{{ inputs.n }}", precision: 3')
    outcome, kernel = run(flow_file(tmp_path, text), [], {"n": 21, "unit": "km"}, tmp_path)
    assert outcome.status == "failed"
    assert "step compute" in outcome.error and "calculator" in outcome.error and "precision" in outcome.error
    assert model_calls(kernel) == []


def test_an_argument_template_that_fails_at_run_time_names_its_line_and_column(tmp_path: Path) -> None:
    text = FLOW.replace('"{{ inputs.n }} * 2"', '"{{ inputs.n // 0 }}"')
    path = flow_file(tmp_path, text)
    outcome, _ = run(path, [], {"n": 21, "unit": "km"}, tmp_path)
    assert outcome.status == "failed"
    assert outcome.error.startswith(f"{path}:11:29: step compute: its arguments.expression cannot be rendered")


def test_argument_templates_are_checked_where_they_stand(tools) -> None:
    text = FLOW.replace('"{{ inputs.n }} * 2"', '"{{ inputs.m }} * 2", precision: "{{ steps.nowhere.output }}"')
    assert diagnostics(text, tools) == {(11, 29, "FR302"), (11, 62, "FR302")}


def test_arguments_need_a_tool_and_make_examples_and_instruction_optional(tools) -> None:
    text = FLOW.replace("    tool: calculator\n", "").replace("{{ result.result }}", "{{ 2 }}")
    found = [d for d in check_flow_text(text, "flow.yaml", tools).diagnostics if d.code == "FR003"]
    assert [d.line for d in found] == [8]
    assert "'tool'" in found[0].message
    examples = FLOW.replace("    next: answer\n", "    examples: [{input: Twice 2, answer: {expression: '2 * 2'}}]\n"
                                                   "    next: answer\n")
    assert diagnostics(examples, tools) == {(13, 5, "FR109")}


def test_a_run_with_arguments_replays_exactly(tmp_path: Path) -> None:
    path = flow_file(tmp_path, FLOW)
    db = str(tmp_path / "runs.db")
    code, out, err = cli("run", str(path), "-i", "n=4", "-i", "unit=m", "--backend", "scripted", "--cassette",
                         str(write_empty_cassette(tmp_path)), "--db", db)
    assert code == 0, err
    assert out.strip() == "8 m"
    run_id = next(line.split()[-1] for line in err.splitlines() if "run" in line and len(line.split()[-1]) >= 12)
    code, out, err = cli("runs", "replay", run_id[:12], "--db", db)
    assert code == 0, out + err


def write_empty_cassette(tmp_path: Path) -> Path:
    path = tmp_path / "none.cassette.yaml"
    path.write_text("responses: []\n")
    return path
