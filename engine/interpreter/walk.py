"""Walking one run of a compiled flow: every step becomes kernel syscalls (how each kind of step does that is in
engine.interpreter.steps), and is stored when it ends.

A run's record (storage.start_run) is made before its first step and each step's (storage.record_step) is
committed before the next one starts, so a run that fails or is interrupted keeps every step it finished.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from engine.errors import FlowrunError, RunStatus
from engine.events import RunEnded, RunStarted, StepEnded, StepStarted, short
from engine.flow.compiler import CompiledFlow
from engine.flow.kinds import ends_run
from engine.flow.model import Step
from engine.interpreter import recovery
from engine.interpreter.prompts import progress_entries
from engine.interpreter.state import RunError, RunState
from engine.kernel.journal import Journal
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Fenced, StorageError, through
from engine.kernel.tables import RunRow, StepRow

REMEMBERED_ROOM = 65_536  # characters of JSON a remembered value may be


def new_run_id() -> str:
    """A new run's id, unique across processes sharing a database (given before a run starts, a caller knows it
    while the run goes on: to watch its events, say)."""
    return uuid.uuid4().hex


@dataclass
class RunOutcome:
    """How a run ended: `status` finished (with `answer`), failed or paused (with `error`) or interrupted."""

    run_id: str
    status: RunStatus
    answer: Any = None
    error: str | None = None
    path: list[str] = field(default_factory=list)


async def run_flow(kernel: Kernel, compiled: CompiledFlow, inputs: dict[str, Any], *, file: str,
                   run_id: str | None = None, batch: str | None = None, workspace: Path | None = None,
                   journal: Journal | None = None, priority: int = 0, memory: dict[str, Any] | None = None,
                   traceparent: str | None = None) -> RunOutcome:
    """Run the flow `compiled` (from file `file`) once with `inputs` (already resolved) on `kernel`, as run
    `run_id` (default: a new id), its tools in `workspace` (default: a directory of the run's own), given back the
    answers `journal` holds (a replay), its model calls at `priority`, its templates' `memory` as `memory` gives
    it (a replay gives the recorded run's; default: as the agent's storage holds it now, stored with the run), in
    the trace `traceparent` names (a W3C trace context; default: a trace of its own).

    A failure ends the run as failed, with a message naming the step; a model still unavailable after the
    kernel's retries, as paused (to be resumed); cancelling (Ctrl-C), as interrupted, and re-raises. Whatever the
    end, the steps it finished stay stored.
    """
    run = RunState.new(compiled, file, inputs, run_id or new_run_id())
    return await start_run(kernel, run, batch=batch, workspace=workspace, journal=journal, priority=priority,
                           memory=memory, traceparent=traceparent)


async def start_run(kernel: Kernel, run: RunState, *, batch: str | None = None, workspace: Path | None = None,
                    journal: Journal | None = None, priority: int = 0, memory: dict[str, Any] | None = None,
                    traceparent: str | None = None) -> RunOutcome:
    """Store and walk the run `run` as it starts (a new run's state, or a child run's: RunState.child); the rest
    as run_flow has it. A child run's templates see the memory its parent gave it, unless its flow remembers."""
    origin = run.origin
    row = RunRow(id=run.id, agent=run.agent, flow=run.file, status=RunStatus.RUNNING, batch=batch, inputs=run.inputs,
                 created=time.time(), flow_sha256=run.compiled.sha256,
                 workspace=None if workspace is None else str(workspace.resolve()), **process_id(),
                 parent=origin and origin.run, parent_step=origin and origin.step,
                 parent_visit=origin and origin.visit, branch=origin and origin.branch,
                 attempt=origin.attempt if origin and origin.attempt > 1 else None, traceparent=traceparent)
    _open(kernel, run, workspace, journal, priority)

    async def start() -> Any:
        if memory is not None:  # a replay's: what the recorded run read
            run.use_memory(memory)
            row.memory = run.memory or None
        remembered = () if memory is not None else run.flow.remembered
        if await through(kernel.storage.commit_start_run(row, remembered)):
            raise asyncio.CancelledError  # stopped as it started: stored all the same, to be stored interrupted
        if remembered:
            run.use_memory(row.memory)
        kernel.events.publish(RunStarted(run.id, agent=run.agent, flow=run.file, created=row.created))  # stored
        return await _walk(kernel, run, run.compiled.start)

    return await _drive(kernel, run, start())


def _open(kernel: Kernel, run: RunState, workspace: Path | None, journal: Journal | None, priority: int) -> None:
    """Open the run in the kernel: its flow's tools, and the agents of the flows it lists, are its to call."""
    compiled = run.compiled
    agents = [compiled.agents[name].compiled.flow.name for name in run.flow.agents if name in compiled.agents]
    kernel.open_run(run.id, run.agent, run.flow.tools, workspace=workspace, journal=journal, priority=priority,
                    agents=agents, budget=run.budget, root=run.root)


async def continue_run(kernel: Kernel, compiled: CompiledFlow, row: RunRow, steps: list[StepRow], *, file: str,
                       journal: Journal | None = None, run: RunState | None = None, priority: int = 0
                       ) -> RunOutcome:
    """Go on with stored run `row` (claimed by this process) from the step after its stored `steps`, which are
    not run again: the outputs, visits and short-term memory they left are rebuilt from their records; `journal`
    gives back what its unfinished step already got. `run`: a child run's state as its parent gives it (by
    default, the state of a run of `compiled` with the row's inputs)."""
    run = run or RunState.new(compiled, file, row.inputs or {}, row.id)
    run.retrying = row.status == RunStatus.FAILED
    if row.memory is not None or run.flow.remembered:
        run.use_memory(row.memory)
    kernel.events.open(run.id, after=max([row.events or 0, *(s.seq or 0 for s in steps)]))
    _open(kernel, run, Path(row.workspace) if row.workspace else None, journal, priority)
    for stored in steps:
        run.enter(stored.step, stored.visit)
        run.apply(stored.step, stored.output, stored.remembered, stored.error)
        if not ends_run(stored.kind) and stored.error is None:  # a caught step's error is not progress
            kernel.memory.restore(run.agent, run.id, progress_entries(stored.ask or "", stored.output,
                                                                      stored.tools or []))
    if steps and ends_run(steps[-1].kind) and steps[-1].error is None:  # it ended, but the process stopped before
        return await _end(kernel, run, RunStatus.FINISHED, answer=steps[-1].output)

    async def go_on() -> Any:  # in _drive, so that a way out the edited flow lacks ends the run as failed
        kernel.events.publish(RunStarted(run.id, agent=run.agent, flow=run.file, created=row.created))
        current = compiled.start if not steps else _follow(run, steps[-1].step, steps[-1].branch or "next")
        return await _walk(kernel, run, current)

    return await _drive(kernel, run, go_on())


def process_id() -> dict[str, Any]:
    """The host, pid and start time a run row keeps of the process running it."""
    return dict(_process(os.getpid()))


@functools.cache
def _process(pid: int) -> dict[str, Any]:
    # Once per process (a fork is another pid): psutil reads /proc for the start time, which took a sixth of a
    # server's time while runs were POSTed to it (serve_bench)
    return {"host": socket.gethostname(), "pid": pid, "pid_started": psutil.Process(pid).create_time()}


async def _drive(kernel: Kernel, run: RunState, walk: Coroutine[Any, Any, Any]) -> RunOutcome:
    """Await `walk` (the run's steps, to its answer) and store how the run ended."""
    try:
        answer = await walk
    except asyncio.CancelledError:
        at = run.path[-1] if run.path else run.compiled.start
        await _end(kernel, run, RunStatus.INTERRUPTED, error=f"interrupted at step {at}")
        raise
    except Exception as exc:
        status = exc.ends_run if isinstance(exc, FlowrunError) else None
        if status is None:  # a bug in flowrun: the run is stored as failed, and the error raised
            await _end(kernel, run, RunStatus.FAILED, error=f"internal error in flowrun: {type(exc).__name__}: {exc}")
            raise
        at = "" if isinstance(exc, RunError) or not run.path else f"step {run.path[-1]}: "
        return await _end(kernel, run, status, error=f"{at}{exc}")
    return await _end(kernel, run, RunStatus.FINISHED, answer=answer)


async def _end(kernel: Kernel, run: RunState, status: RunStatus, answer: Any = None,
               error: str | None = None) -> RunOutcome:
    """Close the run in the kernel (its short-term memory moves to long-term memory) and store how it ended."""
    tokens = kernel.scheduler.generated[run.id]
    session = kernel.close_run(run.id)
    if session is not None and session.journal is not None and status == RunStatus.FINISHED:
        session.journal.drop_unused()
    try:  # with the number of its run.ended, published next
        await kernel.storage.commit_finish_run(run.id, status, answer, error, kernel.events.next_seq(run.id))
    except Fenced as exc:  # another worker has it: how it ends is that one's to store
        status, error = RunStatus.LOST, str(exc)
    except StorageError as exc:
        status, error = RunStatus.FAILED, f"{error or 'the run finished'}; and its end could not be stored: {exc}"
    kernel.events.publish(RunEnded(run.id, status=status, error=error, tokens=tokens))
    kernel.events.forget(run.id)
    return RunOutcome(run.id, status, answer, error, run.path)


async def _walk(kernel: Kernel, run: RunState, current: str) -> Any:
    """Walk from step `current` to a terminal; its output, the run's answer."""
    limits = run.flow.limits
    while True:
        step = run.compiled.step(current)
        if len(run.path) >= limits.max_steps:
            raise RunError(f"{run.file}: the run has taken limits.max_steps ({limits.max_steps}) steps and would "
                           f"go on to step {step.id}: raise limits.max_steps if the flow needs more, or see where "
                           f"it loops with `flowrun runs show {run.id[:12]}`")
        visit = run.visits[step.id] + 1
        run.enter(step.id, visit)
        kernel.events.publish(StepStarted(run.id, step=step.id, visit=visit))
        tokens, started = kernel.scheduler.generated[run.id], time.time()
        done = await recovery.run_step(kernel, run, step, visit)
        if step.remember and done.error is None:
            done.remembered = await _remember(kernel, run, step, done.output)
        used, finished = kernel.scheduler.generated[run.id] - tokens, time.time()
        ends = ends_run(step.kind) and done.error is None
        if not ends and done.error is None:  # first, so that what it evicts to storage is committed with the step
            calls = [vars(call) for call in done.tool_calls]
            await kernel.remember(run.agent, run.id, *progress_entries(done.ask, done.output, calls))
        if not ends:
            current = _follow(run, step.id, done.branch or "next")
        # with the number of its step.ended, published next
        row = done.record(run.id, step, visit, used, (started, finished), run.votes, kernel.events.next_seq(run.id))
        interrupted = await through(kernel.storage.commit_step(row))
        run.apply(step.id, done.output, done.remembered, done.error)
        kernel.events.publish(StepEnded(run.id, step=step.id, visit=visit, branch=done.branch,
                                        output=short(done.output), tokens=row.tokens, kind=step.kind,
                                        error=done.error, value=done.output))
        if interrupted:
            raise asyncio.CancelledError
        if ends:
            return done.output


async def _remember(kernel: Kernel, run: RunState, step: Step, output: Any) -> dict[str, Any]:
    """The values of the step's `remember` (its templates see its own output), each kept in the agent's storage:
    before the step is stored, so that a crash between them stores them again on resume, never not at all."""
    own = {"steps": {**run.steps, step.id: {"output": output}}}
    values = {key: run.value(step, f"remember.{key}", text, own) for key, text in step.remember.items()}
    for key, value in values.items():
        size = len(json.dumps(value, ensure_ascii=False, default=str))
        if size > REMEMBERED_ROOM:  # every later run of the agent keeps a copy in its record
            raise RunError(f"{run.at(step, f'remember.{key}')}: step {step.id}: the value to remember as {key!r} is "
                           f"{size:,} characters of JSON, more than the {REMEMBERED_ROOM:,} a remembered value may "
                           "be: keep less (a summary, the last items)")
    for key, value in values.items():
        await kernel.store(run.agent, run.id, key, value)
    return values


def _follow(run: RunState, step_id: str, label: str) -> str:
    target = run.compiled.next(step_id, label)
    if target is None:  # a validated flow always has one
        raise RunError(f"step {step_id} has no way out labelled {label!r}")
    return target


