"""Memory in flows: a step's `recall` (long-term memories of earlier runs in its prompt, access-checked) and its
`remember` (values kept in the agent's storage, read as `memory.<key>`, exact on resume and replay)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event

from engine.errors import RunStatus
from engine.flow.manifest import load_tools
from engine.flow.validate import check_flow_text
from engine.interpreter.replay import replay_run
from engine.interpreter.runs import record
from engine.interpreter.walk import continue_run, run_flow
from engine.kernel.access import Group
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage
from engine.kernel.tables import AuditRow, RunRow, StepRecord, StepRow
from engine.llm.scripted import ScriptedBackend
from engine.service import Service

ASKER = """\
flowrun: 1
name: Asker
description: You answer questions.
inputs:
  question: {type: string}
steps:
  answer:
    kind: process
    instruction: "Answer: {{ inputs.question }}"
    recall: {query: "{{ inputs.question }}", limit: 1%s}
    next: done
  done: {kind: terminal, output: "{{ steps.answer.output }}"}
"""


def asker(tmp_path: Path, answers: list[str], extra: str = "", groups: dict[str, Group] | None = None,
          name: str = "Asker") -> tuple[Kernel, object]:
    checked = check_flow_text(ASKER.replace("name: Asker", f"name: {name}") % extra, "asker.yaml",
                              load_tools([]).tools)
    assert checked.ok, checked.diagnostics
    backend = ScriptedBackend.from_responses([{"key": "answer", "text": text} for text in answers])
    kernel = Kernel(backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"), groups=groups or {},
                    workspaces=tmp_path / "workspaces")
    return kernel, checked


def ask(kernel: Kernel, checked: object, question: str) -> tuple[object, list[StepRow]]:
    outcome = asyncio.run(run_flow(kernel, checked.compiled, {"question": question}, file="asker.yaml"))
    steps = [s for s in kernel.storage.rows(StepRow) if s.run_id == outcome.run_id]
    return outcome, steps


def system_prompt(steps: list[StepRow]) -> str:
    return next(s for s in steps if s.step == "answer").prompt[0]["content"]


def test_a_step_recalls_the_best_matching_memories_of_earlier_runs_into_its_prompt(tmp_path: Path) -> None:
    kernel, checked = asker(tmp_path, ["Paris is the capital of France.", "Rome, by the Tiber.",
                                       "Still Paris."])
    first, steps = ask(kernel, checked, "Which city is the capital of France?")
    assert first.status == RunStatus.FINISHED
    assert "What you remember" not in system_prompt(steps)  # nothing was stored before
    ask(kernel, checked, "Which river runs through Rome?")
    third, steps = ask(kernel, checked, "capital France")
    prompt = system_prompt(steps)
    assert third.answer == "Still Paris."
    remembered = prompt.split("What you remember from earlier tasks (the most relevant first):\n")[1].splitlines()
    assert len(remembered) == 1 and "capital of France" in remembered[0]  # limit: 1, the best match


def test_recalling_another_agents_memories_needs_a_privilege_group(tmp_path: Path) -> None:
    kernel, other = asker(tmp_path / "a", ["Paris is the capital of France."], name="Geographer")
    ask(kernel, other, "Which city is the capital of France?")  # the Geographer's memories
    storage = kernel.storage
    refused, checked = asker(tmp_path / "a", ["unused"], extra=", from: [Geographer]")
    denied, _ = ask(refused, checked, "capital of France")
    assert denied.status == RunStatus.FAILED and "may not read the memory of agent 'Geographer'" in denied.error
    assert [(a.agent, a.action, a.target, a.allowed) for a in storage.rows(AuditRow)] == [
        ("Asker", "read_memory", "Geographer", False)]

    readers = {"readers": Group(members=frozenset({"Asker"}), read_agents=frozenset({"Geographer"}))}
    allowed, checked = asker(tmp_path / "a", ["It is Paris."], extra=", from: [Geographer]", groups=readers)
    outcome, steps = ask(allowed, checked, "capital of France")
    assert outcome.status == RunStatus.FINISHED and "capital of France" in system_prompt(steps)


def test_a_recall_query_is_checked_as_a_template_where_it_stands() -> None:
    text = ASKER.replace("{{ inputs.question }}\", limit", "{{ inputs.questoin }}\", limit") % ""
    found = check_flow_text(text, "asker.yaml", load_tools([]).tools).diagnostics
    assert [(d.line, d.code) for d in found] == [(10, "FR302")] and "questoin" in found[0].message


COUNTER = """\
flowrun: 1
name: Counter
inputs:
  city: {type: string}
steps:
  count:
    kind: process
    output: "{{ (memory.visits or 0) + 1 }}"
    remember: {visits: "{{ steps.count.output }}", last_city: "{{ inputs.city }}"}
    next: done
  done: {kind: terminal, output: "visit {{ memory.visits }}; {{ memory.last_city }}"}
"""


def counter(tmp_path: Path) -> tuple[Kernel, object]:
    checked = check_flow_text(COUNTER, "counter.yaml", load_tools([]).tools)
    assert checked.ok, checked.diagnostics
    return Kernel(ScriptedBackend([]), Storage(f"sqlite:///{tmp_path / 'runs.db'}")), checked


def visit(kernel: Kernel, checked: object, city: str) -> object:
    return asyncio.run(run_flow(kernel, checked.compiled, {"city": city}, file="counter.yaml"))


def test_remembered_values_are_kept_across_runs_and_each_run_stores_what_it_read_and_kept(tmp_path: Path) -> None:
    kernel, checked = counter(tmp_path)
    assert [visit(kernel, checked, city).answer for city in ("Paris", "Rome")] == ["visit 1; Paris", "visit 2; Rome"]
    assert asyncio.run(kernel.load("Counter", "-", "visits")) == 2
    runs = sorted(kernel.storage.rows(RunRow), key=lambda r: r.created)
    assert [r.memory for r in runs] == [{"visits": None, "last_city": None}, {"visits": 1, "last_city": "Paris"}]
    kept = [s.remembered for s in kernel.storage.rows(StepRow) if s.step == "count"]
    assert kept == [{"visits": 1, "last_city": "Paris"}, {"visits": 2, "last_city": "Rome"}]


def test_a_resumed_run_sees_what_it_remembered_not_what_another_run_kept_since(tmp_path: Path) -> None:
    kernel, checked = counter(tmp_path)
    row = RunRow(id="c" * 32, agent="Counter", flow="counter.yaml", status=RunStatus.INTERRUPTED,
                 inputs={"city": "Oslo"}, created=time.time(), memory={"visits": 4, "last_city": "Lima"})
    kernel.storage.start_run(row)
    kernel.storage.record_step(StepRecord(row.id, "count", 1, "process", None, 5, None, None, 0, time.time(),
                                          time.time(), seq=2, remembered={"visits": 5, "last_city": "Oslo"}))
    asyncio.run(kernel.store("Counter", "other", "visits", 99))  # another run since
    outcome = asyncio.run(continue_run(kernel, checked.compiled, row, kernel.storage.rows(StepRow),
                                       file="counter.yaml"))
    assert (outcome.status, outcome.answer) == (RunStatus.FINISHED, "visit 5; Oslo")


def test_a_replay_reads_the_memory_the_run_read_and_reproduces_it(tmp_path: Path) -> None:
    kernel, checked = counter(tmp_path)
    visit(kernel, checked, "Paris")
    second = visit(kernel, checked, "Rome")
    asyncio.run(kernel.store("Counter", "other", "visits", 99))  # the agent's storage moved on since
    replay = asyncio.run(replay_run(record(kernel.storage, second.run_id), checked, file="counter.yaml"))
    assert replay.differences == [] and replay.outcome.answer == "visit 2; Rome"


def test_a_memory_no_step_remembers_is_an_unknown_name() -> None:
    text = COUNTER.replace("{{ memory.last_city }}", "{{ memory.last_town }}")
    found = check_flow_text(text, "counter.yaml", load_tools([]).tools).diagnostics
    assert [(d.line, d.code) for d in found] == [(11, "FR302")]
    assert "no step of the flow remembers 'last_town' (known: visits, last_city)" in found[0].message


def test_runs_of_one_agent_at_once_remember_a_new_key_without_failing(tmp_path: Path) -> None:
    kernel, checked = counter(tmp_path)  # each run's first `remember` of a key none has stored yet, at once
    outcomes = asyncio.run(Service(kernel).batch(checked, [{"city": f"c{n}"} for n in range(40)],
                                                 file="counter.yaml", concurrency=16))
    assert [o.status for o in outcomes] == [RunStatus.FINISHED] * 40, {o.error for o in outcomes}
    assert asyncio.run(kernel.load("Counter", "-", "last_city")) in {f"c{n}" for n in range(40)}


def test_recall_finds_an_agents_best_memories_among_many_more_of_other_agents(tmp_path: Path) -> None:
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    storage.add_memories("Other", "r" * 32, [("user", f"the note {n}") for n in range(5_000)])
    storage.add_memories("Asker", "a" * 32, [("user", "the hello note"), ("user", "nothing"), ("user", "the end")])
    storage.flush()
    bound: list[int] = []
    event.listen(storage.engine, "before_cursor_execute",
                 lambda _, __, ___, parameters, ____, _____: bound.append(len(parameters or ())))
    found = storage.search_memories(["Asker"], "the hello", limit=2)
    assert [m.content for m in found] == ["the hello note", "the end"]
    # every match of every agent was bound as a variable: past SQLite's limit (32,766 on some builds), a recall
    # failed the run, "too many SQL variables"
    assert max(bound) < 10


def test_a_run_stopped_as_it_reads_its_memory_is_stored_interrupted(tmp_path: Path) -> None:
    kernel, checked = counter(tmp_path)
    gate = threading.Event()
    kernel.storage.later(gate.wait, 30)  # the writer is busy: the run is still starting when it is stopped

    async def stopped_early() -> None:
        work = asyncio.ensure_future(run_flow(kernel, checked.compiled, {"city": "Oslo"}, file="counter.yaml",
                                              run_id="d" * 32))
        await asyncio.sleep(0.05)
        work.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await work

    asyncio.run(stopped_early())
    (run,) = kernel.storage.rows(RunRow)  # before, its memory was read first, and the run was never stored
    assert (run.id, run.status, run.memory) == ("d" * 32, RunStatus.INTERRUPTED, {"visits": None, "last_city": None})


def test_a_key_that_is_a_method_of_memory_in_templates_is_refused_where_it_is_kept() -> None:
    text = COUNTER.replace("remember: {visits:", "remember: {items:").replace("memory.visits", "memory.items")
    found = check_flow_text(text, "counter.yaml", load_tools([]).tools).diagnostics
    assert [(d.line, d.code) for d in found] == [(9, "FR003")]  # else `memory.items` renders dict.items
    assert "'items' is a method of `memory` in templates" in found[0].message


def test_a_value_too_large_to_remember_fails_the_step_and_is_not_kept(tmp_path: Path) -> None:
    kernel, checked = counter(tmp_path)
    outcome = visit(kernel, checked, "x" * 70_000)  # last_city: every later run would keep a copy of it
    assert outcome.status == RunStatus.FAILED
    assert "counter.yaml:9:" in outcome.error and "the value to remember as 'last_city' is 70,002 characters" in \
        outcome.error
    assert asyncio.run(kernel.load("Counter", "-", "visits")) is None  # none of the step's values was kept
