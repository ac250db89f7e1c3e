"""`flowrun runs resume`: a stopped run goes on from its last stored step, and what cannot be resumed safely is
refused with what to do."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from engine.interpreter.runs import LLM_KINDS
from engine.kernel.storage import Storage
from engine.kernel.syscall import Syscall, SyscallKind
from engine.kernel.tables import RunRow, SnapshotRow, StepRecord, StepRow, SyscallRow, ToolCallRow
from engine.llm.base import Request, Snapshot
from engine.llm.scripted import tokenize
from tests.conftest import MATH_LOOP_CASSETTE
from tests.test_crash import HERE
from tests.test_run_cli import MATH, cassette, cli, runs_of, slow_run, steps_of, wait_for_steps

MATH_CASSETTE = ["--backend", "scripted", "--cassette", str(MATH_LOOP_CASSETTE)]


def model_calls(db: Path) -> Counter[str | None]:
    calls = Storage(f"sqlite:///{db}").rows(SyscallRow)
    return Counter(c.key for c in calls if c.kind in LLM_KINDS and c.error is None)


def shape(steps: list[StepRow]) -> list[tuple[str, int, str | None, object]]:
    return [(s.step, s.visit, s.branch, s.output) for s in steps]


def test_an_interrupted_run_resumes_to_the_same_end_as_one_never_stopped(tmp_path: Path) -> None:
    whole = tmp_path / "whole.db"
    assert cli(*MATH, *MATH_CASSETTE, "--db", str(whole))[0] == 0
    db = tmp_path / "runs.db"
    process = slow_run(tmp_path, db)
    wait_for_steps(db, 2, process)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    (run,) = runs_of(db)
    kept = len(steps_of(db))
    code, _, err = cli("runs", "list", "--db", str(db))
    assert code == 0 and "can be resumed" in err and f"flowrun runs resume {run.id[:12]}" in err

    code, out, err = cli("runs", "resume", run.id[:8], *MATH_CASSETTE, "--db", str(db), "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "finished"
    assert shape(steps_of(db)) == shape(steps_of(whole))
    (again,) = runs_of(db)
    assert again.status == "finished" and again.answer == runs_of(whole)[0].answer
    assert len(steps_of(db)) > kept
    assert model_calls(db) == model_calls(whole), "a stored step asked the model again"


def test_a_killed_run_shows_as_crashed_with_how_to_resume(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    process = slow_run(tmp_path, db)
    wait_for_steps(db, 1, process)
    process.kill()
    process.communicate(timeout=60)
    code, out, _ = cli("runs", "list", "--db", str(db), "--json")
    assert code == 0 and json.loads(out)[0]["status"] == "crashed"
    out = cli("runs", "show", json.loads(out)[0]["run_id"], "--db", str(db))[1]
    assert "· crashed" in out and "resume it with `flowrun runs resume" in out


def test_what_cannot_be_resumed_is_refused_with_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    assert cli(*MATH, *MATH_CASSETTE, "--db", str(db))[0] == 0
    (run,) = runs_of(db)
    code, _, err = cli("runs", "resume", run.id, *MATH_CASSETTE, "--db", str(db))
    assert code == 2 and "it finished: there is nothing to resume" in err
    code, _, err = cli("runs", "resume", "0000", *MATH_CASSETTE, "--db", str(db))
    assert code == 2 and "no run with an id starting '0000'" in err
    with Storage(f"sqlite:///{db}").engine.begin() as connection:  # as if it had been running elsewhere
        connection.exec_driver_sql("UPDATE runs SET status = 'running', host = 'elsewhere', pid = 1")
    code, _, err = cli("runs", "resume", run.id, *MATH_CASSETTE, "--db", str(db))
    assert code == 2 and "it is still running (process 1 on elsewhere)" in err and "--force" in err


def interrupted_run(tmp_path: Path, flow: Path) -> tuple[Storage, RunRow]:
    """A run of `flow` stored as interrupted before its first step ended."""
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    run = RunRow(id="f" * 32, agent="MathAgent", flow=str(flow), status="interrupted", created=time.time(),
                 inputs={"problem": "180 km in 2.5 h: speed in m/s?"})
    storage.start_run(run)
    return storage, run


def test_a_changed_flow_needs_force(tmp_path: Path) -> None:
    flow = tmp_path / "math_agent.yaml"
    flow.write_text(Path(MATH[1]).read_text())
    db = tmp_path / "runs.db"
    process = slow_run(tmp_path, db)  # runs the bundled flow: point the run at the copy
    wait_for_steps(db, 1, process)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    with Storage(f"sqlite:///{db}").engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE runs SET flow = '{flow}'")
    flow.write_text(flow.read_text().replace("limits: {max_steps: 40}", "limits: {max_steps: 41}"))
    (run,) = runs_of(db)
    code, _, err = cli("runs", "resume", run.id, *MATH_CASSETTE, "--db", str(db))
    assert code == 2 and "changed since run" in err and "--force" in err
    code, _, err = cli("runs", "resume", run.id, *MATH_CASSETTE, "--db", str(db), "--force")
    assert code == 0, err


def test_a_started_call_of_a_tool_that_is_not_idempotent_is_reported(tmp_path: Path, two_steps: Path) -> None:
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    run = RunRow(id="e" * 32, agent="TwoSteps", flow=str(two_steps), status="interrupted", created=time.time(),
                 inputs={"topic": "naps"})
    storage.start_run(run)
    storage.start_tool_call(ToolCallRow(run_id=run.id, agent=run.agent, tool="nap", arguments={"seconds": 0},
                                        started=time.time() + 1, finished=time.time() + 1, pending=True))
    args = ["runs", "resume", run.id, "--tools", str(tmp_path / "tools"), "--backend", "scripted", "--cassette",
            cassette(tmp_path, "responses:\n  - {key: work, text: done}\n  - {key: done, text: all done}\n"),
            "--db", str(tmp_path / "runs.db")]
    code, _, err = cli(*args)
    assert code == 2 and "nap({'seconds': 0})" in err and "may or may not have happened" in err
    assert "--rerun-unrecorded" in err
    code, out, err = cli(*args, "--rerun-unrecorded")
    assert code == 0 and "all done" in out, err


def test_a_suspended_generation_is_continued_from_its_snapshot(tmp_path: Path) -> None:
    storage, run = interrupted_run(tmp_path, Path(MATH[1]))
    # The scripted backend's snapshot state is the whole text it was giving: continuing it gives that text,
    # where starting over would give the cassette's (different) answer.
    planned = '{"subproblems": ["180 * 1000", "2.5 * 3600", "180000 / 9000"]}'
    suspended = Syscall(SyscallKind.GENERATE, run.agent, run.id, Request([], key="plan"))
    so_far = tokenize(planned)[:3]
    storage.record_snapshot(suspended, Snapshot("".join(so_far), len(so_far), planned))
    code, _, err = cli("runs", "resume", run.id, *MATH_CASSETTE, "--db", str(tmp_path / "runs.db"), "--json")
    assert code == 0, err
    plan = steps_of(tmp_path / "runs.db")[0]
    assert plan.step == "plan" and plan.output == json.loads(planned)
    assert storage.rows(SnapshotRow)[0].key == "plan"


def test_a_call_made_again_keeps_its_key_so_the_tool_does_it_once(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The process died after append_entry wrote its line but before its result was stored: resumed with
    --rerun-unrecorded, the call is made again with the same call key, and the tool, which keeps its keys, does
    nothing twice."""
    monkeypatch.chdir(tmp_path)
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    run = RunRow(id="d" * 32, agent="Ledger", flow=str(HERE / "ledger.yaml"), status="running", created=time.time(),
                 inputs={"purchases": "apples 3, bread 2 and milk 1.5"}, host="elsewhere", pid=1)
    storage.start_run(run)
    items = {"items": ["apples 3", "bread 2", "milk 1.5"]}
    storage.record_step(StepRecord(run.id, "plan", 1, "process", None, items, None, None, 5, time.time(),
                                   time.time(), "List each purchase"))
    started = storage.start_tool_call(ToolCallRow(run_id=run.id, agent=run.agent, tool="append_entry",
                                                  arguments={"text": "apples 3"}, started=time.time() + 1,
                                                  finished=time.time() + 1, pending=True))
    ledger = tmp_path / ".flowrun" / "workspaces" / run.id / "ledger.txt"
    ledger.parent.mkdir(parents=True)
    ledger.write_text(f"{run.id}/{started}\tapples 3\n")  # what the tool did before the process died
    args = ["runs", "resume", run.id, "--force", "--tools", str(HERE), "--backend", "scripted", "--cassette",
            str(HERE / "ledger.cassette.yaml"), "--db", str(tmp_path / "runs.db")]
    code, _, err = cli(*args)
    assert code == 2 and "append_entry({'text': 'apples 3'})" in err and "may or may not have happened" in err
    code, _, err = cli(*args, "--rerun-unrecorded")
    assert code == 0, err
    assert [line.split("\t")[1] for line in ledger.read_text().splitlines()] == ["apples 3", "bread 2", "milk 1.5"]
    assert (ledger.parent / "calls.log").read_text().splitlines()[0] == f"{run.id}/{started}"  # the same key
    (again,) = [c for c in storage.rows(ToolCallRow) if c.id == started]
    assert again.pending is None and again.result == {"entries": 1}


def test_a_run_whose_flow_calls_two_flows_of_one_name_resumes(tmp_path: Path) -> None:
    """Child runs are checked against the flows called by their content (sha256), not by path nor by name alone."""
    from engine.flow.validate import load_flow
    from engine.interpreter.resume import Stopped, check_flow_for
    from engine.kernel.journal import Journal

    for name, text in (("h1", "helped 1"), ("h2", "helped 2")):
        (tmp_path / f"{name}.yaml").write_text(f"flowrun: 1\nname: Helper\ndescription: You help.\nsteps:\n"
                                               f"  done: {{kind: terminal, output: \"{text}\"}}\n")
    (tmp_path / "main.yaml").write_text("flowrun: 1\nname: Main\ndescription: You call two helpers.\n"
                                        "agents: [h1, h2]\nsteps:\n  a: {kind: agent, flow: h1, next: b}\n"
                                        "  b: {kind: agent, flow: h2, next: done}\n  done: {kind: terminal, "
                                        "output: ok}\n")
    main = load_flow(tmp_path / "main.yaml")
    assert main.ok, main.diagnostics
    first = next(c.compiled for c in main.compiled.callees() if c.file.endswith("h1.yaml"))
    root = RunRow(id="r" * 32, agent="Main", flow="main.yaml", status="interrupted", created=1.0,
                  flow_sha256=main.compiled.sha256)
    child = RunRow(id="c" * 32, agent="Helper", flow=str(tmp_path / "h1.yaml"), status="interrupted", created=1.0,
                   flow_sha256=first.sha256, parent=root.id)
    check_flow_for(Stopped(root, [], Journal(), descendants=[child]), main.compiled, force=False, rerun=False)
