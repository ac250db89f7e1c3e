"""The tables flowrun stores (sqlmodel): runs, steps, syscalls with their metrics, snapshots, memories, agents' own
data, tool calls and the audit log; and StepRecord, a finished step on its way to the steps table. The database
they live in, its writes and migrations are engine.kernel.storage's."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Column, Dialect, Index, TypeDecorator
from sqlmodel import Field, SQLModel

STEP_KEY = "ux_steps_run_step_visit"  # a step is stored once per visit, whatever a bug or a second process does


class ExactJSON(TypeDecorator):
    """JSON that reads back as it was written on SQLite too. There a column declared JSON has NUMERIC affinity,
    which stores the text of a bare number as an INTEGER or REAL (20.0 read back as 20, 2**70 as a float): a bare
    number is bound as a BLOB, which no affinity converts. Rows stored before keep what SQLite made of them."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def bind(value: Any) -> str | bytes:
            data = json.dumps(value)
            return data.encode() if isinstance(value, int | float) and not isinstance(value, bool) else data
        return bind

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def read(value: Any) -> Any:
            return json.loads(value) if isinstance(value, str | bytes) else value
        return read


class Meta(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str


class RunRow(SQLModel, table=True):
    __tablename__ = "runs"
    id: str = Field(primary_key=True)
    agent: str = Field(index=True)
    flow: str
    status: str  # queued, running, waiting, finished, failed, interrupted, paused
    batch: str | None = None  # the `flowrun batch` it belongs to
    flow_sha256: str | None = None  # of the flow file's text when the run started
    workspace: str | None = None  # the directory its tools work in, when not the default
    host: str | None = None  # the machine and process running it (a `running` run whose process is gone crashed)
    pid: int | None = None
    pid_started: float | None = None  # when that process started (a later process given the same pid is not it)
    inputs: Any = Field(default=None, sa_column=Column(ExactJSON))
    answer: Any = Field(default=None, sa_column=Column(ExactJSON))
    error: str | None = None
    created: float
    finished: float | None = None
    events: int | None = None  # the sequence number of its last event (engine.events) when it ended
    memory: Any = Field(default=None, sa_column=Column(ExactJSON))  # what its flow remembers, as read at its start
    # A child run (of an agent, map or parallel step): the run, step and visit that started it, and its branch
    # there (a parallel's branch name, a map item's index, "" for an agent step's)
    parent: str | None = Field(default=None, index=True)
    parent_step: str | None = None
    parent_visit: int | None = None
    branch: str | None = None
    attempt: int | None = None  # the try of its step that started it, when a `retry` tried it again (None: the first)
    asking: Any = Field(default=None, sa_column=Column(JSON))  # while waiting: the Question (engine.kernel.asking)
    traceparent: str | None = None  # the W3C trace context its starter gave (a POST /runs): its trace goes on there
    # A run of the workers' queue: its epoch, bumped by each worker's claim (engine.kernel.fencing); negative once
    # taken out of the queue (a person resumed or cancelled it, or a worker gave it up), still growing, so that no
    # epoch a worker held comes back if it is queued again; None: never the queue's (or taken out before 2026-11-30)
    epoch: int | None = None


class StepRow(SQLModel, table=True):
    __tablename__ = "steps"
    __table_args__ = (Index(STEP_KEY, "run_id", "step", "visit", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    step: str
    visit: int
    kind: str
    prompt: Any = Field(default=None, sa_column=Column(ExactJSON))
    output: Any = Field(default=None, sa_column=Column(ExactJSON))
    branch: str | None = None
    # [{tool, syscall}] in call order: each call's arguments and result are in tool_calls, under its syscall (one
    # marked "output" is the step's output, which is then not stored here); before schema 6, [{tool, arguments,
    # result}]. engine.interpreter.runs reads them back.
    tools: Any = Field(default=None, sa_column=Column(ExactJSON))
    tokens: int = 0
    started: float
    finished: float
    ask: str | None = None  # the instruction or question as the step put it (what short-term memory keeps)
    vote: Any = Field(default=None, sa_column=Column(JSON))  # [engine.interpreter.vote.Tally.record()] if sampled
    seq: int | None = None  # the sequence number of its step.ended event (engine.events)
    remembered: Any = Field(default=None, sa_column=Column(ExactJSON))  # {key: value} its `remember` stored
    error: Any = Field(default=None, sa_column=Column(JSON))  # {kind, message, step} a `catch` caught: it failed


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What the steps table keeps of a finished step, as the interpreter hands it over (a plain data class: a
    table model validates and instruments every field, which costs more than the insert)."""

    run_id: str
    step: str
    visit: int
    kind: str
    prompt: Any
    output: Any
    branch: str | None
    tools: Any
    tokens: int
    started: float
    finished: float
    ask: str | None = None
    vote: Any = None
    seq: int | None = None
    remembered: Any = None
    error: Any = None


class AgentDataRow(SQLModel, table=True):
    __tablename__ = "agent_data"
    agent: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    value: Any = Field(default=None, sa_column=Column(ExactJSON))
    updated: float


class ModelSlotRow(SQLModel, table=True):
    """A slot of a model host (engine.kernel.slots): free, or held by a process until `expires`."""

    __tablename__ = "model_slots"
    host: str = Field(primary_key=True)
    slot: int = Field(primary_key=True)
    holder: str | None = None
    expires: float | None = None


class SyscallRow(SQLModel, table=True):
    __tablename__ = "syscalls"
    id: str = Field(primary_key=True)
    run_id: str = Field(index=True)
    agent: str = Field(index=True)
    kind: str
    priority: int
    created: float
    started: float | None
    finished: float | None
    waiting: float | None
    turnaround: float | None
    tokens: int
    input_tokens: int | None = None  # an LLM syscall's prompt, in tokens, as its backend counted them
    first_token: float | None = None  # when its first token came
    preemptions: int
    slices: Any = Field(default=None, sa_column=Column(ExactJSON))  # [start, end] of each time an LLM syscall ran
    key: str | None = None  # an LLM syscall's request key (the interpreter's step id)
    text: str | None = None  # and the text it generated: with the key, what a cassette replays
    error: str | None = None
    superseded: bool | None = None  # a resumed run went past it: not part of the run's cassette


class SnapshotRow(SQLModel, table=True):
    __tablename__ = "snapshots"
    id: int | None = Field(default=None, primary_key=True)
    syscall_id: str = Field(index=True)
    run_id: str = Field(index=True)
    key: str | None = None  # the request key of the generation it suspends
    text: str
    tokens: int
    state: Any = Field(default=None, sa_column=Column(ExactJSON))
    created: float


class MemoryRow(SQLModel, table=True):
    __tablename__ = "memories"
    id: int | None = Field(default=None, primary_key=True)
    agent: str = Field(index=True)
    run_id: str = Field(index=True)
    role: str
    content: str
    created: float


class ToolCallRow(SQLModel, table=True):
    __tablename__ = "tool_calls"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    agent: str
    tool: str = Field(index=True)
    syscall: str | None = None  # the id of the tool syscall that made it: how a step's record refers to it
    arguments: Any = Field(default=None, sa_column=Column(ExactJSON))
    result: Any = Field(default=None, sa_column=Column(ExactJSON))
    error: str | None = None
    error_kind: str | None = None  # the kind of its error (engine.errors.ErrorKind), where it has one
    started: float
    finished: float
    pending: bool | None = None  # started, result not yet stored (recorded so only for tools that are not idempotent)
    superseded: bool | None = None  # a resumed run went past it: not replayed


class AuditRow(SQLModel, table=True):
    __tablename__ = "audit"
    id: int | None = Field(default=None, primary_key=True)
    agent: str = Field(index=True)
    run_id: str
    action: str
    target: str
    allowed: bool
    reason: str
    created: float


def of_queue(run: RunRow) -> bool:
    """Whether `run` is the workers' (queued, or a worker's), not taken out of the queue (RunRow.epoch)."""
    return run.epoch is not None and run.epoch >= 0
