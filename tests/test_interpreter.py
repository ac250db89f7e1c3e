"""Every example flow end to end on the scripted backend: the path taken, the tool calls made, what storage holds."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.flow.validate import CheckedFlow, load_flow
from engine.interpreter.runs import steps_of
from engine.interpreter.setup import kernel_for, read_cassette
from engine.interpreter.walk import RunOutcome, run_flow
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage
from engine.kernel.tables import MemoryRow, RunRow, StepRow, SyscallRow, ToolCallRow
from engine.kernel.tool_code import load_entry
from engine.resources import data_dir
from tests.conftest import FLOWS, MATH_LOOP, MATH_LOOP_CASSETTE

CASSETTES = FLOWS / "cassettes"


def run(flow: Path | CheckedFlow, cassette: Path | list[dict[str, Any]], inputs: dict[str, Any],
        tmp_path: Path) -> tuple[RunOutcome, Kernel]:
    """One run of `flow` answered by `cassette`, stored in a database under `tmp_path`."""
    from engine.llm.scripted import ScriptedBackend

    checked = flow if isinstance(flow, CheckedFlow) else load_flow(flow)
    assert checked.ok, checked.diagnostics
    backend = read_cassette(cassette) if isinstance(cassette, Path) else ScriptedBackend.from_responses(cassette)
    kernel = kernel_for([checked], backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"),
                        workspaces=tmp_path / "workspaces")
    outcome = asyncio.run(run_flow(kernel, checked.compiled, inputs, file=str(flow)))
    return outcome, kernel


def stored_steps(kernel: Kernel, outcome: RunOutcome) -> list[StepRow]:
    return steps_of(kernel.storage, outcome.run_id)


def branches(steps: list[StepRow], step: str) -> list[str | None]:
    return [s.branch for s in steps if s.step == step]


def test_travel_agent_city_trip(tmp_path: Path) -> None:
    query = "2 days from Seattle to Austin, leaving 2025-03-10"
    outcome, kernel = run(FLOWS / "travel_agent.yaml", CASSETTES / "travel_agent-city.cassette.yaml", {"query": query},
                          tmp_path)
    assert outcome.status == "finished", outcome.error
    steps = stored_steps(kernel, outcome)
    assert [s.step for s in steps] == outcome.path
    assert outcome.path[:5] == ["places_named", "parse_query", "trip", "destination_kind", "trip_city"]
    assert branches(steps, "destination_kind") == ["city"]  # decided from data: Austin is no state
    assert steps[2].output == {"days": 2, "origin": "Seattle", "destination": "Austin", "date": "2025-03-10"}
    flights = next(s for s in steps if s.step == "fly_there").output["flights"]
    assert flights and all(re.fullmatch(r"F\d{7}", f["flight"]) for f in flights)
    calls = kernel.storage.rows(ToolCallRow)
    assert [c.tool for c in calls] == [s.tools[0]["tool"] for s in steps if s.tools]
    assert all(c.error is None for c in calls)
    (row,) = kernel.storage.rows(RunRow)
    assert (row.status, row.answer, row.inputs) == ("finished", outcome.answer, {"query": query})
    assert [d["current_city"] for d in outcome.answer] == ["from Seattle to Austin", "from Austin to Seattle"]
    assert outcome.answer[0]["transportation"].startswith(f"Flight Number: {flights[0]['flight']}, from Seattle")


def test_travel_agent_state_trip_stays_in_a_city_of_the_state(tmp_path: Path) -> None:
    outcome, kernel = run(FLOWS / "travel_agent.yaml", CASSETTES / "travel_agent-state.cassette.yaml",
                          {"query": "5 days from Seattle to Texas, leaving 2025-03-10"}, tmp_path)
    assert outcome.status == "finished", outcome.error
    steps = stored_steps(kernel, outcome)
    assert branches(steps, "destination_kind") == ["state"]
    assert next(s for s in steps if s.step == "pick_city").tools[0]["arguments"] == {"state": "Texas"}
    assert {s.step: s.output for s in steps}["trip_city"] == "Austin"
    assert [d["current_city"] for d in outcome.answer] == ["from Seattle to Austin", *["Austin"] * 3,
                                                           "from Austin to Seattle"]
    assert steps[-1].output == outcome.answer


def test_the_travel_cassettes_take_every_branch(tmp_path: Path) -> None:
    checked = load_flow(FLOWS / "travel_agent.yaml")
    taken = set()
    for name in ("city", "state"):
        outcome, _ = run(checked, CASSETTES / f"travel_agent-{name}.cassette.yaml", {"query": name}, tmp_path / name)
        taken |= set(zip(outcome.path, outcome.path[1:], strict=False))
    assert {(a, b) for a, b, _ in checked.graph.edges(keys=True)} == taken


def test_the_math_loop_solves_each_subproblem_with_the_calculator(tmp_path: Path) -> None:
    outcome, kernel = run(MATH_LOOP, MATH_LOOP_CASSETTE,
                          {"problem": "A train covers 180 km in 2.5 hours. What is its speed in m/s?"}, tmp_path)
    assert outcome.status == "finished", outcome.error
    assert outcome.path == ["plan", "solve_next", "more_subproblems", "solve_next", "more_subproblems",
                            "solve_next", "more_subproblems", "check_answer", "answer"]
    steps = stored_steps(kernel, outcome)
    assert [s.output["result"] for s in steps if s.step == "solve_next"] == [180000, 9000, 20]
    assert outcome.answer == {"answer": "20 m/s", "working": "180000 m / 9000 s"}
    # The last prompt carries the description, the inputs, the progress so far and the instruction, in order.
    prompt = steps[-1].prompt
    assert prompt[0]["role"] == "system" and "mathematical problems" in prompt[0]["content"]
    assert "180 km in 2.5 hours" in prompt[0]["content"]
    assert any("180000 / 9000" in m["content"] and "20" in m["content"] for m in prompt[1:-1])
    assert prompt[-1]["content"].startswith("Give the final answer")
    # Every model call is a syscall of this run, with its timings.
    calls = kernel.storage.of_runs(SyscallRow, [outcome.run_id])
    assert Counter(c.kind for c in calls)["call_tool"] == 3
    assert all(c.finished >= c.started >= c.created for c in calls)
    # What was left in short-term memory went to long-term memory when the run ended.
    assert any("180 * 1000" in m.content for m in kernel.storage.rows(MemoryRow))


def test_narrative_agent_revises_twice_then_saves_the_story(tmp_path: Path) -> None:
    outcome, kernel = run(FLOWS / "narrative_agent.yaml", CASSETTES / "narrative_agent.cassette.yaml",
                          {"premise": "a lighthouse keeper"}, tmp_path)
    assert outcome.status == "finished", outcome.error
    steps = stored_steps(kernel, outcome)
    assert branches(steps, "revision_budget") == ["yes", "yes", "no"]
    assert branches(steps, "review") == ["needs work", "needs work"]
    assert outcome.path[-2:] == ["save_story", "story"]
    saved = tmp_path / "workspaces" / outcome.run_id / "story.md"
    assert saved.read_text().startswith("# The Keeper of Vey")
    # the answer is the parts as written, the conclusion as last revised
    parts = {s.step: s.output for s in steps}
    assert outcome.answer == "\n\n".join([*(parts[p] for p in ("introduction", "rising_action", "climax", "revise")),
                                          "(Saved as story.md.)"])


def test_rec_agent_takes_the_hotel_branch(tmp_path: Path) -> None:
    outcome, kernel = run(FLOWS / "rec_agent.yaml", CASSETTES / "rec_agent.cassette.yaml",
                          {"request": "a quiet hotel in Austin under $250 a night"}, tmp_path)
    assert outcome.status == "finished", outcome.error
    assert outcome.path == ["understand", "budget", "direction", "search_hotels", "recommend"]
    stays = load_entry("travel.py:accommodation_search", data_dir("tools"))("Austin", 50)["accommodations"]
    under = [a for a in stays if a["price"] < 250]
    assert len(under) == 3 < len(stays)
    assert {r["name"] for r in outcome.answer["recommendations"]} == {a["name"] for a in under}
    assert stored_steps(kernel, outcome)[3].output == outcome.answer  # built by the search step, not retyped


def test_sql_analyst_fixes_its_query_once(tmp_path: Path) -> None:
    outcome, kernel = run(FLOWS / "sql_analyst.yaml", CASSETTES / "sql_analyst.cassette.yaml",
                          {"question": "Which state has the most cities?", "tables": "cities(name, state)"}, tmp_path)
    assert outcome.status == "finished", outcome.error
    assert outcome.path == ["write_query", "result_ok", "retries_left", "fix_query", "result_ok", "answer"]
    steps = stored_steps(kernel, outcome)
    assert (steps[0].output["columns"], steps[0].output["rows"]) == (["name"], [])
    assert steps[3].output["rows"] == [["California", 5]]
    assert outcome.answer == "state: California, n: 5"


def test_notes_digest_reads_each_file_and_writes_the_digest(tmp_path: Path) -> None:
    checked = load_flow(FLOWS / "notes_digest.yaml")
    backend = read_cassette(CASSETTES / "notes_digest.cassette.yaml")
    kernel = kernel_for([checked], backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("Bees visit clover.")
    (notes / "b.md").write_text("Clover wilts without rain.")
    outcome = asyncio.run(run_flow(kernel, checked.compiled, {"topic": "bees", "files": ["a.md", "b.md"]},
                                   file="notes_digest.yaml", workspace=notes))
    assert outcome.status == "finished", outcome.error
    assert outcome.path == ["read_next", "files_left", "read_next", "files_left", "write_digest", "summary"]
    steps = stored_steps(kernel, outcome)
    # each visit's output is the files read so far, with what they say
    assert [[n["content"] for n in s.output] for s in steps if s.step == "read_next"] == [
        ["Bees visit clover."], ["Bees visit clover.", "Clover wilts without rain."]]
    # read_next reads the file the inputs name, with no model call: visits count the current visit.
    assert [s.prompt for s in steps if s.step == "read_next"] == [None, None]
    assert [c.arguments for c in kernel.storage.rows(ToolCallRow) if c.tool == "read_file"] == [
        {"path": "a.md"}, {"path": "b.md"}]
    assert "(b.md)" in (notes / "digest.md").read_text()


LOOP = """\
flowrun: 1
name: Looper
description: Loops while the model says so.
limits: {max_steps: STEPS, max_visits: VISITS}
steps:
  work:
    kind: process
    instruction: Work.
    next: again
  again:
    kind: decision
    question: Again?
    branches: {"yes": work, "no": done}
  done:
    kind: terminal
    instruction: Done.
"""


@pytest.mark.parametrize(("steps", "visits", "message", "kept"), [
    (5, 50, "the run has taken limits.max_steps (5) steps and would go on to step again", 5),
    (50, 3, "step work would run for the 4th time, more than limits.max_visits (3) allows", 6),
])
def test_limits_stop_a_looping_run_with_a_message(tmp_path: Path, steps: int, visits: int, message: str,
                                                  kept: int) -> None:
    flow = tmp_path / "loop.yaml"
    flow.write_text(LOOP.replace("STEPS", str(steps)).replace("VISITS", str(visits)))
    answers = [{"key": "work", "text": "worked", "times": 10}, {"key": "again", "text": "yes", "times": 10}]
    outcome, kernel = run(flow, answers, {}, tmp_path)
    assert outcome.status == "failed" and message in outcome.error and str(flow) in outcome.error
    assert len(stored_steps(kernel, outcome)) == kept
    (row,) = kernel.storage.rows(RunRow)
    assert (row.status, row.error) == ("failed", outcome.error)


def test_a_tools_step_lets_the_model_choose_a_tool_or_none(tmp_path: Path) -> None:
    flow = tmp_path / "choosy.yaml"
    flow.write_text("""\
flowrun: 1
name: Choosy
description: Picks its tools.
tools: [calculator, city_search]
steps:
  look:
    kind: process
    instruction: Find what is needed.
    tools: [calculator, city_search]
    next: look_again
  look_again:
    kind: process
    instruction: Anything else?
    tools: [calculator, city_search]
    next: done
  done:
    kind: terminal
    instruction: Done.
""")
    answers = [{"key": "look", "text": "calculator"},
               {"key": "look", "text": '{"tool": "calculator", "arguments": {"expression": "6 * 7"}}'},
               {"key": "look_again", "text": "none"}, {"key": "look_again", "text": "nothing more"},
               {"key": "done", "text": "42"}]
    outcome, kernel = run(flow, answers, {}, tmp_path)
    assert outcome.status == "finished", outcome.error
    first, second, _ = stored_steps(kernel, outcome)
    assert first.tools[0]["result"]["result"] == 42 and first.output["result"] == 42
    assert second.tools is None and second.output == "nothing more"


def test_a_decide_rendering_no_label_fails_the_run(tmp_path: Path) -> None:
    flow = tmp_path / "decider.yaml"
    flow.write_text("""\
flowrun: 1
name: Decider
description: Decides from its input.
inputs:
  answer: {type: string}
steps:
  route:
    kind: decision
    question: Which way?
    decide: "{{ inputs.answer }}"
    branches: {left: done, right: done}
  done:
    kind: terminal
    instruction: Done.
""")
    outcome, _ = run(flow, [], {"answer": "up"}, tmp_path)
    assert outcome.status == "failed"
    assert "step route: `decide` gave 'up', which is not one of its labels (left, right)" in outcome.error
