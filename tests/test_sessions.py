"""Run sessions: what the kernel holds for a run is the run's own, and is gone when the run ends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from engine.console import Progress, status_line, watch
from engine.errors import RunStatus
from engine.flow.validate import check_flow_text
from engine.interpreter.runs import status
from engine.interpreter.setup import kernel_for
from engine.interpreter.walk import continue_run, new_run_id, run_flow
from engine.kernel.access import AccessDenied
from engine.kernel.kernel import KernelError
from engine.kernel.storage import Storage, StorageError
from engine.kernel.tables import RunRow, StepRow
from engine.llm.scripted import ScriptedBackend
from engine.service import Service
from tests.conftest import ADDER as SHARED_ADDER
from tests.conftest import TALKER as SHARED_TALKER

# two flows of the same name (agent)
ADDER = SHARED_ADDER.replace("name: Adder", "name: Same")
TALKER = SHARED_TALKER.replace("name: Talker", "name: Same")


def test_two_flows_with_the_same_name_do_not_share_tool_grants(tmp_path: Path, tools) -> None:
    adder, talker = check_flow_text(ADDER, "adder.yaml", tools), check_flow_text(TALKER, "talker.yaml", tools)
    assert adder.ok and talker.ok
    call = json.dumps({"tool": "calculator", "arguments": {"expression": "2 + 3"}})
    backend = ScriptedBackend.from_responses([{"key": "add", "text": call}, {"key": "say", "text": "five"},
                                              {"key": "talk", "text": "hello"}])
    kernel = kernel_for([adder, talker], backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"))

    async def both() -> list:  # the talker starts while the adder waits for the model: grants must not mix
        return await asyncio.gather(run_flow(kernel, adder.compiled, {"a": 2, "b": 3}, file="adder.yaml"),
                                    run_flow(kernel, talker.compiled, {}, file="talker.yaml"))

    added, talked = asyncio.run(both())
    assert (added.status, added.answer) == (RunStatus.FINISHED, 5), added.error
    assert (talked.status, talked.answer) == (RunStatus.FINISHED, "hello"), talked.error


def test_a_run_may_call_only_the_tools_of_its_own_session(tmp_path: Path, tools) -> None:
    adder = check_flow_text(ADDER, "adder.yaml", tools)
    kernel = kernel_for([adder], ScriptedBackend([]), Storage(f"sqlite:///{tmp_path / 'runs.db'}"))
    kernel.open_run("r1", "Same", ["calculator"])
    kernel.open_run("r2", "Same", [])
    assert asyncio.run(kernel.call_tool("Same", "r1", "calculator", {"expression": "1 + 1"})).result["result"] == 2
    with pytest.raises(AccessDenied, match="may not call tool 'calculator'"):
        asyncio.run(kernel.call_tool("Same", "r2", "calculator", {"expression": "1 + 1"}))
    with pytest.raises(AccessDenied):  # a run that is not open has no grants at all
        asyncio.run(kernel.call_tool("Same", "r3", "calculator", {"expression": "1 + 1"}))
    with pytest.raises(KernelError, match="open already"):
        kernel.open_run("r1", "Same", [])


def test_nothing_of_a_thousand_runs_stays_in_the_kernel(tmp_path: Path, tools) -> None:
    talker = check_flow_text(TALKER, "talker.yaml", tools)
    runs = 1000
    backend = ScriptedBackend.from_responses([{"key": "talk", "text": "hello there", "times": runs}], slots=4)
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    kernel = kernel_for([talker], backend, storage)
    service = Service(kernel)
    outcomes = asyncio.run(service.batch(talker, [{}] * runs, file="talker.yaml", concurrency=50))
    assert [o.status for o in outcomes] == [RunStatus.FINISHED] * runs
    assert kernel.runs == {} and service.in_flight == []
    assert len(kernel.memory) == 0 and len(kernel.context) == 0 and len(kernel.events) == 0
    assert not kernel.scheduler.generated and kernel.scheduler.waiting == kernel.scheduler.running == 0
    assert len(storage.rows(RunRow)) == runs  # what the runs did is in storage, not in the kernel


def test_a_batch_progress_line_keeps_the_tokens_of_runs_that_ended(tmp_path: Path, tools) -> None:
    talker = check_flow_text(TALKER, "talker.yaml", tools)
    backend = ScriptedBackend.from_responses([{"key": "talk", "text": "hello there friend", "times": 3}])
    kernel = kernel_for([talker], backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"))
    progress = [Progress(new_run_id()) for _ in range(3)]
    work = Service(kernel).batch(talker, [{}] * 3, file="talker.yaml", concurrency=3,
                                 run_ids=[p.run_id for p in progress])
    asyncio.run(watch(work, progress, kernel.events, kernel.scheduler.generated, live=False))
    assert [(p.status, p.steps, p.step) for p in progress] == [(RunStatus.FINISHED, 2, "done")] * 3
    assert "9 tokens" in status_line(progress, kernel.scheduler.generated, 1.0)  # 3 tokens a run, runs all ended


def test_a_resumed_run_whose_way_on_is_gone_fails_and_leaves_nothing_open(tmp_path: Path, tools) -> None:
    talker = check_flow_text(TALKER, "talker.yaml", tools)
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    kernel = kernel_for([talker], ScriptedBackend([]), storage)
    row = RunRow(id="r1", agent="Same", flow="talker.yaml", status=RunStatus.INTERRUPTED, created=0.0)
    step = StepRow(run_id="r1", step="talk", visit=1, kind="process", output="hi", branch="gone", tokens=0,
                   started=0.0, finished=0.0)
    outcome = asyncio.run(continue_run(kernel, talker.compiled, row, [step], file="talker.yaml"))
    assert outcome.status == RunStatus.FAILED and "no way out labelled 'gone'" in (outcome.error or "")
    assert kernel.runs == {} and len(kernel.memory) == 0


def test_a_status_this_flowrun_does_not_know_is_a_message(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="status 'archived', which this flowrun does not know"):
        status(RunRow(id="r1", agent="a", flow="f.yaml", status="archived", created=0.0))
