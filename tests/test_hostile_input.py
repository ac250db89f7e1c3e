"""Hostile or careless input (issue 11, items 1 and 12): `flowrun test` writes only inside a case's workspace and
does not quote files that are not flows; numbers, nesting, encodings and patterns that Python would choke on give a
message at their place and a non-zero exit, never a traceback, and a failing run keeps what it stored."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest

from engine.kernel.retry import Backoff
from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow, StepRow
from tests.conftest import MATH_LOOP
from tests.test_run_cli import cli

# A decision needing no model, then a step the model answers with data, a tool call and a choice.
FLOW = """\
flowrun: 1
name: Hostile
description: A test agent.
inputs:
  topic: {type: string}
  n: {type: integer, default: 1}
tools: [calculator]
limits: {max_steps: 10}
steps:
  begin:
    kind: decision
    question: Go on?
    decide: go
    branches: {go: data, stop: done}
  data:
    kind: process
    instruction: List what {{ inputs.topic }} needs.
    output_schema: {type: array}
    next: compute
  compute:
    kind: process
    instruction: Compute it.
    tool: calculator
    next: check
  check:
    kind: decision
    question: Is it right?
    branches: {"yes": done, "no": done}
  done:
    kind: terminal
    instruction: Say what was done.
"""

ANSWERS = {"data": "[1, 2]", "compute": '{"tool": "calculator", "arguments": {"expression": "1 + 2"}}',
           "check": '"yes"', "done": "done"}
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(FLOW)
    return path


def run_on(flow: Path, cassette: Path, db: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`flowrun run` of `flow` on the scripted backend with `cassette`, stored in `db`."""
    return cli("run", str(flow), "-i", "topic=x", "--backend", "scripted", "--cassette", str(cassette),
               "--db", str(db), env=env)


def write_cassette(path: Path, answers: dict[str, str], times: int = 1) -> Path:
    path.write_text(json.dumps({"responses": [{"key": k, "text": v, "times": times} for k, v in answers.items()]}))
    return path


# Item 1: flowrun test


def test_a_case_cannot_write_files_outside_its_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"  # where each case's scratch directory is made, so that `..` stays in tmp_path
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    absolute, climbed = tmp_path / "absolute.txt", scratch / "climbed.txt"
    cases = tmp_path / "escape.test.yaml"
    cases.write_text(f"""\
flow: {MATH_LOOP}
cases:
  - name: absolute
    inputs: {{problem: "1 + 1"}}
    files: {{"{absolute}": pwned}}
    responses: [{{key: plan, times: 2, text: '{{}}'}}]
    expect: {{status: failed}}
  - name: climbing
    inputs: {{problem: "1 + 1"}}
    files: {{"notes/../../../../climbed.txt": pwned}}
    responses: [{{key: plan, times: 2, text: '{{}}'}}]
    expect: {{status: failed}}
  - name: inside
    inputs: {{problem: "1 + 1"}}
    files: {{"notes/../notes.md": fine}}
    responses: [{{key: plan, times: 2, text: '{{}}'}}]
    expect: {{status: failed}}
""")
    code, out, err = cli("test", str(cases), "--json")
    assert code == 1, out + err
    results = {c["name"]: c for c in json.loads(out)["files"][0]["cases"]}
    assert not absolute.exists() and not climbed.exists()
    assert results["absolute"]["problems"] == [f"files: {str(absolute)!r} is outside the run's workspace: use a "
                                               "path relative to it, without .."]
    assert "'notes/../../../../climbed.txt' is outside the run's workspace" in results["climbing"]["problems"][0]
    assert results["inside"]["passed"], results["inside"]


def test_a_flow_or_cassette_that_is_not_one_is_not_quoted(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-hunter2-secret\n")
    (tmp_path / "config.yaml").write_text("password: hunter2-secret\nsteps: hunter2-secret\n")
    for target in (".env", "config.yaml"):
        cases = tmp_path / "leak.test.yaml"
        cases.write_text(f"flow: {target}\ncases:\n  - name: x\n")
        code, out, err = cli("test", str(cases))
        assert code == 2
        assert "hunter2" not in out + err
        assert f"{cases}:1:7: error FR602" in err and f"{tmp_path / target} is not a flow" in err
        cases.write_text(f"flow: {MATH_LOOP}\ncases:\n  - name: x\n    cassette: {target}\n"
                         "    inputs: {problem: x}\n")
        code, out, err = cli("test", str(cases))
        assert code == 1 and "is a mapping with a `responses` list" in out
        assert "hunter2" not in out + err


# Item 12: numbers, nesting, encodings and patterns


def test_an_integer_too_long_for_python_is_reported_where_it_is(tmp_path: Path, flow: Path) -> None:
    digits = "9" * 5000
    for literal in (digits, "0x" + "f" * 4000):  # hexadecimal has no limit of its own, but cannot be written out
        big = tmp_path / "big.yaml"
        big.write_text(FLOW.replace("max_steps: 10", f"max_steps: {literal}"))
        code, out, _ = cli("validate", str(big))
        assert code == 1
        assert f"{big}:8:21: error FR004 yaml-unsupported: an integer of more than 4,300 digits" in out
    cassette = tmp_path / "big.cassette.yaml"
    cassette.write_text(f"responses:\n  - {{text: hi, times: {digits}}}\n")
    code, _, err = run_on(flow, cassette, tmp_path / "runs.db")
    assert code == 2 and f"error: {cassette}:2:23: an integer of more than 4,300 digits" in err
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"name": "A", "description": "d", "flow": ["Step 1:::Terminal:::done"]})[:-1]
                      + f', "max": {digits}}}')
    code, _, err = cli("import-aios", str(config))
    assert code == 2 and f"{config}:1:80: error FR004" in err


@pytest.mark.parametrize("step", ["data", "compute", "check"])
def test_a_deeply_nested_answer_fails_the_run_and_keeps_its_steps(tmp_path: Path, flow: Path, step: str) -> None:
    db = tmp_path / "runs.db"
    cassette = write_cassette(tmp_path / "deep.cassette.yaml", {**ANSWERS, step: DEEP}, times=2)
    code, _, err = run_on(flow, cassette, db)
    assert code == 1, err
    (run,) = Storage(f"sqlite:///{db}").rows(RunRow)
    assert run.status == "failed" and "internal error" not in run.error
    said = {"data": "it is not JSON (it is nested too deeply to read)", "compute": "it is nested too deeply to read",
            "check": "not one of yes, no"}[step]
    assert said in run.error and f"step {step}:" in run.error
    before = list(ANSWERS)[:list(ANSWERS).index(step)]
    assert [s.step for s in Storage(f"sqlite:///{db}").rows(StepRow)] == ["begin", *before]


def test_an_answer_with_numbers_json_does_not_have_is_not_kept(tmp_path: Path, flow: Path) -> None:
    db = tmp_path / "runs.db"
    cassette = write_cassette(tmp_path / "nan.cassette.yaml", {**ANSWERS, "data": "[NaN, 1e999]"}, times=2)
    code, _, err = run_on(flow, cassette, db)
    assert code == 1 and "it is not JSON (NaN is not a number JSON allows: give a finite number)" in err
    assert [s.step for s in Storage(f"sqlite:///{db}").rows(StepRow)] == ["begin"]


def test_inputs_that_are_not_utf8_or_nest_too_deeply(tmp_path: Path, flow: Path) -> None:
    cassette = write_cassette(tmp_path / "ok.cassette.yaml", ANSWERS)
    run = ("--backend", "scripted", "--cassette", str(cassette), "--db", str(tmp_path / "runs.db"))
    lines = tmp_path / "inputs.jsonl"
    lines.write_bytes(b'{"topic": "fine"}\n{"topic": "caf\xe9"}\n')
    code, _, err = cli("batch", str(flow), "--inputs", str(lines), *run)
    assert code == 2 and f"error: {lines}:2:15: not UTF-8 text (invalid continuation byte)" in err
    single = tmp_path / "inputs.json"
    single.write_bytes(b'{\n  "topic": "\xff"\n}')
    code, _, err = cli("run", str(flow), "--input-file", str(single), *run)
    assert code == 2 and f"error: {single}:2:13: not UTF-8 text (invalid start byte)" in err
    lines.write_text('{"topic": "fine"}\n{"topic": ' + DEEP + "}\n")
    code, _, err = cli("batch", str(flow), "--inputs", str(lines), *run)
    assert code == 2 and f"error: {lines}:2: not JSON: it is nested too deeply to read" in err
    single.write_text('{"topic": ' + DEEP + "}")
    code, _, err = cli("run", str(flow), "--input-file", str(single), *run)
    assert code == 2 and "nested too deeply to read" in err
    assert not (tmp_path / "runs.db").exists() or not Storage(f"sqlite:///{tmp_path / 'runs.db'}").rows(RunRow)


@pytest.mark.parametrize(("value", "said"), [
    ("NaN", "NaN is not a number JSON allows"), ("-Infinity", "-Infinity is not a number JSON allows"),
    ("1e999", "1e999 is too large for a number"), ("9" * 5000, "an integer of more than 4,300 digits is more than"),
    ('"a\\ud800b"', "a string holds \\ud800, half of a surrogate pair, which is not text"),
])
def test_a_number_input_that_is_not_finite(tmp_path: Path, flow: Path, value: str, said: str) -> None:
    cassette = write_cassette(tmp_path / "ok.cassette.yaml", ANSWERS)
    code, _, err = cli("run", str(flow), "-i", "topic=x", "-i", f"n={value}", "--backend", "scripted",
                       "--cassette", str(cassette), "--db", str(tmp_path / "runs.db"))
    assert code == 2 and "error: -i n: " in err and f"is not JSON ({said}" in err
    lines = tmp_path / "inputs.jsonl"
    lines.write_text(f'{{"topic": "x", "n": {value}}}\n')
    code, _, err = cli("batch", str(flow), "--inputs", str(lines), "--backend", "scripted",
                       "--cassette", str(cassette), "--db", str(tmp_path / "runs.db"))
    assert code == 2 and f"{lines}:1: not JSON: {said}" in err


@pytest.mark.parametrize(("entry", "where", "said"), [
    ("{key: data, prompt: 5, text: x}", "3:25", "response 2: `prompt` is a regular expression, as text"),
    ("{prompt: '(unclosed', text: x}", "3:14", "response 2: `prompt` is not a valid regular expression: missing )"),
])
def test_a_cassette_prompt_that_is_not_a_pattern(tmp_path: Path, flow: Path, entry: str, where: str,
                                                 said: str) -> None:
    cassette = tmp_path / "bad.cassette.yaml"
    cassette.write_text(f"responses:\n  - {{key: data, text: '[]'}}\n  - {entry}\n")
    code, _, err = run_on(flow, cassette, tmp_path / "runs.db")
    assert code == 2 and f"error: {cassette}:{where}: {said}" in err


@pytest.mark.timeout(60)  # before the fix it hung: fail in a minute, not at the suite's limit
@pytest.mark.parametrize("delay", [".inf", ".nan", "-1"])
def test_a_token_delay_that_is_not_a_finite_wait(tmp_path: Path, flow: Path, delay: str) -> None:
    cassette = tmp_path / "slow.cassette.yaml"
    cassette.write_text(f"token_delay: {delay}\nresponses:\n  - {{text: hi}}\n")
    code, _, err = run_on(flow, cassette, tmp_path / "runs.db")
    assert code == 2 and f"error: {cassette}:1:14: `token_delay` is a finite number of seconds, 0 or more" in err


@pytest.mark.timeout(60)  # before the fix it hung: fail in a minute, not at the suite's limit
def test_a_catastrophic_cassette_pattern_is_cut_short(tmp_path: Path, flow: Path) -> None:
    db = tmp_path / "runs.db"
    cassette = tmp_path / "slow.cassette.yaml"
    cassette.write_text("responses:\n  - {prompt: '(a|aa)+$', text: '[]'}\n  - {text: '[]'}\n")
    started = time.monotonic()
    code, _, err = cli("run", str(flow), "-i", f"topic={'a' * 100}!", "--backend", "scripted",
                       "--cassette", str(cassette), "--db", str(db))
    assert time.monotonic() - started < 30  # unbounded, it would take longer than the universe has left
    assert code == 1 and "/(a|aa)+$/ took over 1 s to match" in err
    (run,) = Storage(f"sqlite:///{db}").rows(RunRow)
    assert run.status == "failed" and [s.step for s in Storage(f"sqlite:///{db}").rows(StepRow)] == ["begin"]


def test_a_test_case_check_that_cannot_be_used(tmp_path: Path) -> None:
    cases = tmp_path / "bad.test.yaml"
    cases.write_text(f"""\
flow: {MATH_LOOP}
cases:
  - name: matches
    inputs: {{problem: x}}
    responses: [{{key: plan, times: 2, text: '{{}}'}}]
    expect: {{status: failed, answer: {{matches: "(unclosed"}}}}
  - name: prompt
    inputs: {{problem: x}}
    responses: [{{prompt: 5, text: '{{}}'}}]
""")
    code, _, err = cli("test", str(cases))
    assert code == 2
    assert (f"{cases}:6:48: error FR003 schema: case 'matches': `matches` is not a valid regular expression: "
            "missing )") in err
    assert f"{cases}:9:26: error FR003 schema: case 'prompt': response 1: `prompt` is a regular expression" in err
    # a schema that is no JSON Schema is the file's schema check's to report (against the metaschema)
    cases.write_text(f"""\
flow: {MATH_LOOP}
cases:
  - name: schema
    inputs: {{problem: x}}
    responses: [{{key: plan, times: 2, text: '{{}}'}}]
    expect: {{status: failed, answer: {{schema: {{type: 5}}}}}}
""")
    code, _, err = cli("test", str(cases))
    assert code == 2 and f"{cases}:6:54: error FR003 schema: " in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["nan", "inf", "1e999"])
def test_a_database_timeout_that_is_not_finite(tmp_path: Path, flow: Path, value: str) -> None:
    cassette = write_cassette(tmp_path / "ok.cassette.yaml", ANSWERS)
    code, _, err = run_on(flow, cassette, tmp_path / "runs.db", env={"FLOWRUN_DB_TIMEOUT": value})
    assert code == 2
    assert f"error: FLOWRUN_DB_TIMEOUT is {value!r}: it must be a finite number of seconds, 0 or more" in err


def test_the_backoff_stays_within_its_cap_however_many_tries() -> None:
    backoff = Backoff(base=0.01, cap=0.5)
    assert all(0 <= backoff.delay(attempt) <= 0.5 for attempt in (0, 10, 1100, 10**6))

