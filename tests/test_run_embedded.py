"""`flowrun run` end to end on the real default model (SmolLM2-135M, embedded): slow, run in CI.

The model's answers are its own; what is checked is what flowrun guarantees whatever they are: the run reaches
its terminal step, every decision is one of its labels, every tool call fits the tool's schema and is recorded,
and storage holds every step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.flow.validate import load_flow
from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow, StepRow, ToolCallRow
from tests.conftest import FLOWS, ROOT

pytestmark = pytest.mark.slow


def flowrun(tmp_path: Path, *args: str, timeout: float = 280, model: bool = True
            ) -> subprocess.CompletedProcess[str]:
    """`flowrun ARGS` in a process of its own, in `tmp_path`, where no Ollama server answers (so on the embedded
    model; with `model` False, where no model can be found or loaded either)."""
    env = {**os.environ, "OLLAMA_HOST": "http://127.0.0.1:9", "PYTHONPATH": str(ROOT)}
    if not model:
        env |= {"FLOWRUN_MODELS": str(tmp_path / "no-models"), "XDG_CACHE_HOME": str(tmp_path / "no-cache")}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_math_agent_runs_to_its_answer_on_the_embedded_model(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    done = flowrun(tmp_path, "run", str(FLOWS / "math_agent.yaml"), "--backend", "auto", "--json",
                   "-i", "problem=A train covers 180 km in 2.5 hours. What is its speed in m/s?", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert "no Ollama server at http://127.0.0.1:9: using the embedded model" in done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "finished" and result["steps"][-1] == "answer"
    storage = Storage(f"sqlite:///{db}")
    (run,) = storage.rows(RunRow)
    steps = storage.rows(StepRow)
    assert (run.status, [s.step for s in steps]) == ("finished", result["steps"])
    flow = load_flow(FLOWS / "math_agent.yaml").flow
    for step in steps:
        if flow.steps[step.step].kind == "decision":
            assert step.branch in flow.steps[step.step].branches
    calls = storage.rows(ToolCallRow)
    assert len(calls) == result["steps"].count("compute") + result["steps"].count("recompute")
    assert all(c.tool == "calculator" and isinstance(c.arguments["expression"], str) for c in calls)
    # the answer is the calculator's number, not the model's retyping of it
    assert result["answer"] == {"answer": calls[-1].result["result"], "working": calls[-1].arguments["expression"]}
    assert sum(s.tokens for s in steps) > 0

    # The same run replayed from its record, where no model can be found or loaded: the same steps and answer.
    replayed = flowrun(tmp_path, "runs", "replay", run.id, "--db", str(db), "--json", timeout=120, model=False)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert json.loads(replayed.stdout) == {"run_id": run.id, "identical": True, "differences": [],
                                           "steps": len(steps)}


def test_route_contracts_on_the_embedded_model(tmp_path: Path) -> None:
    """The same cases as on cassettes, checking the real model's routing: each case runs on it and is reported."""
    done = flowrun(tmp_path, "test", str(FLOWS / "rec_agent.yaml"), "--backend", "embedded", "--json")
    report = json.loads(done.stdout)
    (found,) = report["files"]
    assert [c["name"] for c in found["cases"]] == [
        "a quiet hotel in Austin takes the hotel branch and keeps to the budget",
        "Thai food in Seattle takes the restaurant branch and lists only Thai places"]
    for case in found["cases"]:
        assert case["steps"][:3] == ["understand", "budget", "direction"] or not case["passed"]
        assert case["passed"] == (case["problems"] == [])
    assert done.returncode == (0 if all(c["passed"] for c in found["cases"]) else 1), done.stderr


def test_trip_team_on_the_embedded_model_replays_exactly_with_no_model(tmp_path: Path) -> None:
    """A coordinator, the travel agent as its child run and the recommendation agent once per day (a map): the
    whole tree recorded, then replayed from the record where no model can be found or loaded."""
    db = tmp_path / "runs.db"
    done = flowrun(tmp_path, "run", str(FLOWS / "trip_team.yaml"), "--backend", "auto", "--json",
                   "-i", "query=2 days from Seattle to Austin, leaving 2025-03-10", "--db", str(db), timeout=400)
    result = json.loads(done.stdout.splitlines()[0])
    assert result["status"] in ("finished", "failed"), done.stderr
    storage = Storage(f"sqlite:///{db}")
    (root,) = [run for run in storage.rows(RunRow) if run.parent is None]
    children = [run for run in storage.rows(RunRow) if run.parent is not None]
    assert {run.agent for run in children} >= {"TravelAgent"}
    if result["status"] == "finished":
        days = len(root.answer)
        assert [run.branch for run in children if run.parent_step == "dinners"] == [str(n) for n in range(days)]

    replayed = flowrun(tmp_path, "runs", "replay", root.id, "--db", str(db), "--json", timeout=120, model=False)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    report = json.loads(replayed.stdout)
    assert report["identical"] and report["differences"] == [], report


def test_approve_post_on_the_embedded_model_waits_for_a_person_across_processes(tmp_path: Path) -> None:
    """The model drafts, the run waits with no process, a person answers from another process (changes, then
    approve), the model redrafts, the post is published by its tool; replayed with neither model nor person."""
    db = str(tmp_path / "runs.db")
    started = flowrun(tmp_path, "run", str(FLOWS / "approve_post.yaml"), "-i", "topic=our new opening hours",
                      "--backend", "auto", "--json", "--db", db)
    assert started.returncode == 4, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    changes = flowrun(tmp_path, "runs", "answer", run_id, "--value",
                      '{"decision": "changes", "note": "Say it is from Monday."}', "--backend", "auto", "--json",
                      "--db", db)
    assert changes.returncode == 4, changes.stderr  # redrafted, it waits again
    approved = flowrun(tmp_path, "runs", "answer", run_id, "--value", '{"decision": "approve"}', "--backend", "auto",
                       "--json", "--db", db)
    assert approved.returncode == 0, approved.stderr
    answer = json.loads(approved.stdout)["answer"]
    assert answer["status"] == "published" and answer["drafts"] == 2 and answer["post"]
    storage = Storage(f"sqlite:///{db}")
    [call] = storage.rows(ToolCallRow)
    assert call.tool == "write_file" and call.arguments == {"path": "post.md", "content": answer["post"]}
    assert [s.step for s in storage.rows(StepRow)] == ["draft", "review", "route", "draft", "review", "route",
                                                       "publish", "published"]
    replayed = flowrun(tmp_path, "runs", "replay", run_id, "--db", db, "--json", timeout=120, model=False)
    assert replayed.returncode == 0 and json.loads(replayed.stdout)["identical"], replayed.stdout + replayed.stderr


def test_world_clock_calls_the_mcp_time_server_on_the_embedded_model(tmp_path: Path) -> None:
    """The model reads the question, the bundled MCP time server (a real one, from PyPI) is asked for the time in
    that city's zone, the answer is built from what it says; replayed where no model can be found (a replay calls
    no tool: tests/test_mcp.py replays with the server gone)."""
    db = str(tmp_path / "runs.db")
    done = flowrun(tmp_path, "run", str(FLOWS / "world_clock.yaml"), "--backend", "auto", "--json",
                   "-i", "question=What time is it in Tokyo right now?", "--db", db)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["answer"]["timezone"] == "Asia/Tokyo" and result["answer"]["time"][2] == ":"
    [call] = Storage(f"sqlite:///{db}").rows(ToolCallRow)
    assert (call.tool, call.arguments, call.error) == ("get_current_time", {"timezone": "Asia/Tokyo"}, None)
    assert call.result["datetime"].endswith("+09:00") and call.result["datetime"][11:16] == result["answer"]["time"]
    replayed = flowrun(tmp_path, "runs", "replay", result["run_id"], "--db", db, "--json", timeout=120, model=False)
    assert replayed.returncode == 0 and json.loads(replayed.stdout)["identical"], replayed.stdout + replayed.stderr
