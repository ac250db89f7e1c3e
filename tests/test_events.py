"""Run events: published by the interpreter and the kernel, numbered per run, delivered to subscribers once each."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from engine.events import Event, EventBus, RunEnded, RunStarted
from engine.flow.validate import check_flow_text
from engine.interpreter.setup import kernel_for
from engine.interpreter.walk import new_run_id, run_flow
from engine.kernel.scheduler import Policy
from engine.kernel.storage import Storage
from engine.llm.scripted import ScriptedBackend

FLOW = """\
flowrun: 1
name: Adder
description: Adds, then says whether the sum is big.
tools: [calculator]
steps:
  add:
    kind: process
    instruction: Add 2 and 3.
    tool: calculator
    next: big
  big:
    kind: decision
    question: Is {{ steps.add.output.result }} big?
    branches: {yes: done, no: done}
  done:
    kind: terminal
    output: "{{ steps.add.output.result }}"
"""
CALL = json.dumps({"tool": "calculator", "arguments": {"expression": "2 + 3"}})


def kernel_on(tmp_path: Path, tools, responses: list[dict], policy: Policy = Policy.FIFO, **options):
    checked = check_flow_text(FLOW, "adder.yaml", tools)
    assert checked.ok, checked.diagnostics
    backend = ScriptedBackend.from_responses(responses, **options)
    return checked, kernel_for([checked], backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"), policy=policy)


def test_a_run_tells_what_happens_in_it_in_order(tmp_path: Path, tools) -> None:
    checked, kernel = kernel_on(tmp_path, tools, [{"key": "add", "text": CALL}, {"key": "big", "text": "no"}])
    seen: list[Event] = []
    kernel.events.listeners.append(seen.append)
    outcome = asyncio.run(run_flow(kernel, checked.compiled, {}, file="adder.yaml"))
    assert outcome.answer == 5
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert {e.run for e in seen} == {outcome.run_id}
    kinds = [e.type for e in seen]
    assert kinds == ["run.started",
                     "step.started", "syscall.queued", "syscall.started", "syscall.ended",  # the model picks a call
                     "tool.started", "tool.ended", "syscall.ended",  # the calculator
                     "syscall.ended", "step.ended",  # short-term memory
                     "step.started", "syscall.queued", "syscall.started", "syscall.ended",  # the decision
                     "syscall.ended", "step.ended",
                     "step.started", "step.ended",  # the terminal builds its answer from data
                     "run.ended"]
    steps = [(e.step, e.branch) for e in seen if e.type == "step.ended"]
    assert steps == [("add", None), ("big", "no"), ("done", None)]
    assert seen[-1].status == "finished" and seen[-1].error is None
    tool = next(e for e in seen if e.type == "tool.ended")
    assert (tool.tool, tool.error) == ("calculator", None)
    assert len(kernel.events) == 0  # nothing of the ended run is kept


def test_a_preempted_generation_says_so(tmp_path: Path, tools) -> None:
    long = " ".join(f"w{i}" for i in range(20))
    checked, kernel = kernel_on(tmp_path, tools, [{"key": "add", "text": CALL, "times": 2},
                                                  {"key": "big", "text": f"no {long}", "times": 2}],
                                slots=1, token_delay=0.001, policy=Policy.RR)
    kernel.scheduler.slice_tokens = 4
    seen: list[Event] = []
    kernel.events.listeners.append(seen.append)

    async def two() -> list:
        return await asyncio.gather(*(run_flow(kernel, checked.compiled, {}, file="adder.yaml") for _ in range(2)))

    asyncio.run(two())
    suspended = [e for e in seen if e.type == "syscall.suspended"]
    assert suspended and all(e.tokens >= 4 for e in suspended)
    for run in {e.run for e in seen}:
        numbers = [e.seq for e in seen if e.run == run]
        assert numbers == list(range(1, len(numbers) + 1))


def test_a_subscriber_that_reconnects_gets_every_event_once(tmp_path: Path, tools) -> None:
    checked, kernel = kernel_on(tmp_path, tools, [{"key": "add", "text": CALL}, {"key": "big", "text": "yes"}],
                                token_delay=0.01)
    run_id = new_run_id()
    every: list[Event] = []
    kernel.events.listeners.append(every.append)

    async def main() -> list[Event]:
        started = asyncio.Event()
        kernel.events.listeners.append(lambda e: isinstance(e, RunStarted) and started.set())
        run = asyncio.create_task(run_flow(kernel, checked.compiled, {}, file="adder.yaml", run_id=run_id))
        await started.wait()
        got: list[Event] = []
        async for event in kernel.events.subscribe(run_id):  # the first connection drops after 3
            got.append(event)
            if len(got) == 3:
                break
        await asyncio.sleep(0.05)  # meanwhile the run goes on
        async for event in kernel.events.subscribe(run_id, after=got[-1].seq):  # Last-Event-ID
            got.append(event)
        await run
        return got

    got = asyncio.run(main())
    assert [e.seq for e in got] == [e.seq for e in every] == list(range(1, len(every) + 1))
    assert isinstance(got[-1], RunEnded)


def test_events_published_on_another_thread_reach_a_subscriber() -> None:
    bus = EventBus()
    bus.publish(RunStarted("r"))

    async def main() -> list[int]:
        later = threading.Timer(0.05, lambda: (bus.publish(Event("r")), bus.publish(RunEnded("r", status="x"))))
        later.start()
        return [e.seq async for e in bus.subscribe("r")]

    assert asyncio.run(main()) == [1, 2, 3]


def test_a_run_the_bus_does_not_keep_has_no_events() -> None:
    async def main() -> list[Event]:
        return [e async for e in EventBus().subscribe("nobody")]

    assert asyncio.run(main()) == []


def test_a_listener_that_fails_does_not_stop_the_event_or_the_others(capsys) -> None:
    bus, heard = EventBus(), []

    def broken(event: Event) -> None:
        raise RuntimeError("the metrics backend is gone")

    bus.listeners += [broken, heard.append]
    published = bus.publish(RunEnded("run", status="finished"))
    assert heard == [published] and published.seq == 1
    assert "flowrun: a listener of run events failed on run.ended: RuntimeError: the metrics backend is gone" in \
        capsys.readouterr().err
