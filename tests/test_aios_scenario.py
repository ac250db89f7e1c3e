"""The AIOS scenario: the four seed agents (Math, Narrative, Rec, Travel) submitted at once to one service share one
model slot through the scheduler, and each still gives the answer its test case expects."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.events import Event, SyscallQueued, SyscallStarted, SyscallSuspended
from engine.flowtest import check, load_tests
from engine.interpreter.inputs import resolve_inputs
from engine.interpreter.runs import steps_of
from engine.interpreter.setup import kernel_for, read_cassette
from engine.interpreter.walk import new_run_id
from engine.kernel.scheduler import Policy
from engine.kernel.storage import Storage
from engine.llm.scripted import RunScripts
from engine.service import Service
from tests.conftest import FLOWS

SEEDS = {"math_agent": 3, "travel_agent": 2, "rec_agent": 1, "narrative_agent": 0}  # agent: its priority


def scenario(policy: Policy, tmp_path: Path, aging: int = 1) -> tuple[list[Event], dict[str, str]]:
    """The four seed agents' first test cases, started at once on one slot under `policy`: the events, and the run
    id of each agent."""
    tests = {name: load_tests(FLOWS / f"{name}.test.yaml") for name in SEEDS}
    cases = {name: found.cases[0] for name, found in tests.items()}
    runs = {name: new_run_id() for name in SEEDS}
    backend = RunScripts(slots=1)
    for name, case in cases.items():
        assert case.cassette is not None
        backend.scripts[runs[name]] = read_cassette(case.cassette)
        backend.scripts[runs[name]].token_delay = 0.01
    flows = {name: found.flow for name, found in tests.items()}
    kernel = kernel_for(flows.values(), backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"), policy=policy,
                        workspaces=tmp_path / "workspaces")
    kernel.scheduler.slice_tokens, kernel.scheduler.aging = 8, aging
    service = Service(kernel)
    seen: list[Event] = []
    kernel.events.listeners.append(seen.append)

    async def all_at_once() -> None:
        started = await asyncio.gather(*(
            service.start(flows[name], resolve_inputs(flows[name].flow, cases[name].inputs, name),
                          file=str(FLOWS / f"{name}.yaml"), priority=SEEDS[name], run_id=runs[name])
            for name in SEEDS))
        outcomes = {name: await s.outcome() for name, s in zip(SEEDS, started, strict=True)}
        for name, outcome in outcomes.items():
            problems = check(cases[name].expect, outcome, steps_of(kernel.storage, outcome.run_id))
            assert not problems, (name, problems)

    asyncio.run(all_at_once())
    return seen, runs


def llm(seen: list[Event], kind: type[Event]) -> list[Event]:
    return [e for e in seen if isinstance(e, kind)]


def test_under_fifo_each_model_call_runs_whole_in_the_order_asked(tmp_path: Path) -> None:
    seen, _ = scenario(Policy.FIFO, tmp_path)
    assert not llm(seen, SyscallSuspended)
    assert [e.syscall for e in llm(seen, SyscallStarted)] == [e.syscall for e in llm(seen, SyscallQueued)]
    assert len({e.run for e in llm(seen, SyscallStarted)}) == 4  # the four agents shared the one slot


def test_under_round_robin_long_generations_are_cut_into_turns(tmp_path: Path) -> None:
    seen, _ = scenario(Policy.RR, tmp_path)
    suspended = llm(seen, SyscallSuspended)
    assert suspended
    # between a generation's suspension and its next turn, another agent's call ran
    order = [(e.syscall, e.run) for e in llm(seen, SyscallStarted)]
    for stop in suspended:
        turns = [i for i, (syscall, _) in enumerate(order) if syscall == stop.syscall]
        assert len(turns) >= 2
        between = {run for _, run in order[turns[0] + 1:turns[1]]}
        assert between - {stop.run}, f"{stop.syscall} was suspended, but no other agent ran before its next turn"


def test_under_priority_a_model_call_never_starts_before_a_higher_agents_waiting_one(tmp_path: Path) -> None:
    seen, runs = scenario(Policy.PRIORITY, tmp_path, aging=0)  # no aging: the order is by priority alone
    priority = {run: SEEDS[name] for name, run in runs.items()}
    waiting: dict[str, str] = {}  # syscall -> run
    contended = 0
    for e in seen:
        if isinstance(e, SyscallQueued | SyscallSuspended):
            waiting[e.syscall] = e.run
        elif isinstance(e, SyscallStarted):
            others = {run for syscall, run in waiting.items() if syscall != e.syscall}
            contended += len(others | {e.run}) > 1
            assert all(priority[run] <= priority[e.run] for run in others), (e, others)
            waiting.pop(e.syscall, None)
    # the agents did wait for each other: math_agent the least, whose first expression with units has its tool
    # worker load the unit registry (most of a second), while the other three contend
    assert contended >= 1
