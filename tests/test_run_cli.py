"""`flowrun run`, `batch` and `runs` on the scripted backend, and every error a user will meet: each a clear
message and a non-zero exit, with the steps already finished still in storage."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from engine.cli import main
from engine.interpreter.runs import with_calls
from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow, StepRow, ToolCallRow
from tests.conftest import FLOWS, MATH_LOOP, MATH_LOOP_CASSETTE, TWO_STEPS

CASSETTES = FLOWS / "cassettes"
MATH = ["run", str(MATH_LOOP), "-i", "problem=180 km in 2.5 h: speed in m/s?"]

def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def steps_of(db: Path) -> list[StepRow]:
    """Every run's steps in `db`, read back as flowrun reads them (tool results from their calls' records)."""
    storage = Storage(f"sqlite:///{db}")
    return with_calls(storage.rows(StepRow), storage.rows(ToolCallRow))


def runs_of(db: Path) -> list[RunRow]:
    return Storage(f"sqlite:///{db}").rows(RunRow)


def cassette(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cassette.yaml"
    path.write_text(text)
    return str(path)


def test_run_prints_the_answer_and_the_run_id_and_stores_it(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    code, out, err = cli(*MATH, "--backend", "scripted", "--cassette", str(MATH_LOOP_CASSETTE),
                         "--db", str(db))
    assert code == 0, err
    assert json.loads(out) == {"answer": "20 m/s", "working": "180000 m / 9000 s"}
    (run,) = runs_of(db)
    assert f"run {run.id} finished in 9 steps" in err and run.status == "finished"
    code, out, err = cli(*MATH, "--backend", "scripted", "--cassette", str(MATH_LOOP_CASSETTE),
                         "--db", str(db), "--json")
    result = json.loads(out)
    assert (code, result["status"], result["answer"]["answer"], len(result["steps"])) == (0, "finished", "20 m/s", 9)
    code, out, _ = cli("runs", "list", "--db", str(db))
    assert code == 0 and out.count("MathAgent") == 2 and out.count("finished") == 2
    code, out, _ = cli("runs", "show", result["run_id"][:8], "--db", str(db))
    assert code == 0 and "more_subproblems" in out and "calculator" in out and "answer: {" in out
    assert out.count("\n3  more_subproblems  1      decision  yes") == 1
    shown = json.loads(cli("runs", "show", result["run_id"], "--db", str(db), "--json")[1])
    assert [s["step"] for s in shown["steps"]] == result["steps"]


def test_an_invalid_flow_is_refused_with_its_diagnostics(tmp_path: Path) -> None:
    flow = tmp_path / "bad.yaml"
    flow.write_text(TWO_STEPS.replace("next: done", "next: nowhere"))
    code, _, err = cli("run", str(flow), "--backend", "scripted", "--cassette",
                       str(MATH_LOOP_CASSETTE), "--db", str(tmp_path / "runs.db"))
    assert code == 2 and "FR101" in err and "is not valid" in err
    assert not (tmp_path / "runs.db").exists()


def test_missing_and_unknown_inputs(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    base = ["run", str(MATH_LOOP), "--backend", "scripted", "--cassette",
            str(MATH_LOOP_CASSETTE), "--db", str(db)]
    code, _, err = cli(*base)
    assert code == 2 and "input 'problem' is required: give it with -i problem=..." in err
    code, _, err = cli(*base, "-i", "problem=x", "-i", "colour=red")
    assert code == 2 and "has no input 'colour'; its inputs: problem" in err
    code, _, err = cli("run", str(FLOWS / "notes_digest.yaml"), "-i", "topic=x", "-i", "files=a.md",
                       "--backend", "scripted", "--cassette", str(CASSETTES / "notes_digest.cassette.yaml"),
                       "--db", str(db))
    assert code == 2 and "is not JSON" in err and "-i files='[\"a\", \"b\"]'" in err
    assert "Traceback" not in err and not db.exists()  # nothing ran


def test_unknown_model(tmp_path: Path) -> None:
    code, _, err = cli(*MATH, "--backend", "embedded", "--model", "gpt-17", "--db", str(tmp_path / "r.db"))
    assert code == 2 and "unknown model 'gpt-17'" in err and "flowrun models list" in err


def test_an_answer_failing_its_schema_twice(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    broken = MATH_LOOP_CASSETTE.read_text().replace(
        '{key: answer, text: \'{"answer": "20 m/s", "working": "180000 m / 9000 s"}\'}',
        "{key: answer, text: 'twenty', times: 2}")
    code, _, err = cli(*MATH, "--backend", "scripted", "--cassette", cassette(tmp_path, broken), "--db", str(db))
    assert code == 1 and "step answer: the model's answer failed the step's output_schema twice" in err
    assert "it is not JSON" in err
    assert len(steps_of(db)) == 8 and runs_of(db)[0].error.startswith(str(MATH_LOOP))


def test_a_failing_tool_is_sent_back_once_then_fails_the_run(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    broken = MATH_LOOP_CASSETTE.read_text().replace("2.5 * 3600", "2.5 / 0")
    broken = broken.replace("180000 / 9000", "2.5 / 0")  # the second try is no better
    code, _, err = cli(*MATH, "--backend", "scripted", "--cassette", cassette(tmp_path, broken), "--db", str(db))
    assert code == 1 and "step solve_next" in err and "still failed after the error was sent back" in err
    assert "division by zero" in err
    assert [s.step for s in steps_of(db)] == ["plan", "solve_next", "more_subproblems"]
    (run,) = runs_of(db)
    assert run.status == "failed"


def test_a_tool_timeout(tmp_path: Path, two_steps: Path) -> None:
    db = tmp_path / "runs.db"
    two_steps.write_text(TWO_STEPS.replace("    next: done\n", "    tool: nap\n    next: done\n"))
    answers = cassette(tmp_path, """responses: [{key: work, text: '{"tool": "nap", "arguments": {"seconds": 2}}'}]""")
    code, _, err = cli("run", str(two_steps), "-i", "topic=x", "--backend", "scripted", "--cassette", answers,
                       "--db", str(db), "--tools", str(tmp_path / "tools"))
    assert code == 1 and "step work: tool nap took longer than its timeout of 0.3 s" in err
    assert [s.step for s in steps_of(db)] == ["begin"]


def test_a_read_only_database_stops_the_run_and_keeps_what_it_holds(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    assert cli(*MATH, "--backend", "scripted", "--cassette", str(MATH_LOOP_CASSETTE),
               "--db", str(db))[0] == 0
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"
    code, _, err = cli(*MATH, "--backend", "scripted", "--cassette", str(MATH_LOOP_CASSETTE),
                       "--db", read_only)
    assert code in (1, 2) and "read-only" in err and "Traceback" not in err
    (kept,) = runs_of(db)
    assert kept.status == "finished" and len(steps_of(db)) == 9


def test_an_unusable_database_location(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = cli(*MATH, "--backend", "scripted", "--cassette", str(MATH_LOOP_CASSETTE),
                       "--db", str(blocker / "runs.db"))
    assert code == 2 and "cannot create the folder of database" in err


def slow_run(tmp_path: Path, db: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`flowrun run` of math_loop in a process of its own, each token taking 20 ms."""
    slow = MATH_LOOP_CASSETTE.read_text().replace("responses:", "token_delay: 0.02\nresponses:")
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *MATH, "--backend", "scripted", "--cassette", cassette(tmp_path, slow),
         "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})


def wait_for_steps(db: Path, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        if db.exists():
            with sqlite3.connect(db, timeout=5) as connection:
                try:
                    if connection.execute("SELECT count(*) FROM steps").fetchone()[0] >= count:
                        return
                except sqlite3.OperationalError:  # the tables are not there yet
                    pass
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach {count} steps: {process.communicate()}")


def test_ctrl_c_marks_the_run_interrupted_and_keeps_its_steps(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    process = slow_run(tmp_path, db)
    wait_for_steps(db, 2, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    (run,) = runs_of(db)
    assert run.status == "interrupted" and run.error.startswith("interrupted at step")
    kept = steps_of(db)
    assert 2 <= len(kept) < 9 and f"its {len(kept)} finished steps are kept" in err
    assert f"flowrun runs show {run.id[:12]}" in err and "Traceback" not in err


def test_a_locked_database_stops_the_run_with_a_message(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    process = slow_run(tmp_path, db, env={"FLOWRUN_DB_TIMEOUT": "0.5"})
    wait_for_steps(db, 1, process)
    holder = sqlite3.connect(db, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the database for as long as the run lasts
    try:
        _, err = process.communicate(timeout=60)
    finally:
        holder.rollback()
        holder.close()
    assert process.returncode == 1, err
    assert "database is locked" in err and "another process holds it locked" in err and "Traceback" not in err
    assert len(steps_of(db)) >= 1  # what was committed before the lock is still there


def test_batch_runs_share_the_model_and_print_a_summary(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"problem": f"problem {n}"}) + "\n" for n in range(3)))
    answers = "responses:\n" + "".join(f"  - {line}\n" for line in [
        '{key: plan, text: \'{"subproblems": ["a"]}\', times: 3}',
        '{key: solve_next, text: \'{"tool": "calculator", "arguments": {"expression": "6 * 7"}}\', times: 3}',
        "{key: check_answer, text: 'yes', times: 3}",
        '{key: answer, text: \'{"answer": "42"}\', times: 3}'])
    code, out, err = cli("batch", str(MATH_LOOP), "--inputs", str(inputs), "--concurrency", "3",
                         "--backend", "scripted", "--cassette", cassette(tmp_path, answers), "--db", str(db))
    assert code == 0, err
    assert out.count("finished") == 3 and "waiting" in out.splitlines()[0] and "3 of 3 runs finished" in err
    runs = runs_of(db)
    assert len({r.batch for r in runs}) == 1 and all(r.answer == {"answer": "42"} for r in runs)
    listed = json.loads(cli("runs", "list", "--batch", runs[0].batch[:8], "--json", "--db", str(db))[1])
    assert len(listed) == 3 and all(r["steps"] == 5 for r in listed)
    image = tmp_path / "timeline.png"
    code, _, err = cli("runs", "timeline", "--batch", runs[0].batch[:8], "--png", str(image), "--db", str(db))
    assert code == 0, err
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batch_input_errors_name_the_line(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('{"problem": "a"}\n{"problem": 3}\n')
    code, _, err = cli("batch", str(MATH_LOOP), "--inputs", str(inputs), "--backend", "scripted",
                       "--cassette", str(MATH_LOOP_CASSETTE), "--db", str(tmp_path / "r.db"))
    assert code == 2 and f"{inputs}:2: input 'problem': 3 is not of type \"string\"" in err
    inputs.write_text("{\n")
    code, _, err = cli("batch", str(MATH_LOOP), "--inputs", str(inputs), "--backend", "scripted",
                       "--cassette", str(MATH_LOOP_CASSETTE), "--db", str(tmp_path / "r.db"))
    assert code == 2 and f"{inputs}:1: not JSON" in err


def test_runs_show_an_unknown_run(tmp_path: Path) -> None:
    code, _, err = cli("runs", "show", "abc", "--db", str(tmp_path / "r.db"))
    assert code == 2 and "no run with an id starting 'abc'" in err


def test_an_exported_run_replays_on_the_scripted_backend(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    inputs = ["-i", "problem=180 km in 2.5 h: speed in m/s?"]
    first = json.loads(cli("run", str(MATH_LOOP), *inputs, "--json",
                           "--backend", "scripted", "--cassette", str(MATH_LOOP_CASSETTE),
                           "--db", str(db))[1])
    exported = tmp_path / "exported.yaml"
    code, _, err = cli("runs", "export", first["run_id"][:10], "-o", str(exported), "--db", str(db))
    assert code == 0 and "wrote" in err
    written = exported.read_text()
    assert "key: check_answer" in written and "text: 'yes'" in written  # quoted: read back as text, not true
    again = json.loads(cli("run", str(MATH_LOOP), *inputs, "--json",
                           "--backend", "scripted", "--cassette", str(exported), "--db", str(db))[1])
    assert (again["status"], again["steps"], again["answer"]) == ("finished", first["steps"], first["answer"])
    runs = {r.id: r for r in runs_of(db)}
    kept = [s for s in steps_of(db) if s.run_id == first["run_id"]]
    replayed = [s for s in steps_of(db) if s.run_id == again["run_id"]]
    assert [(s.step, s.output, s.branch) for s in kept] == [(s.step, s.output, s.branch) for s in replayed]
    assert runs[again["run_id"]].answer == runs[first["run_id"]].answer


def test_inputs_from_a_file(tmp_path: Path) -> None:
    given = tmp_path / "inputs.json"
    given.write_text(json.dumps({"problem": "from the file"}))
    base = [str(MATH_LOOP), "--backend", "scripted", "--cassette",
            str(MATH_LOOP_CASSETTE), "--db", str(tmp_path / "r.db")]
    code, _, err = cli("run", *base, "--input-file", str(given), "--json")
    assert code == 0, err
    assert runs_of(tmp_path / "r.db")[0].inputs == {"problem": "from the file"}
    given.write_text('["not", "an", "object"]')
    code, _, err = cli("run", *base, "--input-file", str(given))
    assert code == 2 and "inputs are a JSON object" in err
