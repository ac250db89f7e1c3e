"""engine.service: one kernel serving runs of different flows; start, wait, cancel, resume, priority, events."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from engine.errors import RunStatus
from engine.events import SyscallStarted
from engine.flow.validate import check_flow_text
from engine.interpreter.resume import stopped
from engine.interpreter.runs import progress
from engine.interpreter.setup import kernel_for
from engine.kernel.scheduler import Policy
from engine.kernel.storage import Storage
from engine.kernel.tables import RunRow
from engine.llm.scripted import ScriptedBackend
from engine.service import NotInFlight, Service
from tests.conftest import ADDER, TALKER

CALL = json.dumps({"tool": "calculator", "arguments": {"expression": "2 + 3"}})


def service_on(tmp_path: Path, tools, responses: list[dict], policy: Policy = Policy.FIFO, **options):
    adder, talker = check_flow_text(ADDER, "adder.yaml", tools), check_flow_text(TALKER, "talker.yaml", tools)
    assert adder.ok and talker.ok
    backend = ScriptedBackend.from_responses(responses, **options)
    kernel = kernel_for([adder, talker], backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"), policy=policy)
    return Service(kernel), adder, talker


def test_runs_of_different_flows_share_one_kernel(tmp_path: Path, tools) -> None:
    service, adder, talker = service_on(tmp_path, tools, [{"key": "add", "text": CALL, "times": 3},
                                                          {"key": "say", "text": "five", "times": 3},
                                                          {"key": "talk", "text": "hello", "times": 3}])

    async def main() -> list:
        given = [(adder, {"a": 2, "b": 3}) if i % 2 else (talker, {}) for i in range(6)]
        started = [await service.start(flow, inputs, file=f"{i}.yaml") for i, (flow, inputs) in enumerate(given)]
        assert set(service.in_flight) <= {s.id for s in started}
        return [await s.outcome() for s in started]

    outcomes = asyncio.run(main())
    assert [(o.status, o.answer) for o in outcomes] == [(RunStatus.FINISHED, "hello"), (RunStatus.FINISHED, 5)] * 3
    assert service.in_flight == []
    stored = asyncio.run(service.runs(limit=None))
    assert sorted(r.agent for r in stored) == ["Adder"] * 3 + ["Talker"] * 3
    ended = asyncio.run(service.wait(outcomes[1].run_id))  # no longer in flight: as stored
    assert (ended.status, ended.answer, ended.path) == (RunStatus.FINISHED, 5, outcomes[1].path)


def test_a_cancelled_run_is_interrupted_and_resumes_without_repeating_a_step(tmp_path: Path, tools) -> None:
    long = " ".join(f"w{i}" for i in range(200))
    service, adder, _ = service_on(tmp_path, tools, [{"key": "add", "text": CALL}, {"key": "say", "text": long},
                                                     {"key": "say", "text": "five"}], token_delay=0.005)

    async def cancel() -> object:
        run_id = (await service.start(adder, {"a": 2, "b": 3}, file="adder.yaml")).id
        async for event in service.events(run_id):  # cancel while the second step generates
            if isinstance(event, SyscallStarted) and event.seq > 8:
                break
        return await service.cancel(run_id)

    outcome = asyncio.run(cancel())
    assert outcome.status == RunStatus.INTERRUPTED
    record = asyncio.run(service.show(outcome.run_id))
    assert [s.step for s in record.steps] == ["add"]
    with pytest.raises(NotInFlight):
        asyncio.run(service.cancel(outcome.run_id))

    async def resume() -> object:
        started = await service.resume(adder, stopped(service.kernel.storage, outcome.run_id), file="adder.yaml")
        return await started.outcome()

    resumed = asyncio.run(resume())
    assert (resumed.status, resumed.answer) == (RunStatus.FINISHED, 5)
    record = asyncio.run(service.show(outcome.run_id))
    assert [s.step for s in record.steps] == ["add", "say", "done"]
    assert len([t for t in record.tools if not t.superseded]) == 1  # the calculator was not called again


def test_a_run_started_with_a_higher_priority_is_served_first(tmp_path: Path, tools) -> None:
    words = "one two three four five six seven eight"
    service, _, talker = service_on(tmp_path, tools, [{"key": "talk", "text": words, "times": 3}],
                                    policy=Policy.PRIORITY, slots=1, token_delay=0.01)
    started: list[str] = []
    service.kernel.events.listeners.append(lambda e: isinstance(e, SyscallStarted) and started.append(e.run))

    async def main() -> tuple[str, str, str]:
        first = await service.start(talker, {}, file="talker.yaml")
        await asyncio.sleep(0.02)  # it holds the only slot
        low = await service.start(talker, {}, file="talker.yaml", priority=0)
        high = await service.start(talker, {}, file="talker.yaml", priority=5)
        for started in (first, low, high):
            await started.outcome()
        return first.id, low.id, high.id

    first, low, high = asyncio.run(main())
    assert started == [first, high, low]


def test_a_run_in_flight_is_shown_from_memory_as_storage_has_it(tmp_path: Path, tools) -> None:
    long = " ".join(f"w{i}" for i in range(100))
    service, adder, _ = service_on(tmp_path, tools, [{"key": "add", "text": CALL}, {"key": "say", "text": long}],
                                   token_delay=0.005)

    async def main() -> tuple:
        started = await service.start(adder, {"a": 2, "b": 3}, file="adder.yaml")
        async for event in service.events(started.id):  # the second step generates: one step has ended
            if isinstance(event, SyscallStarted) and event.seq > 8:
                break
        live = await service.progress(started.id[:8])
        stored = progress(service.kernel.storage, started.id)
        outcome = await started.outcome()
        return live, stored, await service.progress(started.id), outcome

    (run, steps), (stored_run, stored_steps), (ended, ended_steps), outcome = asyncio.run(main())
    assert run.status == RunStatus.RUNNING and (run.id, run.agent, run.flow, run.created) == (
        stored_run.id, stored_run.agent, stored_run.flow, stored_run.created)
    shown = [(s.step, s.visit, s.kind, s.branch, s.output, s.seq) for s in steps]
    assert shown == [(s.step, s.visit, s.kind, s.branch, s.output, s.seq) for s in stored_steps]
    assert shown == [("add", 1, "process", None, {"expression": "2 + 3", "result": 5}, shown[0][5])]
    # ended: as stored, and nothing of it left in memory
    assert (ended.status, ended.answer, [s.step for s in ended_steps]) == ("finished", 5, ["add", "say", "done"])
    assert outcome.status == RunStatus.FINISHED and service._live == {}


@pytest.mark.parametrize("after", [0.001, 0.3])  # as its first runs start; as they generate
def test_a_batch_runs_at_most_its_concurrency_and_cancelled_leaves_no_run_going(tmp_path: Path, tools,
                                                                                after: float) -> None:
    long = " ".join(f"w{i}" for i in range(200))
    service, _, talker = service_on(tmp_path, tools, [{"key": "talk", "text": long, "times": 5}], token_delay=0.005)
    run_ids = [f"{n:032x}" for n in range(5)]

    async def main() -> tuple[list[int], list[str]]:
        work = asyncio.ensure_future(service.batch(talker, [{}] * 5, file="talker.yaml", concurrency=2,
                                                   run_ids=run_ids))
        seen = []
        for _ in range(int(after / 0.01) or 1):
            await asyncio.sleep(min(after, 0.01))
            seen.append(len(service.in_flight))
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work
        return seen, service.in_flight  # before the loop closes, which would cancel what is left

    seen, left = asyncio.run(main())
    assert max(seen) <= 2 and left == []
    stored = {run.id: run.status for run in asyncio.run(service.runs(limit=None))}
    assert set(stored) <= set(run_ids[:2])  # the others never started
    assert set(stored.values()) <= {RunStatus.INTERRUPTED}
    if after > 0.1:
        assert max(seen) == 2 and len(stored) == 2


def test_a_run_of_a_batch_stopped_by_cancel_ends_interrupted_and_the_batch_gives_every_outcome(tmp_path: Path,
                                                                                                tools) -> None:
    long = " ".join(f"w{i}" for i in range(100))
    service, _, talker = service_on(tmp_path, tools, [{"key": "talk", "text": long, "times": 3}], token_delay=0.005)
    run_ids = [f"{n:032x}" for n in range(3)]

    async def main() -> list:
        work = asyncio.ensure_future(service.batch(talker, [{}] * 3, file="talker.yaml", concurrency=3,
                                                   run_ids=run_ids))
        while service.kernel.events.first_seq(run_ids[0]) is None:  # until the first run has started
            await asyncio.sleep(0.005)
        async for event in service.events(run_ids[0]):  # stop it as it generates
            if isinstance(event, SyscallStarted):
                break
        await service.cancel(run_ids[0])
        return await work

    outcomes = asyncio.run(main())
    assert [o.status for o in outcomes] == [RunStatus.INTERRUPTED, RunStatus.FINISHED, RunStatus.FINISHED]
    assert outcomes[2].answer == long


def test_a_resume_cancelled_while_it_claims_the_run_leaves_it_interrupted_to_resume_again(tmp_path: Path, tools,
                                                                                          monkeypatch) -> None:
    service, adder, _ = service_on(tmp_path, tools, [{"key": "add", "text": CALL}, {"key": "say", "text": "five"}])
    storage = service.kernel.storage
    storage.start_run(RunRow(id="a" * 32, agent="Adder", flow="adder.yaml", status=RunStatus.INTERRUPTED,
                             inputs={"a": 2, "b": 3}, created=time.time()))
    claim = Storage.claim_run

    def slow_claim(self: Storage, *args: object, **options: object) -> bool:
        time.sleep(0.3)  # a busy database: the claim is still being written when the resume is cancelled
        return claim(self, *args, **options)

    monkeypatch.setattr(Storage, "claim_run", slow_claim)

    async def cancelled_resume() -> None:
        work = asyncio.ensure_future(service.to_end(service.resume(adder, stopped(storage, "a" * 32),
                                                                   file="adder.yaml")))
        await asyncio.sleep(0.05)
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work

    asyncio.run(cancelled_resume())
    monkeypatch.setattr(Storage, "claim_run", claim)
    assert storage.find_run("a" * 32).status == RunStatus.INTERRUPTED

    async def resume() -> object:
        return await service.to_end(service.resume(adder, stopped(storage, "a" * 32), file="adder.yaml"))

    resumed = asyncio.run(resume())
    assert (resumed.status, resumed.answer) == (RunStatus.FINISHED, 5)


def test_the_events_of_a_run_of_another_process_end_with_what_storage_keeps(tmp_path: Path, tools) -> None:
    """Stored as running by a process elsewhere (it may have crashed there): what storage keeps, then the end of
    the stream, not a wait for an end that may never come; only a run of the queue is followed."""
    service, _, _ = service_on(tmp_path, tools, [])
    service.kernel.storage.start_run(RunRow(id="e" * 32, agent="Adder", flow="adder.yaml", status=RunStatus.RUNNING,
                                            host="another-machine", pid=1, created=time.time()))

    async def events() -> list[object]:
        return [event async for event in service.events("e" * 32)]

    assert asyncio.run(asyncio.wait_for(events(), 5)) == []
