"""The library API every front end calls (the CLI, and next a server and workers): one kernel serving runs of any
number of flows. Start a run and get its id at once, wait for it, cancel it, resume or replay a stored one, list
and show stored runs, and follow a run's events.

    service = Service(kernel_for(flows, backend, storage))
    started = await service.start(checked, inputs, file="flows/math_agent.yaml", priority=1)  # once stored
    async for event in service.events(started.id): ...
    outcome = await started.outcome()          # or, from anywhere: await service.wait(started.id)
    outcomes = await service.batch(checked, [inputs, other_inputs], file="flows/math_agent.yaml", concurrency=4)
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import FlowrunError, RunStatus
from engine.events import Event, InputRequired, RunEnded, RunStarted, StepEnded, short
from engine.flow.validate import CheckedFlow
from engine.interpreter import answering
from engine.interpreter.replay import Replay, replay_run
from engine.interpreter.resume import Stopped, check_flow_for, resume_run, stopped
from engine.interpreter.runs import RunRecord, progress, record, status
from engine.interpreter.walk import RunOutcome, new_run_id, process_id, run_flow
from engine.kernel.asking import Question
from engine.kernel.kernel import Kernel
from engine.kernel.tables import RunRow, StepRow, of_queue

READS_AT_ONCE = 2  # storage reads on worker threads at once
FOLLOW_EVERY = 0.5  # seconds between looks at a run another process runs, while its events are followed
T = TypeVar("T")


@dataclass
class _Live:
    """A run this service started, while it goes on: its row as stored, and its steps as they end."""

    run: RunRow
    steps: list[StepRow] = field(default_factory=list)


class NotInFlight(FlowrunError):
    """The run is not one this service is running now."""


class AlreadyInFlight(FlowrunError):
    """The run is running already."""


@dataclass(frozen=True)
class Started:
    """A run that Service.start or Service.resume set going: its id, and the task that runs it."""

    id: str
    task: asyncio.Task[RunOutcome]

    async def outcome(self) -> RunOutcome:
        """How the run ended, once it has (a waiter that gives up does not stop the run)."""
        return await asyncio.shield(self.task)


class Service:
    """Runs on one kernel: those in flight are tasks on the event loop that started them."""

    def __init__(self, kernel: Kernel, *, max_runs: int | None = None) -> None:
        self.kernel = kernel
        self.max_runs = max_runs  # runs in flight at most, for those who `admit` their runs (None: no bound)
        self._in_flight: dict[str, asyncio.Task[RunOutcome]] = {}
        self._left = asyncio.Event()  # set when a run leaves _in_flight
        self._waiting = 0
        # Reads run on worker threads, which share the interpreter with the runs: more at once than this only
        # slows the runs (serve_bench: 1.2x the ideal makespan with reads waiting on the writer, 1.5-1.9x unbounded)
        self._reads = asyncio.Semaphore(READS_AT_ONCE)
        # What the runs this service started have done, as their events tell it: `progress` answers from here
        # while they go on, without a read (a server is asked all the time).
        self._live: dict[str, _Live] = {}
        kernel.events.listeners.append(self._observe)

    async def admit(self, queue: int) -> bool:
        """Wait until fewer than max_runs runs are in flight, so that one more may start; False at once when
        `queue` callers already wait."""
        if self.max_runs is None or len(self._in_flight) < self.max_runs:
            return True
        if self._waiting >= queue:
            return False
        self._waiting += 1
        try:
            while len(self._in_flight) >= self.max_runs:
                self._left.clear()
                await self._left.wait()
        finally:
            self._waiting -= 1
        return True

    async def start(self, checked: CheckedFlow, inputs: dict[str, Any], *, file: str, priority: int = 0,
                    workspace: Path | None = None, batch: str | None = None, run_id: str | None = None,
                    traceparent: str | None = None) -> Started:
        """Start a run of the valid flow `checked` (from `file`) with `inputs` (resolved: engine.interpreter.inputs)
        as a task on the running event loop, once the run is stored (or ended, if it could not be); in the trace
        `traceparent` names, if given."""
        run_id = run_id or new_run_id()
        work = run_flow(self.kernel, checked.compiled, inputs, file=file, run_id=run_id, batch=batch,
                        workspace=workspace, priority=priority, traceparent=traceparent)
        if run_id not in self._in_flight:
            self._live[run_id] = _Live(RunRow(id=run_id, agent=checked.flow.name, flow=file,
                                              status=RunStatus.RUNNING, batch=batch, inputs=inputs, created=0.0))
        return await self._track(run_id, work)

    async def to_end(self, start: Awaitable[Started]) -> RunOutcome:
        """How the run that `start` (a start or resume of this service) sets going ended (interrupted, where it was
        stopped with `cancel`); cancelled while the run goes on, it stops the run, which ends interrupted."""
        started = await start
        try:
            return await started.outcome()
        except asyncio.CancelledError:
            waiter = asyncio.current_task()
            if started.task.cancelled() and waiter is not None and not waiter.cancelling():
                return await self.wait(started.id)  # the run was stopped (Service.cancel), not its waiter
            await _stopped(started.task)
            raise

    async def batch(self, checked: CheckedFlow, inputs: Sequence[dict[str, Any]], *, file: str, concurrency: int,
                    run_ids: Sequence[str] | None = None, batch: str | None = None) -> list[RunOutcome]:
        """Run the valid flow `checked` (from `file`) once per inputs, at most `concurrency` runs at a time, each
        to its end, with the ids `run_ids` (new if not given), all stored under batch id `batch` (new if not
        given); how each ended, in the order of `inputs`. Cancelled, it stops its runs (they end interrupted)."""
        run_ids = run_ids or [new_run_id() for _ in inputs]
        batch = batch or uuid.uuid4().hex
        gate = asyncio.Semaphore(concurrency)

        async def one(given: dict[str, Any], run_id: str) -> RunOutcome:
            async with gate:
                return await self.to_end(self.start(checked, given, file=file, run_id=run_id, batch=batch))

        # Each waited for, also when one fails or the batch is cancelled: a gather that raised at the first left
        # the others' runs going, to be cancelled again by whoever closed the loop, midway through storing their end
        ended = await asyncio.gather(*(one(given, run_id) for given, run_id in zip(inputs, run_ids, strict=True)),
                                     return_exceptions=True)
        failed = next((e for e in ended if isinstance(e, BaseException)), None)
        if failed is not None:
            raise failed
        return ended  # type: ignore[return-value]  # none is an exception

    def _observe(self, event: Event) -> None:
        live = self._live.get(event.run)
        if live is None:
            return
        if isinstance(event, RunStarted):
            live.run.created = event.created
        elif isinstance(event, StepEnded):  # a row to show, never stored: built unchecked, 5 times quicker
            live.steps.append(StepRow.model_construct(
                run_id=event.run, step=event.step, visit=event.visit, kind=event.kind, branch=event.branch,
                output=event.value, tokens=event.tokens, started=0.0, finished=event.at, seq=event.seq,
                error=event.error))
        elif isinstance(event, RunEnded):  # stored: reads go to storage from now on
            del self._live[event.run]

    async def resume(self, checked: CheckedFlow, found: Stopped, *, file: str, force: bool = False,
                     rerun: bool = False, fence: bool = False) -> Started:
        """Go on with the stopped run `found` (engine.interpreter.resume.stopped) with the flow `checked` (from
        `file`), as a task on the running event loop, once claimed (with `fence`, written only while that claim
        holds: engine.kernel.fencing). A ResumeError where it cannot."""
        check_flow_for(found, checked.compiled, force=force, rerun=rerun)
        return await self._track(found.run.id, resume_run(self.kernel, checked.compiled, found, file=file,
                                                          fence=fence))

    async def _track(self, run_id: str, work: Coroutine[Any, Any, RunOutcome]) -> Started:
        """Run `work` as a task until the run has started (its events can then be followed) or it has ended."""
        if run_id in self._in_flight:  # a second resume of one run, say: the first one has it
            work.close()
            raise AlreadyInFlight(f"run {run_id} is running already")
        started = asyncio.Event()

        def seen(event: Event) -> None:
            if event.run == run_id and isinstance(event, RunStarted | RunEnded):
                started.set()

        self.kernel.events.listeners.append(seen)
        task = asyncio.get_running_loop().create_task(work)
        self._in_flight[run_id] = task
        task.add_done_callback(lambda done: self._leave(run_id, done))
        waiting = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the caller gave up before the run started: it does not go on alone
            await _stopped(task)
            raise
        finally:
            waiting.cancel()
            self.kernel.events.listeners.remove(seen)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # it could not even start (a run with this id open already, say)
        return Started(run_id, task)

    def _leave(self, run_id: str, task: asyncio.Task[RunOutcome]) -> None:
        if self._in_flight.get(run_id) is task:
            del self._in_flight[run_id]
            self._live.pop(run_id, None)  # it ended before it started, say
        self._left.set()

    @property
    def in_flight(self) -> list[str]:
        """The ids of the runs going on now."""
        return list(self._in_flight)

    async def wait(self, run_id: str) -> RunOutcome:
        """How run `run_id` ended, once it has: waited for if it is in flight, else as stored (then its path is
        the steps it stored)."""
        task = self._in_flight.get(run_id)
        if task is not None:
            try:
                return await Started(run_id, task).outcome()
            except asyncio.CancelledError:
                if not task.cancelled():  # the waiter was cancelled, not the run
                    raise
        found = await self.show(run_id)
        run = found.run
        return RunOutcome(run.id, RunStatus(run.status), run.answer, run.error, [s.step for s in found.steps])

    def running(self, run_id: str) -> str | None:
        """The id of the run in flight whose id is or starts with `run_id` (one only, as with stored runs)."""
        if run_id in self._in_flight:
            return run_id
        found = [known for known in self._in_flight if known.startswith(run_id)] if run_id else []
        return found[0] if len(found) == 1 else None

    async def cancel(self, run_id: str) -> RunOutcome:
        """Stop run `run_id` (or the one in flight whose id starts with it): it ends interrupted (resumable),
        keeping the steps it finished; how it ended. A run of the queue that no worker took yet, or that a worker
        runs, is taken out of the queue: that worker stops it at its next write (engine.kernel.fencing)."""
        found = self.running(run_id)
        if found is None:
            return await self._cancel_queued(run_id)
        return await self._interrupt(found)

    async def interrupt_all(self) -> None:
        """Stop every run in flight here (the process stops): each ends interrupted, to be resumed."""
        for run_id in self.in_flight:
            if self.running(run_id) == run_id:  # not ended meanwhile
                await self._interrupt(run_id)

    async def _interrupt(self, run_id: str) -> RunOutcome:
        self._in_flight[run_id].cancel()
        return await self.wait(run_id)

    async def take_out(self, run: RunRow, status: RunStatus, why: str) -> bool:
        """Store run `run` of the queue (as it was read) ended `status` with `why`, out of the queue (Storage.take_out):
        a worker holding it writes nothing more of it (engine.kernel.fencing), and the workers leave it alone. False
        where it changed since it was read (nothing is stored)."""
        storage = self.kernel.storage
        return await storage.commit(storage.take_out, run.id, (run.status, run.pid), process_id(), status, why)

    async def _cancel_queued(self, run_id: str) -> RunOutcome:
        storage = self.kernel.storage
        run = await self._read(storage.find_run, run_id)
        # stored so, workers run it (again): the sweep queues an interrupted one again, a paused one is retried
        if not of_queue(run) or run.status not in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.INTERRUPTED,
                                                   RunStatus.PAUSED):
            raise NotInFlight(f"run {run.id} is {run.status}: not running in this process, nor queued for workers "
                              "or run by one: nothing to cancel")
        why = f"cancelled while {run.status}"
        if not await self.take_out(run, RunStatus.INTERRUPTED, why):
            raise NotInFlight(f"run {run.id} changed as it was cancelled: look at it again (`flowrun runs show`)")
        return RunOutcome(run.id, RunStatus.INTERRUPTED, error=why)

    async def events(self, run_id: str, after: int = 0) -> AsyncIterator[Event]:
        """The events of run `run_id` numbered above `after`, then as they come, until its end. Those the bus no
        longer keeps (the run ended, or they came before it was resumed) are rebuilt from storage: its step.ended
        and run.ended events, with their numbers; a run ended before it came to this process has no others."""
        first = self.kernel.events.first_seq(run_id)
        if first is None:  # not this process's: what storage keeps, looked at again until the run stops
            async for event in self._followed(run_id, after):
                yield event
            return
        if after + 1 < first:
            for event in await self._stored_events(run_id, after, first):
                after = event.seq
                yield event
        ended = False
        async for event in self.kernel.events.subscribe(run_id, after):
            after, ended = event.seq, isinstance(event, RunEnded)
            yield event
        if not ended:  # it ended and the bus forgot it between first_seq and subscribe: storage has its end
            for event in await self._stored_events(run_id, after, None):
                yield event

    async def _followed(self, run_id: str, after: int) -> AsyncIterator[Event]:
        """The stored events of run `run_id` numbered above `after`; of a run of the queue, read again every
        FOLLOW_EVERY seconds while it is queued or a worker runs it, until its run.ended."""
        while True:
            run, steps = await self.progress(run_id)
            for event in _rebuilt(run, steps, after, None):
                after = event.seq
                yield event
                if isinstance(event, RunEnded):
                    return
            # followed while a worker may run it; a run of another process that is not the queue's ends here (it
            # may have crashed on another machine, which nothing here can tell)
            if not of_queue(run) or status(run) not in (RunStatus.QUEUED, RunStatus.RUNNING):
                return
            await asyncio.sleep(FOLLOW_EVERY)

    async def _stored_events(self, run_id: str, after: int, before: int | None) -> list[Event]:
        """The events of run `run_id` that storage keeps, numbered above `after` (and below `before`)."""
        return _rebuilt(*await self.progress(run_id), after, before)

    async def runs(self, limit: int | None = 20, batch: str | None = None, status: RunStatus | None = None,
                   flow: str | None = None) -> list[RunRow]:
        """The stored runs, newest first (of a batch, in a status, of the flow of that name, if given)."""
        return await self._read(self.kernel.storage.find_runs, limit, batch, status, flow)

    async def show(self, run_id: str) -> RunRecord:
        """The stored record of the run whose id is or starts with `run_id`."""
        return await self._read(record, self.kernel.storage, run_id)

    async def progress(self, run_id: str) -> tuple[RunRow, list[StepRow]]:
        """The run whose id is or starts with `run_id`, and the steps it has stored so far: of a run this service
        started and runs now, from memory; else from storage, which is quicker than `show` (not its syscalls:
        engine.interpreter.runs.progress)."""
        live = self._live.get(self.running(run_id) or "")
        if live is not None and live.run.created:
            return live.run, list(live.steps)
        return await self._read(progress, self.kernel.storage, run_id)

    async def stopped(self, run_id: str, *, worker: bool = False) -> Stopped:
        """The stored run whose id is or starts with `run_id`, read back to be resumed (a ResumeError where it
        cannot be: engine.interpreter.resume.stopped; `worker`: for a worker that took its job)."""
        return await self._read(functools.partial(stopped, worker=worker), self.kernel.storage, run_id)

    async def answer(self, run_id: str, value: Any, step: str | None = None) -> answering.Waiting:
        """Record `value` as the answer to what run `run_id` waits for (its step `step`'s question, where it waits on
        several), which makes it resumable; the question answered (engine.interpreter.answering.answer)."""
        return await self._read(functools.partial(answering.answer, step=step), self.kernel.storage, run_id, value)

    async def waiting(self, run_id: str) -> list[answering.Waiting]:
        """The questions the tree of run `run_id` waits on the answers of."""
        return await self._read(answering.waiting, self.kernel.storage, run_id)

    async def time_out(self) -> list[answering.Waiting]:
        """Settle the questions whose deadline passed as timed out (their runs resumable); those settled."""
        return await self._read(answering.time_out, self.kernel.storage)

    async def run_id(self, run_id: str) -> str:
        """The id of the run in flight, else stored, whose id is or starts with `run_id` (NoSuchRun if none)."""
        return self.running(run_id) or (await self._read(self.kernel.storage.find_run, run_id)).id

    async def _read(self, read: Callable[..., T], *args: Any) -> T:
        """`read(*args)` on a worker thread, so that the event loop goes on serving runs; a few at a time."""
        async with self._reads:
            return await asyncio.to_thread(read, *args)

    async def replay(self, run_id: str, checked: CheckedFlow, *, file: str) -> Replay:
        """Walk the flow `checked` (from `file`) again on the answers run `run_id` recorded, and compare."""
        return await replay_run(await self.show(run_id), checked, file=file)


async def _stopped(task: asyncio.Task[RunOutcome]) -> None:
    """Cancel the task of a run and wait until it has ended (interrupted, stored so)."""
    task.cancel()
    await asyncio.wait({task})


def _rebuilt(run: RunRow, steps: list[StepRow], after: int, before: int | None) -> list[Event]:
    """The events storage keeps of `run` (its `steps` stored), numbered above `after` (and below `before`): its
    step.ended and run.ended events, and what it asked if it waits."""
    rebuilt: list[Event] = [StepEnded(run.id, s.seq, s.finished, step=s.step, visit=s.visit, branch=s.branch,
                                      output=short(s.output), tokens=s.tokens, kind=s.kind, error=s.error,
                                      value=s.output)
                            for s in steps if s.seq]
    if run.events and run.status not in (RunStatus.RUNNING, RunStatus.QUEUED):  # queued again: not its end
        rebuilt.append(RunEnded(run.id, run.events, run.finished or run.created, status=run.status,
                                error=run.error, tokens=sum(s.tokens for s in steps)))
    if run.asking is not None and run.status == RunStatus.WAITING:  # what it asked before it stopped
        asked = Question.of(run.asking)
        rebuilt.append(InputRequired(run.id, asked.seq, run.finished or run.created, step=asked.step,
                                     visit=asked.visit, key=asked.key, asker=run.id, prompt=asked.prompt,
                                     schema=asked.schema, labels=list(asked.labels), deadline=asked.deadline))
    return sorted((e for e in rebuilt if after < e.seq and (before is None or e.seq < before)),
                  key=lambda e: e.seq)
