"""Child runs: what agent, map and parallel steps start (engine.interpreter.steps), each a run of its own on the
same kernel, stored with its parent run, step, visit and branch.

A child run's id is derived from that place (child_id), never drawn, so that a parent resumed after a crash finds
its children: one that finished gives its stored answer (nothing in it runs again), one that stopped is continued
from its last stored step, one never stored starts. A replay gives each child the recording of the child run at
the same place (Journal.children). Children run at once, up to the step's `max_concurrency`; each makes its own
syscalls, which the scheduler shares out with every other run's. Their answers are merged by the step that started
them, in their order (never by arrival); a child that fails cancels the others unless the step tolerates it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ErrorKind, RunStatus
from engine.flow.compiler import CompiledFlow
from engine.flow.model import Body, Step
from engine.interpreter import resume, walk
from engine.interpreter.inputs import InputError, resolve_inputs
from engine.interpreter.runs import record
from engine.interpreter.state import Origin, RunError, RunState
from engine.jsontext import json_or_text
from engine.kernel.journal import Journal
from engine.kernel.kernel import Kernel
from engine.kernel.tables import RunRow

MAX_DEPTH = 8  # runs calling runs: a root run's children are at depth 1
_IDS = uuid.UUID("8d3c6f1e-5b0a-4c51-9a57-2f0e3c8a9b11")  # the namespace of child run ids


class ChildFailed(RunError):
    """A child run did not finish and its step does not tolerate it: the step fails, or pauses with a child that
    paused (its model unavailable), so that resuming the parent continues the child."""

    def __init__(self, message: str, status: RunStatus, child: str) -> None:
        # a child that waits for a person is no error: the parent waits too
        super().__init__(message, kind={RunStatus.PAUSED: ErrorKind.MODEL_UNAVAILABLE, RunStatus.WAITING: None}.get(
            status, ErrorKind.CHILD_FAILED))
        self.ends_run, self.child = status, child

    def __str__(self) -> str:  # `args[0]`, what a `catch` keeps, leaves out the id: a replay's children have others
        return f"{self.args[0]} (child run {self.child[:12]})"


@dataclass
class Child:
    """One child run a step starts: its `branch` (a parallel's branch name, a map item's index, "" for an agent
    step), the flow it runs, with `inputs`; `inline`: a sub-flow of the parent's flow (run as its agent, seeing
    its steps), with `names` (a map item's `item` and `index`)."""

    branch: str
    compiled: CompiledFlow
    file: str
    inputs: dict[str, Any]
    inline: bool
    names: dict[str, Any] = field(default_factory=dict)


def _input(run: RunState, step: Step, at: str, value: Any, schema: dict[str, Any], names: dict[str, Any]) -> Any:
    """An input of a called flow (the step's field `at`): a constant as written; a template rendered to text for
    a string input, else to its value (text read as JSON, as `-i` reads it)."""
    if not isinstance(value, str):
        return value
    if schema.get("type", "string") == "string":
        return run.render(step, at, value, names)
    found = run.value(step, at, value, names)
    return json_or_text(found) if isinstance(found, str) else found


def child_id(origin: Origin) -> str:
    """The id of the child run that starts at `origin`."""
    return uuid.uuid5(_IDS, f"{origin.run}/{_place(origin)}").hex


def child_of(run: RunState, step: Step, branch: str, body: Body, names: dict[str, Any] | None = None) -> Child:
    """The child run that `body` (the body of `step` at `branch` of its bodies: "" for its own) starts, its inputs
    rendered with `names` besides the run's (a map item's `item` and `index`; a sub-flow's inputs are the run's)."""
    if body.steps:
        part = run.compiled.parts[(step.id, branch if step.kind == "parallel" else "")]
        return Child(branch, part, run.file, run.inputs, True, names or {})
    callee = run.compiled.agents[body.flow or ""]
    flow = callee.compiled.flow
    prefix = f"branches.{branch}.inputs." if step.kind == "parallel" else "inputs."
    given = {name: _input(run, step, f"{prefix}{name}", value, flow.inputs.get(name, {}), names or {})
             for name, value in body.inputs.items()}
    try:
        resolved = resolve_inputs(flow, given, callee.file)
    except InputError as exc:  # at the input it names, where it is a template
        named = next((f"{prefix}{name}" for name in body.inputs if f"input {name!r}" in str(exc)), prefix)
        raise RunError(f"{run.at(step, named)}: step {step.id}: {exc}") from None
    return Child(branch, callee.compiled, callee.file, resolved, False)


async def run_children(kernel: Kernel, run: RunState, step: Step, children: list[Child]) -> list[Any]:
    """The answers of `children` of the run's `step`, in their order (None for one that failed, where the step
    tolerates it), run at once up to the step's `max_concurrency`. A ChildFailed once more fail than the step
    tolerates (or one pauses): the others are cancelled first, and stored as interrupted."""
    allowed = tolerated(step, len(children))
    gate = asyncio.Semaphore(step.max_concurrency or max(1, len(children)))
    session = kernel.runs.get(run.id)
    resumed = session is not None and session.journal is not None and not session.journal.strict
    # a resumed run's children may be stored already: read once for them all, off the event loop
    stored = {row.id: row for row in await asyncio.to_thread(kernel.storage.children, [run.id])} if resumed else {}

    async def one(child: Child) -> tuple[str, walk.RunOutcome]:
        async with gate:
            return child.branch, await _run_child(kernel, run, step, child, stored)

    tasks = [asyncio.ensure_future(one(child)) for child in children]
    failed = 0
    try:
        for finished in asyncio.as_completed(tasks):
            branch, outcome = await finished
            if outcome.status == RunStatus.FINISHED:
                continue
            failed += 1
            if outcome.status != RunStatus.FAILED or failed > allowed:
                stopped = outcome.status if outcome.status in (RunStatus.PAUSED, RunStatus.WAITING) else \
                    RunStatus.FAILED
                raise ChildFailed(_failure(step, branch, outcome, allowed), stopped, outcome.run_id)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each stored as it stopped
    outcomes = [task.result()[1] for task in tasks]
    return [outcome.answer if outcome.status == RunStatus.FINISHED else None for outcome in outcomes]


def tolerated(step: Step, count: int) -> int:
    """How many of the step's `count` children may fail (its `tolerated_failures`: a count, or a percentage)."""
    allowed = step.tolerated_failures
    if isinstance(allowed, str):
        return count * int(allowed.rstrip("%")) // 100
    return allowed


def _failure(step: Step, branch: str, outcome: walk.RunOutcome, allowed: int) -> str:
    where = {"parallel": f"branch {branch}", "map": f"item {branch}"}.get(step.kind, "the flow it calls")
    more = f" (more than the {allowed} it tolerates)" if allowed and outcome.status == RunStatus.FAILED else ""
    return f"step {step.id}: {where} {outcome.status}{more}: {outcome.error}"


async def _run_child(kernel: Kernel, run: RunState, step: Step, child: Child, stored_children: dict[str, RunRow]
                     ) -> walk.RunOutcome:
    """The outcome of `child` of the run's step at its visit now: the answer it gave in an earlier try of the step
    (a `retry`), or else its run's (_child_run)."""
    place = (step.id, run.visits[step.id], child.branch)
    if place in run.ended_children:
        return run.ended_children[place]
    outcome = await _child_run(kernel, run, step, child, stored_children)
    if outcome.status == RunStatus.FINISHED:
        run.ended_children[place] = outcome
    return outcome


async def _child_run(kernel: Kernel, run: RunState, step: Step, child: Child, stored_children: dict[str, RunRow]
                     ) -> walk.RunOutcome:
    """Start, continue or read back `child` of the run's step at its visit and try now (`stored_children`: the
    run's child runs already stored, when it was resumed)."""
    if run.depth + 1 > MAX_DEPTH:
        raise RunError(f"{run.file}: step {step.id}: runs call runs more than {MAX_DEPTH} deep: see which flows "
                       "call which with `flowrun runs show`")
    origin = Origin(run.id, step.id, run.visits[step.id], child.branch, run.attempt)
    state = run.child(child.compiled, child.file, child.inputs, child_id(origin), origin, inline=child.inline,
                      names=child.names)
    if not child.inline:
        kernel.check_agent(run.agent, run.id, state.agent)
    session = kernel.runs.get(run.id)
    journal = session.journal if session is not None else None
    workspace = session.workspace if session is not None and child.inline else None
    priority = session.priority if session is not None else 0
    if journal is not None and journal.strict:  # a replay: the recorded child's answers, or none at all
        recorded = journal.children.get(_place(origin)) or Journal(strict=True)
        memory = None if child.inline else recorded.memory or {}
        _count(run, step)
        return await walk.start_run(kernel, state, workspace=workspace, journal=recorded, priority=priority,
                                    memory=memory)
    if journal is not None:  # a resumed run: its child may be stored already
        stored = stored_children.get(state.id)
        # one that finished gives its answer; one that still waits for a person, its waiting (the parent waits
        # again); one that failed, its failure (tolerated, or the parent's own failure, when the parent goes again
        # from failed: then the child goes again too)
        if stored is not None and (stored.status in (RunStatus.FINISHED, RunStatus.WAITING) or
                                   (stored.status == RunStatus.FAILED and not run.retrying)):
            return walk.RunOutcome(stored.id, RunStatus(stored.status), stored.answer, stored.error)
        if stored is not None:
            try:
                found = resume.stopped_run(kernel.storage, await asyncio.to_thread(record, kernel.storage, stored.id),
                                           force=True, worker=kernel.storage.fences.holds(run.id))
                return await resume.resume_run(kernel, child.compiled, found, file=child.file, run=state,
                                               priority=priority)
            except resume.ResumeError as exc:
                raise RunError(f"step {step.id}: {exc}") from None
    _count(run, step)
    given = journal.given if journal is not None else {}
    answered = Journal(tools=given.get(state.scope, deque()), given=given) if given else None
    return await walk.start_run(kernel, state, workspace=workspace, priority=priority, journal=answered)


def _count(run: RunState, step: Step) -> None:
    """Count a child run the run's step starts against the limit of its tree (a RunError past it)."""
    run.tally.started += 1
    if run.tally.started > run.tally.limit:
        raise RunError(f"{run.file}: step {step.id}: the run has started limits.max_child_runs "
                       f"({run.tally.limit}) child runs, its children's included, and would start more: raise "
                       "the limit of the flow a user ran if it needs more", kind=ErrorKind.LIMIT)


def _place(origin: Origin) -> str:
    """Where a child run stands in its parent, as Journal.children keys it."""
    again = f"@{origin.attempt}" if origin.attempt > 1 else ""  # the first try's as before tries were counted
    return f"{origin.step}#{origin.visit}/{origin.branch}{again}"


def place_of(row: RunRow) -> str:
    """`_place` of a stored child run."""
    return _place(Origin("", row.parent_step or "", row.parent_visit or 0, row.branch or "", row.attempt or 1))

