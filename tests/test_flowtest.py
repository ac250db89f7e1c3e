"""`flowrun test`: the bundled flows' cases pass on their cassettes; a broken expectation fails with a readable
difference; a bad test file is reported at its line; what no case covers is listed."""

from __future__ import annotations

import json
from pathlib import Path

from engine.flow.validate import NOT_FLOWS
from tests.conftest import FLOWS, MATH_LOOP, MATH_LOOP_CASSETTE
from tests.test_run_cli import cli

MATH_CASE = f"""\
flow: {MATH_LOOP}
cases:
  - name: the speed
    inputs: {{problem: "A train covers 180 km in 2.5 hours. What is its speed in m/s?"}}
    cassette: {MATH_LOOP_CASSETTE}
    expect:
"""


def test_every_bundled_flow_has_cases_that_pass_and_cover_it() -> None:
    code, out, err = cli("test", str(FLOWS), "--json")
    assert code == 0, out + err
    report = json.loads(out)
    tested = {Path(f["flow"]).name for f in report["files"]}
    assert tested == {p.name for p in FLOWS.rglob("*.yaml") if not p.name.endswith(NOT_FLOWS)}
    assert report["untested"] == []
    for found in report["files"]:
        assert found["cases"] and all(c["passed"] and c["problems"] == [] for c in found["cases"]), found
        assert found["uncovered"] == {"steps": [], "edges": []}, found["flow"]


def test_a_broken_expectation_fails_with_what_differs(tmp_path: Path) -> None:
    cases = tmp_path / "broken.test.yaml"
    cases.write_text(MATH_CASE + """\
      path: [plan, solve_next, more_subproblems, check_answer, convert_units, answer]
      branches: {check_answer: "no"}
      visits: {solve_next: 1}
      answer: {contains: "30 m/s", matches: "km/h$"}
""")
    code, out, err = cli("test", str(cases))
    assert code == 1
    assert "FAIL  the speed (9 steps" in out and "0 of 1 cases passed" in err
    assert "the path differs:\n          --- expected path\n          +++ path taken" in out
    assert "          +solve_next\n" in out and "          -convert_units\n" in out
    assert "decision check_answer should take 'no', but took 'yes'" in out
    assert "step solve_next should run 1 times, but ran 3" in out
    assert "the answer should contain '30 m/s', but is: {\"answer\": \"20 m/s\"" in out
    assert "the answer should match /km/h$/" in out
    assert "not covered: step convert_units, check_answer -[no]-> convert_units" in out


def test_a_case_that_should_fail_and_does(tmp_path: Path) -> None:
    cases = tmp_path / "fails.test.yaml"
    cases.write_text(f"""\
flow: {MATH_LOOP}
cases:
  - name: a plan without sub-problems
    inputs: {{problem: "1 + 1"}}
    responses: [{{key: plan, times: 2, text: '{{}}'}}]
    expect:
      status: failed
      error: failed the step's output_schema twice
""")
    code, out, err = cli("test", str(cases))
    assert code == 0, out + err
    assert "pass  a plan without sub-problems (0 steps" in out


def test_a_bad_test_file_is_reported_where_it_is_wrong(tmp_path: Path) -> None:
    cases = tmp_path / "bad.test.yaml"
    cases.write_text(MATH_CASE.replace("math_loop.cassette", "gone.cassette") + """\
      path: [plan, solve_nxt]
      branches: {check_answer: maybe}
""")
    code, _, err = cli("test", str(cases))
    assert code == 2
    assert f"{cases}:5:15: error FR602" in err and "gone.cassette.yaml does not exist" in err
    assert f"{cases}:7:20: error FR601" in err and "the flow has no step 'solve_nxt'" in err
    assert "step 'check_answer' has no branch 'maybe' (its labels: yes, no)" in err
    assert "0 of 0 cases passed in 0 test files; 1 test files are not valid" in err
    cases.write_text("cases:\n  - name: x\n    expects: {}\n")
    code, _, err = cli("test", str(cases))
    assert code == 2 and f"{cases}:3:5: error FR003" in err and "expects" in err


def test_a_flow_without_cases_and_a_case_without_answers(tmp_path: Path) -> None:
    flow = tmp_path / "math.yaml"
    flow.write_text(MATH_LOOP.read_text())
    code, _, err = cli("test", str(flow))
    assert code == 2 and "no test cases: write them in math.test.yaml beside the flow" in err
    code, _, err = cli("test", str(tmp_path))
    assert code == 0 and f"no test cases for {flow}" in err
    (tmp_path / "math.test.yaml").write_text("cases:\n  - name: on a model only\n    inputs: {problem: 1 + 1}\n")
    code, out, _ = cli("test", str(tmp_path))
    assert code == 1 and "FAIL  on a model only" in out and "has no cassette: run it on a model with --backend" in out


FAN = """\
flowrun: 1
name: Fan
description: A branch that asks a rates service, tried again when it fails.
tools: [exchange_rate]
steps:
  fan:
    kind: parallel
    branches:
      a:
        steps:
          call: {kind: process, tool: exchange_rate, arguments: {base: USD, quote: EUR}, next: done}
          done: {kind: terminal, output: "{{ steps.call.output.rate }}"}
    retry: {on: [child_failed], max_attempts: 2}
    next: end
  end: {kind: terminal, output: "{{ steps.fan.output.a }}"}
"""


def test_a_childs_answered_calls_are_used_once_across_its_tries(tmp_path: Path) -> None:
    """The first try of branch `a` gets the error, the second the result: the answers of a child run tried again
    go on from where its first try left them, as the run's own do."""
    (tmp_path / "fan.yaml").write_text(FAN)
    (tmp_path / "fan.test.yaml").write_text("""\
cases:
  - name: down, then up
    responses: []
    tools:
      - {run: fan.a, tool: exchange_rate, arguments: {base: USD, quote: EUR}, error: the service is down}
      - {run: fan.a, tool: exchange_rate, arguments: {base: USD, quote: EUR}, result: {rate: 0.92, date: "2026-11-30"}}
    expect: {path: [fan, end], answer: {equals: 0.92}}
""")
    code, out, err = cli("test", str(tmp_path / "fan.test.yaml"))
    assert code == 0, out + err


def test_an_answered_call_of_a_child_that_does_not_stand_there_is_a_diagnostic(tmp_path: Path) -> None:
    (tmp_path / "fan.yaml").write_text(FAN)
    (tmp_path / "fan.test.yaml").write_text("""\
cases:
  - name: typos
    tools:
      - {run: fan.b, tool: exchange_rate, arguments: {base: USD, quote: EUR}, result: 1}
      - {run: fan.a, tool: exchange_rates, arguments: {base: USD, quote: EUR}, result: 1}
""")
    code, _, err = cli("test", str(tmp_path / "fan.test.yaml"))
    assert code == 2
    assert "4:15: error FR601 test-unknown-step: case 'typos': no child run stands at 'fan.b' (steps that start " \
           "child runs: fan)" in err
    assert "5:28: error FR601 test-unknown-step: case 'typos': the flow and the flows it calls have no tool " \
           "'exchange_rates'" in err
