"""Resuming a stored run that stopped (interrupted, paused, failed, or crashed with its process): what it got
before it stopped, checked, and given to the walker as a journal so that nothing recorded is asked or done again."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from engine.errors import FlowrunError, RunStatus
from engine.flow.compiler import CompiledFlow
from engine.interpreter import (
    answering,
    walk,  # the module: walk runs steps, whose child runs resume (children.py)
)
from engine.interpreter.runs import ANSWER_KINDS, LLM_KINDS, RunRecord, alive, answer_stands, record, root_of, status
from engine.interpreter.state import RunState
from engine.kernel.asking import Answer
from engine.kernel.journal import Journal, RecordedAnswer, RecordedTool
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage, through
from engine.kernel.tables import RunRow, SnapshotRow, StepRow, SyscallRow, ToolCallRow
from engine.llm.base import Snapshot


class ResumeError(FlowrunError):
    """The run cannot be resumed (or not without --force); the message says why and what to do."""


class ClaimedElsewhere(ResumeError):
    """Another process claimed the run first: it goes on there."""


@dataclass
class Stopped:
    """A stored run as resuming finds it: its steps, what its unfinished step already got (the journal), the calls
    of tools that are not idempotent which started but whose end was not stored, the records it will not use, and
    the request keys of every model answer it got (which a cassette should not give again)."""

    run: RunRow
    steps: list[StepRow]
    journal: Journal
    unrecorded: list[ToolCallRow] = field(default_factory=list)
    stale: tuple[list[str], list[int]] = ([], [])  # syscalls and tool calls the resumed run will not use
    answered: list[str] = field(default_factory=list)
    descendants: list[RunRow] = field(default_factory=list)  # its child runs, theirs, and so on
    spent: tuple[int, int] = (0, 0)  # the model calls the tree of runs made and the tokens they generated


def journal_of(calls: list[SyscallRow], tools: list[ToolCallRow], *, strict: bool) -> Journal:
    """The journal of a run's recorded `calls` and `tools` (those no resume went past): their successful answers
    and results (strict, for a replay: errors as well, and nothing may be asked that is not there)."""
    answers = deque(RecordedAnswer(c.key or "", c.text or "", c.id) for c in calls if answer_stands(c))
    recorded = deque(RecordedTool(t.tool, t.arguments, t.result, t.error, t.id, t.syscall, t.error_kind) for t in tools
                     if not t.pending and not t.superseded and (strict or t.error is None))
    return Journal(answers, recorded, strict=strict)


def stopped(storage: Storage, run_id: str, *, force: bool = False, worker: bool = False) -> Stopped:
    """Run `run_id` (or an unambiguous start of it) as it was stored, if it can be resumed (with `force`, also one
    stored as running on another machine, which cannot be checked; never one whose process runs on this one). With
    `worker`, for a worker that took its job: also a queued run, and one stored as running by a worker that
    stalled (engine.worker.worker checks), whatever its process looks like.

    A child run is resumed through the run a user started (runs.root_of), which continues its unfinished child
    runs: a child of a map item needs its parent's state to go on. A run that waits for an answer can be resumed
    once its question timed out (the timeout is settled here: the run goes on its timeout way)."""
    root = root_of(storage, storage.find_run(run_id))
    if root.status == RunStatus.WAITING:
        questions = answering.waiting(storage, root.id)
        open_ = [asked for asked in questions if not (asked.question.expired() and
                                                    answering.settle(storage, asked, Answer(timed_out=True)))]
        if open_:
            asked = open_[0].question
            until = "" if asked.deadline is None else f" (it times out at {answering.when(asked)})"
            raise ResumeError(f"run {root.id} waits for an answer to step {asked.step}{until}: give it with `flowrun "
                              f"runs answer {root.id[:12]} --value JSON` (or --text TEXT). It asks: {asked.prompt}")
        root = storage.find_run(root.id)  # as the timeout settled it
    return stopped_run(storage, record(storage, root), force=force, worker=worker)


def stopped_run(storage: Storage, found: RunRecord, *, force: bool = False, worker: bool = False) -> Stopped:
    """The stored run `found` as `stopped` gives it (a child run's: to be continued by its parent)."""
    run = found.run
    now = status(run)
    taken = worker and now in (RunStatus.QUEUED, RunStatus.RUNNING)
    if not now.resumable and not taken and not (now == RunStatus.RUNNING and force and not alive(run)):
        why = {RunStatus.FINISHED: "it finished: there is nothing to resume",
               RunStatus.QUEUED: "it is queued: a worker starts it (`flowrun worker`)",
               RunStatus.RUNNING: f"it is still running (process {run.pid} on {run.host}); if that process is gone, "
                          "resume it with --force"}.get(now, f"it is {now}")
        if now == RunStatus.RUNNING and alive(run):  # resuming it would run it twice at once
            why = (f"it is running in process {run.pid} on this machine: wait for it to end, or stop it (Ctrl-C "
                   f"or `kill {run.pid}`) and resume it then")
        raise ResumeError(f"run {run.id} cannot be resumed: {why}")
    since = found.steps[-1].finished if found.steps else run.created  # what came after is the journal's
    tools = [t for t in found.tools if t.started >= since and not t.superseded]
    later = [c for c in found.syscalls if c.created >= since and not c.superseded]
    # A failed run's last step is run afresh (the model's answers may be what failed); its tools' results stand.
    # A tool's error is not given back either: the call is made again.
    fresh = run.status == RunStatus.FAILED
    journal = journal_of([] if fresh else later, tools, strict=False)
    journal.supersede = lambda calls, tools: storage.later(storage.supersede, calls, tools, run.id)
    stale = ([c.id for c in later if fresh and c.kind in ANSWER_KINDS], [t.id for t in tools if t.error and t.id])
    answered = {c.id for c in later}
    for snap in storage.of_runs(SnapshotRow, [run.id]):
        if snap.created >= since and snap.key is not None and snap.syscall_id not in answered:
            journal.snapshots[snap.key] = Snapshot(snap.text, snap.tokens, snap.state)
    # a call in a child run that stopped may or may not have happened just the same: the child goes on with it
    unrecorded = [t for t in tools if t.pending]
    journal.pending = [RecordedTool(t.tool, t.arguments, id=t.id) for t in unrecorded]
    # a call in an unfinished child run may or may not have happened just the same (its child run goes on)
    unrecorded += [t for child in found.tree()[1:] if child.run.status != RunStatus.FINISHED
                   for t in child.tools if t.pending and not t.superseded]
    # what a cassette should not give again: the answers of the whole tree of runs, but those that a run going
    # again from failed asks again (its failed step's), and so do its failed children, theirs, and so on
    tree = found.tree()
    retried = {run.id} if fresh else set()
    for child in tree[1:]:  # parents come before their children
        if child.run.status == RunStatus.FAILED and child.run.parent in retried:
            retried.add(child.run.id)
    again = {c.id for child in tree if child.run.id in retried for c in child.syscalls
             if c.kind in LLM_KINDS and c.created >= (child.steps[-1].finished if child.steps else child.run.created)}
    given = [c.key or "" for child in tree for c in child.syscalls
             if answer_stands(c) and c.kind in LLM_KINDS and c.id not in again]
    calls = [c for child in tree for c in child.syscalls if c.kind in LLM_KINDS and not c.superseded]
    return Stopped(run, found.steps, journal, unrecorded, stale, given, [child.run for child in tree[1:]],
                   (len(calls), sum(c.tokens for c in calls)))


def check_flow_for(found: Stopped, compiled: CompiledFlow, *, force: bool, rerun: bool) -> None:
    """Whether `found` can go on with the flow `compiled`: the same flow file (or --force), every stored step still
    in it, and no tool call that may or may not have happened (or --rerun-unrecorded)."""
    run = found.run
    missing = sorted({s.step for s in found.steps} - set(compiled.flow.steps))
    if missing:
        raise ResumeError(f"run {run.id} cannot be resumed with {run.flow}: it has no step {', '.join(missing)} "
                          "any more, which the run took; run the flow anew")
    if run.flow_sha256 and compiled.sha256 != run.flow_sha256 and not force:
        raise ResumeError(f"{run.flow} changed since run {run.id} started: resume with --force to go on with "
                          "the flow as it is now, or run it anew")
    # by content, not path: the same flows may be at other paths where the run goes on (a worker elsewhere)
    flows = [callee.compiled for callee in compiled.callees()] + [compiled]
    names, shas = {flow.flow.name for flow in flows}, {flow.sha256 for flow in flows}
    for child in found.descendants:  # a called flow that changed would go on with steps it did not take
        if child.status != RunStatus.FINISHED and not force and (
                child.agent not in names or (child.flow_sha256 and child.flow_sha256 not in shas)):
            raise ResumeError(f"{child.flow}, which run {run.id} called as child run {child.id[:12]}, changed since "
                              "(or the flow no longer calls it): resume with --force to go on with the flows as "
                              "they are now, or run it anew")
    if found.unrecorded and not rerun:
        calls = "; ".join(f"{t.tool}({t.arguments})" for t in found.unrecorded)
        raise ResumeError(f"run {run.id} stopped while calling {calls}, which is not idempotent, and its result was "
                          "not stored: it may or may not have happened. Check, then resume with "
                          "--rerun-unrecorded to call it again (with the same call key) if the model asks for it")


async def resume_run(kernel: Kernel, compiled: CompiledFlow, found: Stopped, *, file: str,
                     run: RunState | None = None, priority: int = 0, fence: bool = False) -> walk.RunOutcome:
    """Claim the stopped run `found` for this process (a ResumeError if another one claimed it first) and go on
    with it on `kernel`: its journal given back first, its tools in its own workspace (a child run: with the state
    `run` its parent gives it, its model calls at its parent's `priority`). With `fence` (a worker's), it is
    written only while this claim holds (engine.kernel.fencing)."""
    stored, this = found.run, walk.process_id()
    claim = asyncio.ensure_future(kernel.storage.commit(kernel.storage.claim_run, stored.id,
                                                        (stored.status, stored.pid), this, found.stale,
                                                        stored.parent, fence))
    if await through(claim):  # the claim is written whatever happens: a run claimed and left stayed "running"
        if claim.result() is not None:
            await kernel.storage.commit(kernel.storage.finish_run, stored.id, RunStatus.INTERRUPTED, None,
                                        "interrupted as it was resumed, before it went on")
        raise asyncio.CancelledError
    claimed = claim.result()
    if claimed is None:
        raise ClaimedElsewhere(f"run {stored.id} was resumed by another process meanwhile")
    if fence:
        kernel.storage.fences.fence(stored.id, claimed)
    if stored.memory is None and stored.status == RunStatus.QUEUED and compiled.flow.remembered:  # it starts now
        stored.memory = await kernel.storage.commit(kernel.storage.remember_at_start, stored.id, stored.agent,
                                                    compiled.flow.remembered)
    if run is None:  # a run a user started: its tree of child runs counts what it started before
        run = RunState.new(compiled, file, stored.inputs or {}, stored.id)
        run.tally.started = len(found.descendants)
        run.budget.called, run.budget.generated = found.spent
    return await walk.continue_run(kernel, compiled, stored, found.steps, file=file, journal=found.journal, run=run,
                              priority=priority)
