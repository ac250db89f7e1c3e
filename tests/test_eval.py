"""`flowrun eval`: a flow's answers scored on a JSON Lines data file, on the cassette backend (each case's recorded
responses): every check kind, scorers and judge flows, routes, the Wilson interval, --compare, the three formats,
the exit statuses, and runs stored where `flowrun runs` finds them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from engine.answers import read_number
from engine.evaluation import scoring
from engine.evaluation.stats import wilson
from engine.kernel.storage import Storage
from engine.kernel.tables import ToolCallRow
from tests.conftest import MATH_LOOP
from tests.test_run_cli import cli

# A decision the model makes, then one of two terminals, whose text is the answer.
QUIZ = """\
flowrun: 1
name: Quiz
description: A test agent.
inputs:
  question: {type: string}
steps:
  level:
    kind: decision
    question: Is "{{ inputs.question }}" easy or hard?
    branches: {easy: answer, hard: think}
  answer:
    kind: terminal
    instruction: Answer {{ inputs.question }}.
  think:
    kind: terminal
    instruction: Think, then answer {{ inputs.question }}.
"""

JUDGE = """\
flowrun: 1
name: Judge
description: You judge answers.
inputs:
  answer: {type: string}
  case: {type: string}
steps:
  verdict:
    kind: terminal
    instruction: 'Does "{{ inputs.answer }}" answer the case {{ inputs.case }}? Say pass or fail.'
"""


def case(name: str, answer: str, expect: dict[str, Any], level: str = "easy", **more: Any) -> dict[str, Any]:
    """A case of QUIZ whose recorded answers take `level` and then answer `answer` (on either terminal)."""
    responses = [{"key": "level", "text": json.dumps(level)}, {"key": ["answer", "think"], "text": answer}]
    return {"name": name, "inputs": {"question": name}, "expect": expect,
            "responses": responses + more.pop("also", []), **more}


def write(tmp_path: Path, cases: list[Any], flow: str = QUIZ) -> tuple[Path, Path]:
    """The flow and data files, in tmp_path; a case given as text is written as it is."""
    (tmp_path / "quiz.yaml").write_text(flow)
    data = tmp_path / "cases.jsonl"
    data.write_text("".join((c if isinstance(c, str) else json.dumps(c)) + "\n" for c in cases))
    return tmp_path / "quiz.yaml", data


def evaluate(tmp_path: Path, cases: list[Any], *args: str, flow: str = QUIZ) -> tuple[int, str, str]:
    path, data = write(tmp_path, cases, flow)
    return cli("eval", str(path), "--data", str(data), "--db", str(tmp_path / "runs.db"), *args)


def report(tmp_path: Path, cases: list[Any], *args: str, flow: str = QUIZ) -> dict[str, Any]:
    code, out, err = evaluate(tmp_path, cases, "--format", "json", *args, flow=flow)
    assert code == 0, out + err
    return json.loads(out)


def by_name(configuration: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in configuration["results"]}


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (8, 10, 0.4902, 0.9433),  # p = 0.8, z = 1.95996: (p + z²/2n) / (1 + z²/n) ± z / (1 + z²/n) · √(p(1-p)/n + z²/4n²)
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (1, 2, 0.0945, 0.9055),
    (15, 20, 0.5313, 0.8881),
])
def test_the_wilson_interval_is_the_one_computed_by_hand(k: int, n: int, low: float, high: float) -> None:
    assert wilson(k, n) == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))


def test_numbers_are_read_as_people_write_them() -> None:
    assert read_number("20 m/s") == 20
    assert read_number("It takes 1,200 km, then -3.5e2 m") == 1200
    assert read_number({"answer": "about -0.25 h"}) == -0.25
    assert read_number(7) == 7
    assert read_number("no number here") is None
    assert read_number(True) is None


def test_every_check_kind_scores_the_answer(tmp_path: Path) -> None:
    cases = [
        case("equals", "20 m/s", {"equals": "20 m/s"}),
        case("equals, another", "20 m/s", {"equals": "20"}),
        case("number in text", "The speed is 20 m/s.", {"number": 20}),
        case("number within tolerance", "20.4 m/s", {"number": 20, "tolerance": 0.5}),
        case("number past rel_tolerance", "20.4 m/s", {"number": 20, "rel_tolerance": 0.01}),
        case("no number", "fast", {"number": 20}),
        case("contains, any case", "Twenty M/S", {"contains": ["twenty", "m/s"]}),
        case("contains, missing", "20 m/s", {"contains": "km/h"}),
        case("matches", "20 m/s", {"matches": r"^\d+ m/s$"}),
        case("matches not", "20 m/s", {"matches": r"km"}),
        case("schema", "20 m/s", {"schema": {"type": "string", "maxLength": 3}}),
        case("all hold", "20 m/s", {"number": 20, "contains": "m/s", "matches": "^20", "schema": {"type": "string"}}),
    ]
    found = report(tmp_path, cases)["configurations"][0]
    results = by_name(found)
    passing = {"equals", "number in text", "number within tolerance", "contains, any case", "matches", "all hold"}
    assert {name for name, r in results.items() if r["passed"]} == passing
    assert all(r["score"] == (1.0 if r["passed"] else 0.0) for r in results.values())
    assert found["accuracy"] == pytest.approx(6 / 12) and found["passed"] == 6 and found["cases"] == 12
    assert found["interval"]["method"] == "wilson"
    assert (found["interval"]["low"], found["interval"]["high"]) == wilson(6, 12)
    assert results["equals, another"]["reasons"] == ['the answer should be "20", but is 20 m/s']
    assert results["number past rel_tolerance"]["reasons"] == [
        "the answer should be 20 (within 0.01 of it), but its number is 20.4: 20.4 m/s"]
    assert results["no number"]["reasons"] == ["the answer should be the number 20, but holds no number: fast"]
    assert results["contains, missing"]["reasons"] == ["the answer should contain 'km/h', but is: 20 m/s"]
    assert "should match /km/" in results["matches not"]["reasons"][0]
    assert "does not fit the schema" in results["schema"]["reasons"][0]


def test_a_flow_with_a_loop_is_scored_on_recorded_answers(tmp_path: Path) -> None:
    recorded = [
        {"key": "plan", "text": '{"subproblems": ["180 km in metres", "2.5 hours in seconds", "metres per second"]}'},
        {"key": "solve_next", "text": '{"tool": "calculator", "arguments": {"expression": "180 * 1000"}}'},
        {"key": "solve_next", "text": '{"tool": "calculator", "arguments": {"expression": "2.5 * 3600"}}'},
        {"key": "solve_next", "text": '{"tool": "calculator", "arguments": {"expression": "180000 / 9000"}}'},
        {"key": "check_answer", "text": '"yes"'},
        {"key": "answer", "text": '{"answer": "20 m/s", "working": "180000 m / 9000 s"}'},
    ]
    speed = {"name": "speed", "inputs": {"problem": "A train covers 180 km in 2.5 hours. What is its speed in m/s?"},
             "expect": {"number": 20, "contains": "m/s"}, "responses": recorded,
             "routes": {"check_answer": "yes", "more_subproblems": ["yes", "yes", "no"]}}
    wrong = {**speed, "name": "in km/h", "expect": {"number": 72, "contains": "km/h"},
             "routes": {"check_answer": "no", "more_subproblems": ["yes", "no"]}}
    data = tmp_path / "math.jsonl"
    data.write_text(json.dumps(speed) + "\n" + json.dumps(wrong) + "\n")
    code, out, err = cli("eval", str(MATH_LOOP), "--data", str(data), "--db", str(tmp_path / "r.db"),
                         "--format", "json")
    assert code == 0, out + err
    found = json.loads(out)["configurations"][0]
    assert found["accuracy"] == 0.5
    assert found["routes"] == {"check_answer": {"right": 1, "labelled": 2, "accuracy": 0.5},
                               "more_subproblems": {"right": 4, "labelled": 6, "accuracy": 4 / 6}}
    assert by_name(found)["speed"]["routes"] == {"check_answer": {"right": 1, "labelled": 1},
                                                 "more_subproblems": {"right": 3, "labelled": 3}}
    assert found["per_case"]["model_calls"] == 6  # plan, three tool calls, check_answer, answer
    assert by_name(found)["speed"]["tokens"] > 0 and found["per_case"]["seconds"] > 0


def test_routes_are_scored_per_decision_apart_from_the_answer(tmp_path: Path) -> None:
    cases = [
        case("right way", "20", {"number": 20}, routes={"level": "easy"}),
        case("wrong way, right answer", "20", {"number": 20}, level="hard", routes={"level": "easy"}),
        case("listed", "20", {"number": 20}, level="hard", routes={"level": ["hard"]}),
        case("no routes", "20", {"number": 20}, level="hard"),
    ]
    found = report(tmp_path, cases)["configurations"][0]
    assert found["accuracy"] == 1.0
    assert found["routes"] == {"level": {"right": 2, "labelled": 3, "accuracy": 2 / 3}}
    assert by_name(found)["wrong way, right answer"]["routes"] == {"level": {"right": 0, "labelled": 1}}
    assert by_name(found)["no routes"]["routes"] == {}


def test_a_scorer_gives_a_score_whose_mean_is_the_accuracy(tmp_path: Path) -> None:
    (tmp_path / "scorers.py").write_text("""\
def closeness(answer, case):
    wanted = case["inputs"]["question"]
    return (1.0, None) if answer == wanted else (0.5, f"{answer} is near {wanted}")

def strict(answer, case):
    return answer == "42"

def broken(answer, case):
    raise RuntimeError("no idea")
""")
    cases = [
        case("42", "42", {"scorer": "scorers.py:closeness"}),
        case("41", "42", {"scorer": "scorers.py:closeness"}),
        case("strict", "42", {"scorer": "scorers.py:strict", "contains": "4"}),
        case("contains fails first", "42", {"scorer": "scorers.py:closeness", "contains": "7"}),
        case("broken", "42", {"scorer": "scorers.py:broken"}),
    ]
    found = report(tmp_path, cases)["configurations"][0]
    scores = {name: r["score"] for name, r in by_name(found).items()}
    assert scores == {"42": 1.0, "41": 0.5, "strict": 1.0, "contains fails first": 0.0, "broken": 0.0}
    assert found["accuracy"] == pytest.approx(2.5 / 5)
    assert found["passed"] == 2
    assert found["interval"]["method"] == "wilson-fractional"
    assert (found["interval"]["low"], found["interval"]["high"]) == wilson(2.5, 5)
    assert by_name(found)["41"]["reasons"] == ["42 is near 41"]
    assert by_name(found)["broken"]["reasons"] == ["the scorer scorers.py:broken raised RuntimeError: no idea"]


def test_a_scorer_that_hangs_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring, "SCORER_SECONDS", 1.0)
    (tmp_path / "slow.py").write_text("import time\n\ndef score(answer, case):\n    time.sleep(60)\n")
    started = time.monotonic()
    found = report(tmp_path, [case("slow", "1", {"scorer": "slow.py:score"}), case("fast", "1", {"number": 1})])
    assert time.monotonic() - started < 20
    results = by_name(found["configurations"][0])
    assert results["slow"]["reasons"] == ["the scorer slow.py:score took over 1 s and was stopped"]
    assert results["fast"]["passed"]


def test_a_judge_flow_scores_the_answer_with_its_verdict(tmp_path: Path) -> None:
    (tmp_path / "judge.yaml").write_text(JUDGE)
    cases = [
        case("judged right", "Paris", {"judge": "judge.yaml"}, also=[{"key": "verdict", "text": "PASS"}]),
        case("judged wrong", "Lyon", {"judge": "judge.yaml"}, also=[{"key": "verdict", "text": "fail"}]),
        case("judged half", "Paris?", {"judge": "judge.yaml"}, also=[{"key": "verdict", "text": "0.5"}]),
        case("judge rambles", "Paris", {"judge": "judge.yaml"}, also=[{"key": "verdict", "text": "maybe"}]),
    ]
    found = report(tmp_path, cases)["configurations"][0]
    results = by_name(found)
    assert {n: r["score"] for n, r in results.items()} == {"judged right": 1.0, "judged wrong": 0.0,
                                                           "judged half": 0.5, "judge rambles": 0.0}
    judge_run = results["judged wrong"]["judge_run_id"]
    assert results["judged wrong"]["reasons"] == [f"the judge judge.yaml answered fail (run {judge_run})"]
    assert "a judge answers pass or fail" in results["judge rambles"]["reasons"][0]
    code, out, _ = cli("runs", "show", judge_run, "--json", "--db", str(tmp_path / "runs.db"))
    assert code == 0
    judged = json.loads(out)["run"]
    assert judged["agent"] == "Judge" and judged["inputs"]["answer"] == "Lyon"
    assert json.loads(judged["inputs"]["case"])["name"] == "judged wrong"


def test_failing_runs_are_stored_named_and_can_be_opened_and_replayed(tmp_path: Path) -> None:
    cases = [case("right", "20", {"number": 20}), case("wrong", "21", {"number": 20}),
             case("no answers", "20", {"number": 20}, responses=[])]
    code, out, err = evaluate(tmp_path, cases, "--concurrency", "2")
    assert code == 0, out + err
    db = str(tmp_path / "runs.db")
    code, listed, _ = cli("runs", "list", "--json", "--db", db)
    runs = json.loads(listed)
    assert len(runs) == 3 and len({r["batch"] for r in runs}) == 1
    wrong = next(r for r in runs if r["status"] == "finished" and r["run_id"][:12] in out.split("wrong · run ")[1])
    assert "wrong · run " + wrong["run_id"][:12] + " · score 0: the answer should be 20" in out
    failed = next(r for r in runs if r["status"] == "failed")
    assert f"no answers · run {failed['run_id'][:12]} · score 0: the run failed: " in out
    code, shown, _ = cli("runs", "show", wrong["run_id"], "--db", db)
    assert code == 0 and "answer: 21" in shown
    code, replayed, _ = cli("runs", "replay", wrong["run_id"], "--db", db)
    assert code == 0, replayed


def test_a_case_without_responses_fails_on_the_cassette_backend(tmp_path: Path) -> None:
    bare = {"name": "bare", "inputs": {"question": "q"}, "expect": {"number": 1}}
    found = report(tmp_path, [bare, case("fine", "1", {"number": 1})])["configurations"][0]
    assert by_name(found)["bare"] == {**by_name(found)["bare"], "passed": False, "status": "not run", "run_id": None,
                                      "reasons": ["case 'bare' has no responses: run it on a model with --backend"]}
    assert found["accuracy"] == 0.5 and found["per_case"]["model_calls"] == 2  # averaged over the case that ran


def test_compare_runs_each_configuration_and_shows_the_difference(tmp_path: Path) -> None:
    (tmp_path / "hard.yaml").write_text(QUIZ.replace("    branches: {easy: answer", "    decide: hard\n"
                                                     "    branches: {easy: answer"))
    cases = [case(str(n), "20", {"number": 20}, routes={"level": "easy"},
                  responses=[{"key": "level", "text": '"easy"'}, {"key": "answer", "text": "20"},
                             {"key": "think", "text": "21"}]) for n in range(4)]
    found = report(tmp_path, cases, "--compare", f"flow={tmp_path / 'hard.yaml'}", "--compare",
                   f"backend=cassette,flow={tmp_path / 'quiz.yaml'}")
    first, hard, again = found["configurations"]
    assert (first["accuracy"], hard["accuracy"], again["accuracy"]) == (1.0, 0.0, 1.0)
    assert hard["flow"] == str(tmp_path / "hard.yaml") and again["model"] is None  # a cassette has no model
    assert hard["routes"]["level"]["right"] == 0 and hard["per_case"]["model_calls"] == 1  # decided by data
    assert [d["accuracy"] for d in found["differences"]] == [-1.0, 0.0]
    assert found["differences"][0]["model_calls"] == -1
    assert len({c["batch"] for c in found["configurations"]}) == 3

    code, out, _ = evaluate(tmp_path, cases, "--compare", f"flow={tmp_path / 'hard.yaml'}")
    assert code == 0
    accuracy = next(line for line in out.splitlines() if line.startswith("accuracy"))
    assert accuracy.split() == ["accuracy", "1.000", "0.000", "-1.000"]
    assert f"2: {tmp_path / 'hard.yaml'} on cassette" in out and "2 - 1" in out


def test_the_three_formats(tmp_path: Path) -> None:
    cases = [case("right", "20", {"number": 20}, routes={"level": "easy"}),
             case("wrong", "\u001b]0;retitled\u0007\u001b[2J2", {"number": 20})]
    code, text, _ = evaluate(tmp_path, cases)
    assert code == 0 and "\x1b" not in text and "\x07" not in text  # a model cannot drive the terminal
    rows = {line.split("  ")[0]: line.split()[-1] for line in text.splitlines() if "  " in line}
    assert rows["accuracy"] == "0.500" and rows["route level"] == "(1.000)"
    assert "95% CI" in text and "0.095 to 0.905" in text and "the Wilson score interval" in text
    assert "failing cases of 1:" in text and "  wrong · run " in text

    code, markdown, _ = evaluate(tmp_path, cases, "--format", "markdown")
    lines = markdown.splitlines()
    assert code == 0 and lines[0].startswith("|  | ") and lines[1] == "|---|---|"
    assert "| accuracy | 0.500 |" in lines and "| passed | 1 of 2 |" in lines

    found = report(tmp_path, cases)
    assert set(found) == {"data", "configurations", "differences"} and found["differences"] == []
    assert set(found["configurations"][0]) == {"label", "flow", "backend", "model", "batch", "cases", "passed",
                                               "accuracy", "interval", "routes", "per_case", "results"}
    assert set(found["configurations"][0]["per_case"]) == {"tokens", "model_calls", "seconds"}
    assert set(found["configurations"][0]["results"][0]) == {
        "name", "passed", "score", "status", "run_id", "reasons", "answer", "judge_run_id", "routes", "tokens",
        "model_calls", "seconds"}


def test_min_accuracy_sets_the_exit_status(tmp_path: Path) -> None:
    cases = [case("right", "20", {"number": 20}), case("wrong", "2", {"number": 20})]
    assert evaluate(tmp_path, cases, "--min-accuracy", "0.5")[0] == 0
    assert evaluate(tmp_path, cases, "--min-accuracy", "0.51")[0] == 1
    assert evaluate(tmp_path, cases, "--min-accuracy", "1.5")[0] == 2


@pytest.mark.parametrize(("line", "said"), [
    ("{not json", "cases.jsonl:2: not JSON"),
    ("[1, 2]", "cases.jsonl:2: each line is a JSON object: one case"),
    ('{"inputs": {"question": "q"}}', "cases.jsonl:2: missing required key 'name'"),
    ('{"name": "x", "expect": {"nmber": 3}}', "cases.jsonl:2: expect: unknown key 'nmber' (did you mean 'number'?)"),
    ('{"name": "x", "expect": {"tolerance": 3}}', "cases.jsonl:2: expect: "),
    ('{"name": "x", "expect": {"matches": "(unclosed"}}', "cases.jsonl:2: expect.matches is not a valid regular"),
    ('{"name": "x", "expect": {"scorer": "gone.py:score"}}', "cases.jsonl:2: expect.scorer 'gone.py:score' cannot be "
                                                             "loaded: tool code"),
    ('{"name": "x", "expect": {"scorer": "no_such_module_here:score"}}', "cannot be loaded: No module named"),
    ('{"name": "x", "expect": {"judge": "gone.yaml"}}', "cases.jsonl:2: expect.judge: the flow "),
    ('{"name": "x", "expect": {"judge": "quiz.yaml"}}', "cases.jsonl:2: expect.judge: "),
    ('{"name": "ok", "inputs": {"question": "q"}}', "cases.jsonl:2: case 'ok': the case on line 1 has this name"),
    ('{"name": "x", "inputs": {"topic": "q"}}', "cases.jsonl:2: Quiz has no input 'topic'"),
    ('{"name": "x", "inputs": {"question": "q"}, "routes": {"answer": "yes"}}', "cases.jsonl:2: routes: Quiz has "
                                                                                "no decision 'answer'"),
    ('{"name": "x", "inputs": {"question": "q"}, "routes": {"level": "medium"}}', "decision 'level' has no label"),
    ('{"name": "x", "responses": [{"key": 3}]}', "cases.jsonl:2: responses: response 1 needs a `text` string"),
])
def test_bad_data_exits_2_naming_the_line(tmp_path: Path, line: str, said: str) -> None:
    code, out, err = evaluate(tmp_path, ['{"name": "ok", "inputs": {"question": "q"}}', line])
    assert code == 2, out + err
    assert said in err and "Traceback" not in err and out == ""
    assert not (tmp_path / "runs.db").exists() or "no runs" in cli("runs", "list", "--db", str(tmp_path / "runs.db"))[2]


@pytest.mark.parametrize(("spec", "said"), [
    ("temperature=1", "--compare 'temperature=1': give model=NAME, backend=KIND or flow=PATH"),
    ("backend=gpt", "--compare 'backend=gpt': the backend is one of cassette, auto, ollama, embedded"),
    ("flow=gone.yaml", "--compare 'flow=gone.yaml': there is no flow file gone.yaml"),
    ("model=smollm2-360m", "--compare 'model=smollm2-360m': the cassette backend has no model"),
])
def test_a_bad_compare_spec_exits_2(tmp_path: Path, spec: str, said: str) -> None:
    code, _, err = evaluate(tmp_path, [case("x", "1", {"number": 1})], "--compare", spec)
    assert code == 2 and said in err


READER = """\
flowrun: 1
name: Reader
description: A test agent.
tools: [read_file]
steps:
  read:
    kind: process
    instruction: Read the note.
    tool: read_file
    next: done
  done:
    kind: terminal
    instruction: Say what it says.
"""


def test_a_cases_files_are_put_in_its_runs_workspace_and_nowhere_else(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # runs keep their workspaces in .flowrun/workspaces/RUN
    reads = [{"key": "read", "text": '{"tool": "read_file", "arguments": {"path": "notes/a.txt"}}'},
             {"key": "done", "text": "it says hello"}]
    cases = [{"name": n, "files": {"notes/a.txt": f"hello from {n}"}, "expect": {"contains": "hello"},
              "responses": reads} for n in ("one", "two")]
    found = report(tmp_path, cases, flow=READER)["configurations"][0]
    assert found["accuracy"] == 1.0
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    for result in found["results"]:  # each run read its own case's file
        (call,) = storage.of_runs(ToolCallRow, [result["run_id"]])
        assert call.result["content"] == f"hello from {result['name']}"

    code, out, err = evaluate(tmp_path, [cases[0], {**cases[1], "files": {"../../../escape.txt": "x"}}], flow=READER)
    assert code == 2 and f"{tmp_path / 'cases.jsonl'}:2: files: '../../../escape.txt' is outside" in err, out + err
    assert not (tmp_path / "escape.txt").exists() and not list(tmp_path.parent.glob("escape.txt"))
