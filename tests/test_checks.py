"""Every diagnostic code: a broken fixture per code, checked for exactly the (line, code) pairs it marks."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.flow.diagnostics import RULES, Severity
from engine.flow.loader import load_file
from engine.flow.manifest import is_manifest, load_tools
from engine.flow.validate import check_flow, check_flow_text, validate_paths
from tests.conftest import INVALID, expected_diagnostics

FLOW_FIXTURES = sorted(p for p in INVALID.glob("*.yaml"))


@pytest.mark.parametrize("path", FLOW_FIXTURES, ids=lambda p: p.stem)
def test_flow_fixture_gives_exactly_its_marked_diagnostics(path: Path) -> None:
    tools = load_tools([INVALID / "tools"]).tools  # the bundled ones, and `charge`, which is not idempotent
    found = {(d.line, d.code) for d in check_flow(load_file(path), tools).diagnostics}
    assert found == expected_diagnostics(path)


def test_fixture_name_matches_a_diagnostic_it_produces() -> None:
    for path in FLOW_FIXTURES:
        code = path.name.split("_")[0]
        assert code in {c for _, c in expected_diagnostics(path)}, path.name


def test_tool_manifest_fixtures_give_exactly_their_marked_diagnostics() -> None:
    report = validate_paths([INVALID / "tools"])
    found = {(Path(d.file).name, d.line, d.code) for d in report.diagnostics}
    expected = {
        (path.name, line, code)
        for path in (INVALID / "tools").iterdir() if is_manifest(path)
        for line, code in expected_diagnostics(path)
    }
    assert found == expected


def test_every_validation_rule_has_a_fixture() -> None:
    marked = {code for path in INVALID.rglob("*.yaml") for _, code in expected_diagnostics(path)}
    import_rules = {"FR501", "FR502"}  # covered by tests/test_aios.py on JSON fixtures
    test_file_rules = {"FR601", "FR602"}  # rules of flowrun test's files: covered by tests/test_flowtest.py
    budget_rules = {"FR135"}  # only with validate --max-calls: covered by tests/test_budget.py
    assert set(RULES) - import_rules - test_file_rules - budget_rules <= marked


def test_directory_of_fixtures_reports_every_problem_of_every_file() -> None:
    report = validate_paths([INVALID])
    found = {(Path(d.file).resolve(), d.line, d.code) for d in report.diagnostics}
    expected = {
        (path.resolve(), line, code) for path in INVALID.rglob("*.yaml") for line, code in expected_diagnostics(path)
    }
    assert found == expected
    assert len(report.files) == len(list(INVALID.rglob("*.yaml")))


def test_dead_end_is_reported_where_it_starts_not_upstream(tools) -> None:
    text = """\
flowrun: 1
name: Chain
steps:
  a:
    kind: decision
    question: which way?
    branches: {left: b, right: done}
  b:
    kind: process
    instruction: on
    next: c
  c:
    kind: process
    instruction: stuck here
  done:
    kind: terminal
    instruction: end
"""
    found = [(d.line, d.code) for d in check_flow_text(text, "chain.yaml", tools).diagnostics]
    assert found == [(12, "FR103")]


def test_unknown_target_is_not_also_called_a_dead_end(tools) -> None:
    text = ("flowrun: 1\nname: X\nsteps:\n  a: {kind: process, instruction: go, next: nope}\n"
            "  b: {kind: terminal, instruction: end}\n")
    codes = [d.code for d in check_flow_text(text, "x.yaml", tools).diagnostics]
    assert codes == ["FR101", "FR102"]


def test_strict_turns_warnings_into_errors() -> None:
    path = INVALID / "FR102_unreachable_step.yaml"
    assert [d.severity for d in validate_paths([path]).diagnostics] == [Severity.WARNING]
    assert [d.severity for d in validate_paths([path], strict=True).diagnostics] == [Severity.ERROR]


def test_did_you_mean_for_targets_kinds_and_keys(tools) -> None:
    text = """\
flowrun: 1
name: Typos
steps:
  first:
    kind: proces
    instrction: go
    next: finnish
  finish:
    kind: terminal
    instruction: end
"""
    messages = " | ".join(d.message for d in check_flow_text(text, "t.yaml", tools).diagnostics)
    assert "did you mean 'process'?" in messages
    assert "did you mean 'instruction'?" not in messages  # kind is unknown, so no kind's keys apply yet
    assert "did you mean 'finish'?" in messages


def test_empty_file_says_what_a_flow_needs(tools) -> None:
    (only,) = check_flow_text("", "empty.yaml", tools).diagnostics
    assert (only.code, only.line, only.column) == ("FR003", 1, 1)
    assert "empty" in only.message
