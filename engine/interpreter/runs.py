"""Stored runs read back: a run's figures (steps, tokens, time waiting for and running on the model), its whole
record, its status (a run whose process is gone crashed), and its model answers as a cassette: for resuming and
replaying runs, and for `flowrun runs` and `flowrun batch`."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from engine.errors import RunStatus
from engine.kernel.storage import Storage, StorageError
from engine.kernel.tables import RunRow, StepRow, SyscallRow, ToolCallRow

LLM_KINDS = ("generate", "choose", "call_tool")
ANSWER_KINDS = (*LLM_KINDS, "input")  # the syscalls whose text a journal gives back


@dataclass
class RunFigures:
    """One run in numbers. `steps`: its own; `tokens` and `calls`: its model calls' and its child runs'; `waiting`:
    seconds they spent queued (preempted spells included); `running`: seconds they held a slot; `turnaround`: from
    the run's start to its end (None while it runs)."""

    run: RunRow
    steps: int = 0
    tokens: int = 0
    calls: int = 0
    waiting: float = 0.0
    running: float = 0.0

    @property
    def turnaround(self) -> float | None:
        return None if self.run.finished is None else self.run.finished - self.run.created


@dataclass
class RunRecord:
    """Everything stored of one run, with its child runs' records (in the order they started)."""

    run: RunRow
    steps: list[StepRow] = field(default_factory=list)
    syscalls: list[SyscallRow] = field(default_factory=list)
    tools: list[ToolCallRow] = field(default_factory=list)
    children: list[RunRecord] = field(default_factory=list)

    def tree(self) -> list[RunRecord]:
        """This record and those of its child runs, theirs, and so on (parents first)."""
        return [self, *(found for child in self.children for found in child.tree())]


def ran(call: SyscallRow) -> float:
    """Seconds `call` spent on the model (or, for other syscalls, being served)."""
    if call.slices:
        return sum(end - start for start, end in call.slices)
    return (call.finished or call.created) - (call.started or call.created)


def waited(call: SyscallRow) -> float:
    """Seconds `call` spent queued: its turnaround less the time it ran."""
    return max(0.0, (call.finished or call.created) - call.created - ran(call))


def figures(storage: Storage, runs: list[RunRow]) -> list[RunFigures]:
    """The figures of `runs`, in their order: their steps, and the tokens and model calls of their child runs with
    their own (what the run cost)."""
    found = {run.id: RunFigures(run) for run in runs}
    of = {run.id: run.id for run in runs}  # each run of the trees, to the run of `runs` it is below
    below = storage.children(list(found))
    while below:
        of.update((child.id, of[child.parent or ""]) for child in below)
        below = storage.children([child.id for child in below])
    ids = list(of)
    for step in storage.of_runs(StepRow, ids):
        figure = found[of[step.run_id]]
        figure.steps += step.run_id in found
        figure.tokens += step.tokens
    for call in storage.of_runs(SyscallRow, ids):
        if call.kind in LLM_KINDS:
            figure = found[of[call.run_id]]
            figure.calls += 1
            figure.waiting += waited(call)
            figure.running += ran(call)
    return list(found.values())


def answer_stands(call: SyscallRow) -> bool:
    """Whether `call` is a model's answer (or a person's, to an input step) the run got and still stands by (not
    failed, cancelled or superseded)."""
    return call.kind in ANSWER_KINDS and call.text is not None and call.error is None and not call.superseded


def cassette(found: RunRecord) -> dict[str, Any]:
    """The run's model answers as a cassette for the scripted backend: each finished LLM syscall's text under its
    request key, in the order they were asked (its child runs' too: their keys start with their place in it), so
    that the flow replays the same way without a model."""
    calls = [c for record in found.tree() for c in record.syscalls if answer_stands(c) and c.kind in LLM_KINDS]
    return {"run": found.run.id, "flow": found.run.flow, "inputs": found.run.inputs,
            "responses": [{"key": c.key, "text": c.text} for c in sorted(calls, key=lambda c: c.created)]}


def record(storage: Storage, run: str | RunRow, *, children: bool = True) -> RunRecord:
    """The stored record of run `run` (a row read already, or an id or the start of one), its child runs' with it
    unless not `children` (read a level of child runs at a time, each table once for them all)."""
    root = storage.find_run(run) if isinstance(run, str) else run
    runs, below = [root], storage.children([root.id]) if children else []
    while below:
        runs += below
        below = storage.children([run.id for run in below])
    ids = [run.id for run in runs]
    rows: dict[type, dict[str, list[Any]]] = {}
    for table, read in storage.rows_of_runs((StepRow, SyscallRow, ToolCallRow), ids).items():
        rows[table] = {run_id: [] for run_id in ids}
        for row in read:
            rows[table][row.run_id].append(row)
    found = {run.id: RunRecord(run, with_calls(rows[StepRow][run.id], rows[ToolCallRow][run.id]),
                               rows[SyscallRow][run.id], rows[ToolCallRow][run.id]) for run in runs}
    for run in runs[1:]:  # a level at a time, each in the order it started
        found[run.parent or ""].children.append(found[run.id])
    return found[root.id]


def root_of(storage: Storage, run: RunRow) -> RunRow:
    """The run that `run` is a child of, or its parent's, and so on: the run a user started (`run` itself, if a
    user started it)."""
    while run.parent is not None:
        run = storage.find_run(run.parent)
    return run


def progress(storage: Storage, run_id: str) -> tuple[RunRow, list[StepRow]]:
    """The run whose id is or starts with `run_id` and the steps it has committed (as `with_calls` gives them):
    what a server shows of a run, read without waiting for the records queued under load (a step is committed
    after the tool calls it made), nor reading its syscalls."""
    run = storage.find_run(run_id)
    return run, with_calls(storage.of_runs(StepRow, [run.id]), storage.of_runs(ToolCallRow, [run.id], wait=False))


def steps_of(storage: Storage, run_id: str) -> list[StepRow]:
    """The stored steps of run `run_id`, as `with_calls` gives them."""
    return with_calls(storage.of_runs(StepRow, [run_id]), storage.of_runs(ToolCallRow, [run_id]))


def result_mark(syscall: str | None) -> str:
    """What a step's stored ask and prompt hold in place of the result of tool call `syscall` they showed."""
    return f"<the result of tool call {syscall}>"


def with_calls(steps: list[StepRow], calls: list[ToolCallRow]) -> list[StepRow]:
    """`steps` with each tool call entry completed from the call's record (`calls`): its arguments, and its result
    or error; and a step's output, ask and prompt, where they hold a call's result. A step's record refers to its
    calls (StepRow.tools) so that a tool's result, up to FLOWRUN_MAX_RESULT, is stored once."""
    by_syscall = {call.syscall: call for call in calls if call.syscall is not None}
    for step in steps:
        entries = []
        for entry in step.tools or []:
            call = by_syscall.get(entry.get("syscall"))
            if call is not None:
                entry = {**entry, "arguments": call.arguments, "result": call.result, "error": call.error}
                if entry.pop("output", False):
                    step.output = call.result
                if entry.pop("shown", False):
                    mark, shown = result_mark(call.syscall), json.dumps(call.result, ensure_ascii=False)
                    step.ask = (step.ask or "").replace(mark, shown)
                    step.prompt = [{**m, "content": m["content"].replace(mark, shown)} for m in step.prompt or []]
            entries.append(entry)
        step.tools = entries or step.tools
    return steps


def flow_file(run: RunRow, given: Path | None = None) -> Path:
    """The flow file of `run`: `given`, else the path the run was started with (a StorageError if not there)."""
    path = given or Path(run.flow)
    if not path.is_file():
        raise StorageError(f"run {run.id} ran {run.flow}, which is not there: give the flow's path with --flow")
    return path


def status(run: RunRow) -> RunStatus:
    """The run's status, where a `running` run whose process is gone (on this machine) is `crashed`."""
    if run.status == RunStatus.RUNNING and alive(run) is False:
        return RunStatus.CRASHED
    try:
        return RunStatus(run.status)
    except ValueError:  # written by another version of flowrun, or by hand
        raise StorageError(f"run {run.id} is stored with status {run.status!r}, which this flowrun does not know: "
                           "read it with the flowrun that ran it") from None


def alive(run: RunRow) -> bool | None:
    """Whether the process stored as running `run` is still there; None where that cannot be checked: it ran on
    another machine, or no process was stored. A process that has the pid now but started after the one stored
    (pids are reused) is not it; where no start time was stored (before schema 5), only one that started before
    the run is surely it."""
    if run.host != socket.gethostname() or run.pid is None:
        return None
    try:
        process = psutil.Process(run.pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # ended, not yet reaped by its parent
            return False
        if run.pid_started is None:
            return True if process.create_time() <= run.created else None
        return abs(process.create_time() - run.pid_started) < 1
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process, which cannot be looked at: alive
        return True


def place_in_parent(run: RunRow) -> str:
    """Where a child run stands in its parent, for people: step, visit, its branch or item, and the try of the step
    (after a `retry`)."""
    where = f"step {run.parent_step} (visit {run.parent_visit})"
    if run.branch:
        where += f", {'item' if run.branch.isdigit() else 'branch'} {run.branch}"
    return where + (f", try {run.attempt}" if run.attempt else "")
