"""Storage: the database that holds flowrun's tables (engine.kernel.tables), its writes, reads and migrations.

A SQLite file by default (`.flowrun/flowrun.db` in the working directory, WAL mode), or any SQLAlchemy URL given
as `url` or in FLOWRUN_DB (PostgreSQL is the server choice). SQLite commits survive a killed process; a power loss
may take the last ones (synchronous=NORMAL). Long-term memories are searched with SQLite's FTS5, or LIKE elsewhere.

Writes go through one writer thread, in order: `commit` awaits one (a run, a step), `later` queues one that nothing
waits on (a syscall's record, a tool call, evicted memories), which is committed no later than the next awaited
write. Reads of the tables `later` writes wait for the queue first. A write that finds the database busy is tried
again for FLOWRUN_DB_TIMEOUT seconds. Several processes may share one database: its tables are made and migrated
under a lock (an advisory lock on PostgreSQL, the write lock on SQLite), so processes opening a new database at
once take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Executable, bindparam, event, inspect, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, SQLModel, case, col, create_engine, func, or_, select

from engine.errors import RunFailure, RunStatus
from engine.jsontext import is_text
from engine.kernel.fencing import Fences
from engine.kernel.retry import Backoff
from engine.kernel.syscall import Syscall
from engine.kernel.tables import (
    STEP_KEY,
    AgentDataRow,
    AuditRow,
    MemoryRow,
    Meta,
    RunRow,
    SnapshotRow,
    StepRecord,
    StepRow,
    SyscallRow,
    ToolCallRow,
)
from engine.llm.base import Snapshot
from engine.settings import number

_BUSY = Backoff(base=0.01, cap=0.5)  # waits between writes tried again on a busy database

SCHEMA_VERSION = 15
_SCHEMA_LOCK = 0x466C6F77  # the PostgreSQL advisory lock held while a database's tables are made or migrated
# The columns each version added to the one before (an older database gets those it lacks; nothing is dropped).
_ADDED_COLUMNS = {
    2: (("runs", "batch", "VARCHAR"), ("steps", "tools", "JSON"), ("syscalls", "slices", "JSON")),
    3: (("syscalls", "key", "VARCHAR"), ("syscalls", "text", "TEXT")),
    4: (("runs", "flow_sha256", "VARCHAR"), ("runs", "workspace", "VARCHAR"), ("runs", "host", "VARCHAR"),
        ("runs", "pid", "INTEGER"), ("steps", "ask", "TEXT"), ("syscalls", "superseded", "BOOLEAN"),
        ("tool_calls", "pending", "BOOLEAN"), ("tool_calls", "superseded", "BOOLEAN"), ("snapshots", "key", "VARCHAR")),
    5: (("runs", "pid_started", "FLOAT"),),
    6: (("tool_calls", "syscall", "VARCHAR"),),
    7: (("steps", "vote", "JSON"),),
    8: (("steps", "seq", "INTEGER"), ("runs", "events", "INTEGER")),
    9: (),  # SQLite's memory index is brought up to date when searched: an older flowrun would index around it
    10: (("runs", "memory", "JSON"), ("steps", "remembered", "JSON")),
    11: (("runs", "parent", "VARCHAR"), ("runs", "parent_step", "VARCHAR"), ("runs", "parent_visit", "INTEGER"),
         ("runs", "branch", "VARCHAR")),
    12: (("steps", "error", "JSON"), ("runs", "attempt", "INTEGER"), ("tool_calls", "error_kind", "VARCHAR"),
         ("runs", "asking", "JSON")),
    13: (("runs", "traceparent", "VARCHAR"),),
    14: (("syscalls", "input_tokens", "INTEGER"), ("syscalls", "first_token", "FLOAT")),
    15: (("runs", "epoch", "INTEGER"),),
}


# The tables that `later` writes to (records nothing waits on); a read of one waits for the queue first.
_QUEUED = (SyscallRow, ToolCallRow, MemoryRow)


class StorageError(RunFailure):
    """The database cannot be used; the message says why and what to do."""


class NoSuchRun(StorageError):
    """No stored run has the id asked for (or more than one starts with it)."""


class Fenced(StorageError):
    """Another process claimed the run since this one did (engine.kernel.fencing): this one writes nothing more of
    it, and stops it."""

    ends_run = RunStatus.LOST


class Busy(StorageError):
    """Another process holds the database locked (a write is tried again until FLOWRUN_DB_TIMEOUT)."""


def default_url() -> str:
    """FLOWRUN_DB, else the SQLite file .flowrun/flowrun.db under the working directory."""
    return os.environ.get("FLOWRUN_DB") or f"sqlite:///{Path.cwd() / '.flowrun' / 'flowrun.db'}"


class Storage:
    """One database, opened (and created or checked) at `url`."""

    def __init__(self, url: str | None = None, *, reading: bool = False) -> None:
        """`url` is an SQLAlchemy URL, or the path of an SQLite file. `reading`: for a caller that only reads, which
        can then also read an SQLite file that cannot be written (opened read-only: nothing is made or migrated)."""
        self.url = url or default_url()
        if "://" not in self.url:
            self.url = f"sqlite:///{Path(self.url).resolve()}"
        self.sqlite = self.url.startswith("sqlite")
        plain_file = self.url.removeprefix("sqlite:///")
        opened = self.url
        if self.sqlite and self.url.startswith("sqlite:///") and not plain_file.startswith((":memory:", "file:")):
            if reading and Path(plain_file).is_file() and not _writable(Path(plain_file)):
                opened = _read_only_url(Path(plain_file))
            try:
                Path(plain_file).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create the folder of database {self.url}: {exc.strerror}") from None
        self._writer: Connection | None = None
        self._write_lock = threading.Lock()
        # One thread does the writes that `later` queues and `commit` awaits, so they are committed in order.
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowrun-storage",
                                          initializer=self._note_writer)
        self._writer_thread: int | None = None
        self._failure: StorageError | None = None
        self._pending: list[_Row] = []  # rows queued to be written (see _write_pending)
        self._pending_lock = threading.Lock()
        self._draining = False  # a job writing the queued rows is on the writer's queue or running
        self.timed: list[Callable[[float], None]] = []  # told the seconds each awaited row took to commit (metrics)
        self.fences = Fences()  # the runs a worker claimed, written only while it holds them
        # How long a write waits for another process's lock before it fails (FLOWRUN_DB_TIMEOUT seconds).
        self.timeout = number("FLOWRUN_DB_TIMEOUT", 30)
        try:
            self.engine = create_engine(opened, connect_args={"timeout": self.timeout} if self.sqlite else {},
                                        json_serializer=_json_text)
        except ModuleNotFoundError as exc:
            raise StorageError(f"cannot use database {self.url}: its driver {exc.name} is not installed (for "
                               "PostgreSQL: pip install 'flowrun[postgres]')") from None
        except Exception as exc:
            raise StorageError(f"cannot use database {self.url}: {exc}") from None
        read_only = self.read_only = opened != self.url
        if self.sqlite and not read_only:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        event.listen(self.engine, "before_cursor_execute", _storable_text, retval=True)
        try:
            # A new SQLite database turns to WAL on its first connections, which SQLite answers "locked" at once,
            # without waiting, while another process does the same: tried again like a busy write.
            self._retrying(self._make_tables, read_only)
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"cannot use database {self.url}: {exc}") from None

    def _make_tables(self, read_only: bool) -> None:
        """Make or migrate the tables (with `read_only`, only check that they need neither); Busy while another
        process holds the database."""
        try:
            with self.engine.begin() as db:
                if read_only:
                    self._check_version(db, migrate=False)
                    return
                # Processes opening a new database at once take turns: each makes or migrates the tables holding a
                # lock (on SQLite, the database's write lock, taken before create_all looks for its tables).
                if self.engine.dialect.name == "postgresql":
                    db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
                elif self.sqlite:
                    db.exec_driver_sql("BEGIN IMMEDIATE")
                SQLModel.metadata.create_all(db)
                self._check_version(db)
                if self.sqlite:
                    db.execute(text("CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5(content)"))
        except OperationalError as exc:
            if "locked" in str(exc.orig):
                raise Busy(f"cannot use database {self.url}: {exc.orig}: another process holds it locked") from None
            raise

    def _check_version(self, db: Connection, *, migrate: bool = True) -> None:
        meta = Meta.__table__  # type: ignore[attr-defined]
        found = db.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        if not migrate and (found is None or int(found) < SCHEMA_VERSION):
            raise StorageError(f"database {self.url} is read-only and was made by an older flowrun (schema "
                               f"{found or 1}): make it writable once, so that this flowrun can migrate it")
        if found is None:
            db.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        elif int(found) < SCHEMA_VERSION:
            for version in range(int(found) + 1, SCHEMA_VERSION + 1):
                for table, column, kind in _ADDED_COLUMNS[version]:
                    if column not in {c["name"] for c in inspect(db).get_columns(table)}:
                        db.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
                if version == 5:
                    _unique_steps(db)
                if version == 11:  # as create_all makes it in a new database
                    db.execute(text("CREATE INDEX IF NOT EXISTS ix_runs_parent ON runs (parent)"))
                if version == 6:  # a key for the calls stored before, which a resumed run may give back
                    db.execute(text("UPDATE tool_calls SET syscall = 'row-' || CAST(id AS VARCHAR) "
                                    "WHERE syscall IS NULL"))
            db.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
        elif int(found) > SCHEMA_VERSION:
            raise StorageError(f"database {self.url} has schema version {found}, newer than this "
                               f"flowrun's {SCHEMA_VERSION}: upgrade flowrun, or use another database (--db)")

    def later(self, write: Callable[..., Any], *args: Any) -> None:
        """Queue `write(*args)` (a method of this storage) without waiting for it: for the records nothing waits
        on (records of syscalls, tool calls, memories). It is committed before any write queued or awaited after it;
        if it fails, the next `commit` or read raises its StorageError."""
        self._writes.submit(self._noting_failure, self._retrying, write, *args)

    def _later_insert(self, table: type[SQLModel], values: dict[str, Any]) -> None:
        """Queue the insert of a row; rows queued while the writer is busy go in one transaction (with the next
        awaited write, if it comes first)."""
        self._queue(_insert_into(table), values, None)

    async def _commit_write(self, statement: Executable, values: dict[str, Any]) -> None:
        """Write a row (`statement` with `values`) and return once it is committed, after every write queued
        before it. It is queued with the rows waiting, so that those queued while the writer is busy are committed
        in one transaction: 2,000 runs POSTed to a server at once are a few commits, not 2,000 in a row."""
        await self._committed(statement, values)
        self._raise_failure()

    async def _committed(self, statement: Executable, values: dict[str, Any]) -> None:
        """Queue the write of a row and wait until it is committed (a StorageError if it could not be)."""
        committed: Future[None] = Future()
        started = time.perf_counter()
        self._queue(statement, values, committed)
        await asyncio.wrap_future(committed)
        for told in self.timed:
            told(time.perf_counter() - started)

    async def commit(self, write: Callable[..., Any], *args: Any) -> Any:
        """Do `write(*args)` after every write queued before it, and return once it is committed."""
        result = await asyncio.get_running_loop().run_in_executor(self._writes, self._retrying, write, *args)
        self._raise_failure()
        return result

    def flush(self) -> None:
        """Wait until every queued write is committed (reads do this first, so they see them)."""
        self._writes.submit(self._noting_failure, self._write_pending).result()
        self._raise_failure()

    def _retrying(self, write: Callable[..., Any], *args: Any) -> Any:
        """`write(*args)`, tried again while the database is busy, for FLOWRUN_DB_TIMEOUT seconds in all (SQLite
        waits for a lock itself, but not where a transaction that has read must write: it is busy at once)."""
        deadline, attempt = time.monotonic() + self.timeout, 0
        while True:
            try:
                return write(*args)
            except Busy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(_BUSY.delay(attempt), max(0.0, deadline - time.monotonic())))
                attempt += 1

    def _note_writer(self) -> None:
        self._writer_thread = threading.get_ident()

    def _noting_failure(self, write: Callable[..., Any], *args: Any) -> None:
        try:
            write(*args)
        except Fenced:  # a write of a run another process took over: that run stops, the others go on
            pass
        except StorageError as exc:
            self._failure = self._failure or exc

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def start_run(self, run: RunRow) -> None:
        """Store a run as it starts."""
        self._write(_insert_into(RunRow), _values(run))

    async def commit_start_run(self, run: RunRow, remembered: tuple[str, ...] = ()) -> None:
        """`start_run`, awaited: committed with the other rows queued meanwhile. With `remembered`, the run's
        `memory` is what its agent has stored under those keys, read in the transaction that stores the run: one
        snapshot of them all, and a run stored whatever stops it next."""
        self.fences.adopt(run.id, run.parent)
        if remembered:
            await self.commit(self._start_remembering, run, remembered)
        else:
            await self._commit_write(_insert_into(RunRow), _values(run))

    def _start_remembering(self, run: RunRow, keys: tuple[str, ...]) -> None:
        with self._writing() as db:
            self._hold(db, run.id)
            run.memory = _remembered(db, run.agent, keys)
            db.execute(_insert_into(RunRow), _values(run))

    def record_step(self, step: StepRecord) -> None:
        """Store a finished step (committed before the run goes on)."""
        self._write(_insert_into(StepRow), _fields(step))

    async def commit_step(self, step: StepRecord) -> None:
        """`record_step`, awaited: committed with the other rows queued meanwhile."""
        await self._commit_write(_insert_into(StepRow), _fields(step))

    def finish_run(self, run_id: str, status: str, answer: Any = None, error: str | None = None,
                   events: int | None = None) -> None:
        """Store how run `run_id` ended: `status` with its answer or error, and the number of its end event."""
        self._write(_FINISH, _finished(run_id, status, answer, error, events))

    async def commit_finish_run(self, run_id: str, status: str, answer: Any = None, error: str | None = None,
                                events: int | None = None) -> None:
        """`finish_run`, awaited: committed with the other rows queued meanwhile (2,000 runs ending at once were
        2,000 transactions in a row). Where a row queued before it cannot be stored (on a full disk, say), it
        stops the rows after it: the end is then stored on its own, so that the run can be resumed."""
        values = _finished(run_id, status, answer, error, events)
        try:
            await self._committed(_FINISH, values)
        except StorageError:  # its own row failed: not one written before it that failed since
            await self.commit(self._finish_alone, values)
            return
        self._raise_failure()

    def _finish_alone(self, values: dict[str, Any]) -> None:
        with self._errors(), self.engine.begin() as db:  # not the writer's connection: that one may be what failed
            self._hold(db, values["run"])
            self._finish(db, values)

    def _finish(self, db: Connection, values: dict[str, Any]) -> None:
        if db.execute(_FINISH, values).rowcount == 0:
            raise StorageError(f"no run {values['run']} in {self.url}")

    # A run's row is written only by writes that are awaited (start, claim, finish, delete), so reading runs never
    # waits for the queue of `later` writes: under load that queue is long, and a server reads runs all the time.
    def find_runs(self, limit: int | None = 20, batch: str | None = None, status: str | None = None,
                  flow: str | None = None) -> list[RunRow]:
        """The latest runs started by a user, not by another run (of the batch whose id is or starts with `batch`,
        stored with `status`, of the flow named `flow`, if given), newest first."""
        statement = select(RunRow).where(col(RunRow.parent).is_(None)).order_by(col(RunRow.created).desc())
        statement = statement.limit(limit)
        if batch is not None:
            statement = statement.where(_starts(col(RunRow.batch), batch, "batch"))
        if status is not None:
            statement = statement.where(col(RunRow.status) == str(status))
        if flow is not None:
            statement = statement.where(col(RunRow.agent) == flow)
        with self._session() as db:
            return list(db.exec(statement))

    def children(self, run_ids: list[str]) -> list[RunRow]:
        """The child runs of runs `run_ids`, in the order they started."""
        found: list[RunRow] = []
        with self._session() as db:
            for start in range(0, len(run_ids), 500):  # within every database's limit on bound values
                chunk = run_ids[start:start + 500]
                found += db.exec(select(RunRow).where(col(RunRow.parent).in_(chunk)))
        return sorted(found, key=lambda run: run.created)

    def find_run(self, prefix: str) -> RunRow:
        """The run whose id is or starts with `prefix` (a unique prefix is enough, as with git)."""
        with self._session() as db:
            found = list(db.exec(select(RunRow).where(_starts(col(RunRow.id), prefix, "run")).limit(2)))
        if len(found) != 1:
            problem = "no run" if not found else "more than one run"
            raise NoSuchRun(f"{problem} with an id starting {prefix!r} in {self.url}: see `flowrun runs list`")
        return found[0]

    def of_runs(self, table: type[SQLModel], run_ids: list[str], *, wait: bool = True) -> list[Any]:
        """The rows of `table` belonging to runs `run_ids`, in the order they were stored: after the writes queued
        before (`wait`), or those committed so far, which hold every step that ended with the tool calls it made
        (a step is committed after the records queued before it)."""
        return self.rows_of_runs((table,), run_ids, wait=wait)[table]

    def rows_of_runs(self, tables: Sequence[type[SQLModel]], run_ids: list[str], *,
                     wait: bool = True) -> dict[type[SQLModel], list[Any]]:
        """`of_runs` for each of `tables`, read in one transaction (a worker reads them for each run it takes)."""
        if wait and any(table in _QUEUED for table in tables):
            self.flush()
        found: dict[type[SQLModel], list[Any]] = {}
        with self._session() as db:
            for table in tables:
                column = col(table.run_id)  # type: ignore[attr-defined]
                order = col(table.id) if table is not SyscallRow else col(SyscallRow.created)  # type: ignore[attr-defined]
                rows = found[table] = []
                for start in range(0, len(run_ids), 500):  # within every database's limit on bound values
                    rows += db.exec(select(table).where(column.in_(run_ids[start:start + 500])).order_by(order))
                if len(run_ids) > 500:
                    rows.sort(key=lambda row: row.created if table is SyscallRow else row.id)
        return found

    def record_syscall(self, syscall: Syscall, error: str | None = None) -> None:
        """Queue the record of a finished syscall, with its timings, tokens and preemptions (see `later`)."""
        self._later_insert(SyscallRow, {
            "id": syscall.id, "run_id": syscall.run, "agent": syscall.agent, "kind": syscall.kind.value,
            "priority": syscall.priority, "created": syscall.created, "started": syscall.started,
            "finished": syscall.finished, "waiting": syscall.waiting, "turnaround": syscall.turnaround,
            "tokens": syscall.tokens, "input_tokens": syscall.input_tokens, "first_token": syscall.first_token,
            "preemptions": syscall.preemptions, "slices": syscall.slices or None,
            "key": syscall.request.key if syscall.request else None,
            "text": syscall.result.text if syscall.result else None, "error": error})

    def record_snapshot(self, syscall: Syscall, snapshot: Snapshot) -> None:
        """Store the snapshot of a suspended syscall."""
        self._add(SnapshotRow(syscall_id=syscall.id, run_id=syscall.run, text=snapshot.text, tokens=snapshot.tokens,
                              state=snapshot.state, created=time.time(),
                              key=syscall.request.key if syscall.request else None))

    def record_tool_call(self, row: ToolCallRow) -> None:
        """Queue the record of a finished tool call (see `later`)."""
        self._later_insert(ToolCallRow, row.model_dump())

    def start_tool_call(self, row: ToolCallRow) -> int:
        """Store a tool call about to start (after the writes queued before it); its row id."""
        self._write_pending()
        table = ToolCallRow.__table__  # type: ignore[attr-defined]
        with self._writing() as db:
            self._hold(db, row.run_id)  # a call that may have an effect is not made for a run another process holds
            values = {k: v for k, v in row.model_dump().items() if v is not None}
            return db.execute(table.insert().values(**values)).inserted_primary_key[0]

    def end_tool_call(self, row: ToolCallRow, unknown: bool = False) -> None:
        """Store how a started tool call (`row.id`) ended; `unknown`: it was stopped, and may or may not have
        happened (it stays pending)."""
        table = ToolCallRow.__table__  # type: ignore[attr-defined]
        with self._writing() as db:
            self._hold(db, row.run_id)
            db.execute(table.update().where(table.c.id == row.id).values(
                result=row.result, error=row.error, error_kind=row.error_kind, finished=row.finished,
                pending=True if unknown else None))

    def claim_run(self, run_id: str, seen: tuple[str, int | None], process: dict[str, Any],
                  stale: tuple[list[str], list[int]] = ([], []), parent: str | None = None,
                  queue: bool = False) -> int | None:
        """Mark run `run_id` running in `process` (its host, pid and pid_started), if its (status, pid) is still
        `seen`: two processes resuming one run cannot both have it. A worker's claim (`queue`) of a run of the
        queue bumps its epoch, which it returns (0 for any other claim; None: not claimed), for the worker to fence
        the run with (engine.kernel.fencing); any other claim takes the run out of the queue (a person resumes
        it: workers leave it alone). A child run of `parent` is claimed only while its root's fence holds, and is
        fenced with it. In the same transaction, supersede the `stale` syscalls and tool calls, which the resumed
        run will not use."""
        table = RunRow.__table__  # type: ignore[attr-defined]
        self.fences.adopt(run_id, parent)
        with self._writing() as db:
            self._hold(db, run_id)
            if not self._claim(db, run_id, seen, process, queue=queue):
                return None
            self._supersede(db, *stale)
            if not queue:
                return 0
            return db.execute(select(table.c.epoch).where(table.c.id == run_id)).scalar_one()

    @staticmethod
    def _claim(db: Connection, run_id: str, seen: tuple[str, int | None], process: dict[str, Any], *,
               queue: bool) -> bool:
        """`claim_run`'s update: whether it claimed the run (a worker's, only while the run is the queue's)."""
        table = RunRow.__table__  # type: ignore[attr-defined]
        epoch = table.c.epoch
        claimed = db.execute(table.update().where(table.c.id == run_id, table.c.status == seen[0],
                                                  table.c.pid.is_(None) if seen[1] is None else table.c.pid == seen[1],
                                                  *([epoch >= 0] if queue else []))
                             .values(status=RunStatus.RUNNING, error=None, finished=None, **process,
                                     epoch=epoch + 1 if queue else -(func.abs(epoch) + 1)))
        return claimed.rowcount == 1

    def take_out(self, run_id: str, seen: tuple[str, int | None], process: dict[str, Any], status: str,
                 why: str) -> bool:
        """Claim run `run_id` of the queue as a person would (`claim_run`), if its (status, pid) is still `seen`,
        and end it `status` with `why`, in one transaction; its child runs (and theirs) stored running end
        interrupted: the worker that held it, fenced out, can store none of them. Each end is numbered after the
        events its run stored (a follower of the run sees it end)."""
        runs, steps = RunRow.__table__, StepRow.__table__  # type: ignore[attr-defined]
        last = select(func.max(steps.c.seq)).where(steps.c.run_id == runs.c.id).scalar_subquery()

        def end(run: str, events: int | None, seq: int | None, ended: str) -> None:
            self._finish(db, _finished(run, ended, None, why, max(events or 0, seq or 0) + 1))

        with self._writing() as db:
            if not self._claim(db, run_id, seen, process, queue=False):
                return False
            level = [run_id]
            while level:
                below = []
                for start in range(0, len(level), 500):  # within every database's limit on bound values
                    below += db.execute(select(runs.c.id, runs.c.status, runs.c.events, last)
                                        .where(runs.c.parent.in_(level[start:start + 500]))).all()
                for child, stored, events, seq in below:
                    if stored == RunStatus.RUNNING:
                        end(child, events, seq, RunStatus.INTERRUPTED)
                level = [child for child, *_ in below]
            end(run_id, *db.execute(select(runs.c.events, last).where(runs.c.id == run_id)).one(), status)
        return True

    def remember_at_start(self, run_id: str, agent: str, keys: tuple[str, ...]) -> dict[str, Any]:
        """What `agent` has stored under `keys`, read as run `run_id` (queued, claimed now) starts, and kept with
        it (runs.memory), as a run started at once keeps it (commit_start_run)."""
        runs = RunRow.__table__  # type: ignore[attr-defined]
        with self._writing() as db:
            self._hold(db, run_id)
            memory = _remembered(db, agent, keys)
            db.execute(runs.update().where(runs.c.id == run_id).values(memory=memory))
        return memory

    def join_queue(self, run_id: str) -> None:
        """Run `run_id` (stopped) is the queue's again: queued, for workers to go on with."""
        table = RunRow.__table__  # type: ignore[attr-defined]
        with self._writing() as db:
            db.execute(table.update().where(table.c.id == run_id).values(
                epoch=func.coalesce(func.abs(table.c.epoch), 0),  # above any a worker held
                status=case((table.c.status == RunStatus.FAILED, table.c.status), else_=RunStatus.QUEUED)))

    def end_idle_transactions(self, seconds: float) -> None:
        """Have PostgreSQL end this process's sessions that sit in a transaction for `seconds` (a worker frozen
        midway through a write, whose row locks would hold its runs' next owner up)."""
        if self.engine.dialect.name == "postgresql":
            event.listen(self.engine, "connect", lambda connection, _: _idle_timeout(connection, seconds))
            self.engine.dispose()

    def hold(self, run_id: str) -> None:
        """Fenced, where run `run_id` belongs to a run this process fenced and another one claimed since (after the
        writes queued before)."""
        with self._writing() as db:
            self._hold(db, run_id)

    def _hold(self, db: Connection, run_id: str | None) -> None:
        """Fenced, where run `run_id` belongs to a run this process fenced and another one claimed since."""
        if self.fences.lost(db, [run_id]):
            raise Fenced(f"run {run_id} was taken over by another process: this one stopped it")

    def set_asking(self, run_id: str, asking: dict[str, Any]) -> None:
        """Keep what run `run_id` asks a person, while it waits (runs.asking)."""
        table = RunRow.__table__  # type: ignore[attr-defined]
        with self._writing() as db:
            self._hold(db, run_id)
            db.execute(table.update().where(table.c.id == run_id).values(asking=asking))

    def settle_waiting(self, run_id: str, wait: int | None, syscall: dict[str, Any], why: str,
                       above: Iterable[str] = ()) -> bool:
        """If run `run_id` still waits where it did when its end event was number `wait` (not for a question it
        asked since), record the answer to what it asks (or its timeout) as the input syscall `syscall` and make
        it, and the runs `above` it that wait with it, resumable (paused, `why` saying so), in one transaction: of
        two answers given at once, exactly one is recorded. Whether this one was."""
        runs, calls = RunRow.__table__, SyscallRow.__table__  # type: ignore[attr-defined]
        with self._writing() as db:
            same = runs.c.events.is_(None) if wait is None else runs.c.events == wait
            settled = db.execute(runs.update().where(runs.c.id == run_id, runs.c.status == RunStatus.WAITING, same)
                                 .values(status=RunStatus.PAUSED, asking=None, error=why))
            if settled.rowcount == 1:
                db.execute(calls.insert().values(**syscall))
                if above:
                    db.execute(runs.update().where(runs.c.id.in_(list(above)), runs.c.status == RunStatus.WAITING)
                               .values(status=RunStatus.PAUSED, error=why))
            return settled.rowcount == 1

    def supersede(self, calls: list[str], tools: list[int], run: str | None = None) -> None:
        """Mark syscalls `calls` and tool calls `tools` (of run `run`) as gone past by a resumed run."""
        with self._writing() as db:
            self._hold(db, run)
            self._supersede(db, calls, tools)

    @staticmethod
    def _supersede(db: Connection, calls: list[str], tools: list[int]) -> None:
        for table, ids in ((SyscallRow.__table__, calls), (ToolCallRow.__table__, tools)):  # type: ignore[attr-defined]
            if ids:
                db.execute(table.update().where(table.c.id.in_(ids)).values(superseded=True))

    def delete_runs(self, seen: list[RunRow], *, memories: bool = True) -> tuple[list[str], dict[str, int]]:
        """Delete runs `seen`, each only if its (status, pid) is still as seen (a run resumed meanwhile stays), with
        every record they left: steps, syscalls, tool calls, snapshots and (with `memories`) the long-term memories
        they added. The audit log and agents' own data are kept. The ids of the runs deleted, and how many rows went, by
        table."""
        self.flush()  # the records queued of those runs first, or they would be written after them
        tables = [StepRow, SyscallRow, ToolCallRow, SnapshotRow, *([MemoryRow] if memories else [])]
        runs = RunRow.__table__  # type: ignore[attr-defined]
        gone = dict.fromkeys(["runs", *(t.__tablename__ for t in tables)], 0)
        fts = text("DELETE FROM memories_fts WHERE rowid IN (SELECT id FROM memories WHERE run_id IN :ids)")
        with self._writing() as db:
            ids = [run.id for run in seen if db.execute(runs.delete().where(
                runs.c.id == run.id, runs.c.status == run.status,
                runs.c.pid.is_(None) if run.pid is None else runs.c.pid == run.pid)).rowcount == 1]
            gone["runs"] = len(ids)
            for start in range(0, len(ids), 500):  # within every database's limit on bound values
                chunk = ids[start:start + 500]
                if memories and self.sqlite:
                    db.execute(fts.bindparams(bindparam("ids", expanding=True)), {"ids": chunk})
                for table in tables:
                    rows = table.__table__  # type: ignore[attr-defined]
                    gone[rows.name] += db.execute(rows.delete().where(rows.c.run_id.in_(chunk))).rowcount
        return ids, gone

    def vacuum(self) -> None:
        """Give the space of deleted rows back to the file system (SQLite's VACUUM; PostgreSQL's)."""
        with self._errors(), self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
            if self.sqlite:  # merging the search index's segments drops what it kept of deleted memories
                db.exec_driver_sql("INSERT INTO memories_fts(memories_fts) VALUES ('optimize')")
            db.exec_driver_sql("VACUUM")
            if self.sqlite:  # and empty the WAL, which the VACUUM filled
                db.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def audit(self, agent: str, run: str, action: str, target: str, allowed: bool, reason: str) -> None:
        """Store an access decision."""
        self._add(AuditRow(agent=agent, run_id=run, action=action, target=target, allowed=allowed, reason=reason,
                           created=time.time()))

    def put(self, agent: str, key: str, value: Any, run: str | None = None) -> None:
        """Set `agent`'s stored `key` to `value` (JSON), for run `run` (not if its fence is lost): the last of
        writers at once wins (an upsert: a read, then an insert, failed the second of two runs storing a new key at
        once)."""
        table = AgentDataRow.__table__  # type: ignore[attr-defined]
        insert = (sqlite_insert if self.sqlite else postgresql_insert)(table).values(
            agent=agent, key=key, value=value, updated=time.time())
        upsert = insert.on_conflict_do_update(index_elements=["agent", "key"],
                                              set_={"value": insert.excluded.value, "updated": insert.excluded.updated})
        self._retrying(self._execute, upsert, run)

    def _execute(self, statement: Executable, run: str | None = None) -> None:
        with self._writing() as db:
            self._hold(db, run)
            db.execute(statement)

    def get(self, agent: str, key: str) -> Any:
        """`agent`'s stored `key`, or None."""
        self.flush()
        with self._session() as db:
            row = db.get(AgentDataRow, (agent, key))
            return None if row is None else row.value

    def add_memories(self, agent: str, run: str, entries: Iterable[tuple[str, str]]) -> None:
        """Queue interactions, (role, content) each, as long-term memories of `agent` (see `later`): those of
        runs ending at once go in one transaction."""
        for role, content in entries:
            self._later_insert(MemoryRow, {"agent": agent, "run_id": run, "role": role, "content": content,
                                           "created": time.time()})

    def search_memories(self, agents: list[str], query: str, limit: int = 5) -> list[MemoryRow]:
        """The long-term memories of `agents` matching the words of `query`, best first."""
        self.flush()
        if self.sqlite and not self.read_only:
            self._writes.submit(self._noting_failure, self._retrying, self._index_memories).result()
            self._raise_failure()
        words = re.findall(r"\w+", query)
        if not words:
            return []
        with self._session() as db:
            statement = select(MemoryRow).where(col(MemoryRow.agent).in_(agents))
            if self.sqlite:
                match = " OR ".join(f'"{w}"' for w in words)
                # the agents' best `limit` in the index's own query: every match of every agent, fetched by id,
                # was more ids than SQLite takes in one statement once memories grew
                ranked = text("SELECT f.rowid FROM memories_fts f JOIN memories m ON m.id = f.rowid WHERE "
                              "memories_fts MATCH :match AND m.agent IN :agents ORDER BY f.rank LIMIT :limit"
                              ).bindparams(bindparam("agents", expanding=True))
                ids = [r[0] for r in db.execute(ranked, {"match": match, "agents": agents, "limit": limit})]
                found = {m.id: m for m in db.exec(statement.where(col(MemoryRow.id).in_(ids)))}
                return [found[i] for i in ids if i in found]
            likes = [col(MemoryRow.content).ilike(f"%{w}%") for w in words]
            return list(db.exec(statement.where(or_(*likes)).order_by(col(MemoryRow.created).desc()).limit(limit)))

    def _index_memories(self) -> None:
        """Add the memories stored since the last search to SQLite's search index, in one go. Indexing took three
        quarters of the time of storing a memory, and 2,000 runs ending at once store some 40,000: a server's
        requests waited for that. The index holds every memory up to the last one it holds (they are indexed in
        order, and a memory deleted takes its entry with it)."""
        with self._writing() as db:  # a read first: SQLite's write lock only where the index is behind
            indexed = db.execute(text("SELECT rowid FROM memories_fts ORDER BY rowid DESC LIMIT 1")).scalar() or 0
            if (db.execute(text("SELECT max(id) FROM memories")).scalar() or 0) > indexed:
                db.execute(text("INSERT INTO memories_fts(rowid, content) SELECT id, content FROM memories "
                                "WHERE id > :indexed ORDER BY id"), {"indexed": indexed})

    def close(self) -> None:
        """Commit what is queued and let the database go."""
        try:
            self.flush()
        finally:
            self._writes.shutdown()
            if self._writer is not None:
                self._writer.close()
            self.engine.dispose()

    def rows(self, table: type[SQLModel]) -> list[Any]:
        """Every row of `table` (for inspection and tests)."""
        self.flush()
        with self._session() as db:
            return list(db.exec(select(table)))

    def _add(self, row: SQLModel) -> None:
        """Insert `row` in a transaction of its own (with the rows queued before it)."""
        self._write(_insert_into(type(row)), _values(row))

    def _write(self, statement: Executable, values: dict[str, Any]) -> None:
        """Write one row, `statement` with `values` (an insert leaves None values to the column defaults), with
        the rows queued before it, committed at once. This is the path of every syscall, step and run record, so
        it is a plain statement on one connection kept for writing (a session's unit of work, or a connection
        taken from the pool each time, costs several times the commit itself); worker threads take turns on it."""
        committed: Future[None] = Future()
        self._queue(statement, values, committed)
        if threading.get_ident() == self._writer_thread:
            self._write_pending()
        else:  # on the writer's thread, so that no two threads commit queued rows out of their order
            self._writes.submit(self._write_pending).result()
        committed.result()

    def _queue(self, statement: Executable, values: dict[str, Any], committed: Future[None] | None) -> None:
        """Queue a row's write, with the future its writer waits on, if any, and have the writer write it
        (see _write_pending)."""
        with self._pending_lock:
            self._pending.append((statement, values, committed))
            asked, self._draining = self._draining, True
        if not asked:  # one job drains the queue: a job per row woke the writer 2,000 times for 2,000 POSTs
            self._writes.submit(self._noting_failure, self._write_pending)

    def _write_pending(self) -> None:
        """Write the queued rows, a transaction for each batch of them, and tell those who wait for theirs that
        it is committed. Where a transaction fails, its rows go in one at a time (see _write_in_turn)."""
        while True:
            with self._pending_lock:
                batch, self._pending = self._pending[:_BATCH], self._pending[_BATCH:]
                if not batch:  # an earlier transaction took them
                    self._draining = False
                    return
            try:
                self._write_batch(batch)
            except BaseException as exc:
                # The writes stop here (see _stop_at), and no job may come for the rows still queued: those their
                # writers wait on fail now, with the same error; the others go with the next write
                error = exc if isinstance(exc, StorageError) else \
                    StorageError(f"a record was not stored in {self.url}: the write stopped")
                with self._pending_lock:
                    waited = [row for row in self._pending if row[2] is not None]
                    self._pending = [row for row in self._pending if row[2] is None]
                    self._draining = False
                for _, _, done in waited:
                    _settle(done, error)
                raise
            finally:  # whatever happened, no writer waits forever
                for _, _, done in batch:
                    if done is not None and not done.done():
                        _settle(done, StorageError(f"a record was not stored in {self.url}: the write stopped"))

    def _write_batch(self, batch: list[_Row]) -> None:
        try:
            self._retrying(self._write_rows, batch)
        except Busy as exc:  # past FLOWRUN_DB_TIMEOUT already: none of them goes in
            self._stop_at(batch, exc)
        except Exception:  # a StorageError, or the driver's own (a value PostgreSQL refuses, say)
            self._write_in_turn(batch)
        else:
            for _, _, done in batch:
                if done is not None:
                    _settle(done, None)

    def _write_in_turn(self, rows: list[_Row]) -> None:
        """Write `rows` in order, a transaction each. An awaited row that fails (stored twice, say) fails its
        writer alone; any other failure stops there (see _stop_at): a row is never stored before one queued
        ahead of it, as a step's record after the tool calls it made."""
        for n, row in enumerate(rows):
            try:
                self._retrying(self._write_rows, [row])
            except Exception as exc:
                failure = exc if isinstance(exc, StorageError) else \
                    StorageError(f"database {self.url} refused a record: {exc}")
                if row[2] is None or isinstance(exc, Busy):
                    self._stop_at(rows[n:], failure)
                    return
                _settle(row[2], failure)
            else:
                if row[2] is not None:
                    _settle(row[2], None)

    def _stop_at(self, rows: list[_Row], error: StorageError) -> None:
        """`rows` could not be stored, the first for `error`: their writers who wait are told so; the rest stay
        queued, to go with the next write, and the error is raised, to be raised by the next commit or read."""
        for _, _, done in rows:
            if done is not None:
                _settle(done, error)
        kept = [row for row in rows if row[2] is None]
        if kept:
            with self._pending_lock:
                self._pending[:0] = kept
            raise error

    def _write_rows(self, rows: list[_Row]) -> None:
        with self._writing() as db:
            lost = self.fences.lost(db, {_run_of(values) for _, values, _ in rows})
            if lost:  # rows of runs another process took over are not written: those who wait for them are told
                for _, values, done in rows:
                    if done is not None and _run_of(values) in lost:
                        _settle(done, Fenced(f"run {_run_of(values)} was taken over by another process: this one "
                                             "stopped it"))
                rows = [row for row in rows if _run_of(row[1]) not in lost]
            groups: list[tuple[Executable, tuple[str, ...], list[dict[str, Any]]]] = []
            for statement, values, _ in rows:  # consecutive rows of one shape go in one executemany, in order
                present = {k: v for k, v in values.items() if v is not None} if statement is not _FINISH else values
                if groups and groups[-1][0] is statement and groups[-1][1] == tuple(present):
                    groups[-1][2].append(present)
                else:
                    groups.append((statement, tuple(present), [present]))
            for statement, _, group in groups:
                if statement is _FINISH:  # one at a time, each finding its run
                    for values in group:
                        self._finish(db, values)
                else:
                    db.execute(statement, group)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """The writing connection, in a transaction committed at the end of the block."""
        with self._errors(), self._write_lock:
            if self._writer is None:
                self._writer = self.engine.connect()
            with self._writer.begin():
                yield self._writer

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        """A session whose database errors become a StorageError saying what to do."""
        with self._errors(), Session(self.engine) as db:
            yield db

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Database errors, turned into a StorageError saying what to do."""
        try:
            yield
        except IntegrityError as exc:
            raise StorageError(f"database {self.url} refused a record it holds already ({exc.orig}): is another "
                               "process running the same run?") from None
        except OperationalError as exc:
            reason = str(exc.orig) if exc.orig is not None else str(exc)
            advice = {"locked": "another process holds it locked: wait for it or use another database (--db)",
                      "readonly": "it is read-only: make it writable or use another database (--db)",
                      "full": "free some space, then resume the run (`flowrun runs resume`)"}
            hint = next((v for k, v in advice.items() if k in reason.replace("read-only", "readonly")),
                        "check that it exists and can be written, or use another database (--db)")
            busy = "locked" in reason or "busy" in reason
            raise (Busy if busy else StorageError)(f"database {self.url} failed ({reason}): {hint}") from None


def _writable(path: Path) -> bool:
    """Whether SQLite can write the database at `path`: the file, and its folder (for its journal files)."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def _read_only_url(path: Path) -> str:
    """The URL opening the database file at `path` read-only. When its WAL file holds nothing (everything is in
    the database file), it is opened as immutable: a read-only WAL database cannot be opened otherwise without
    the shared-memory file, which a read-only folder cannot hold."""
    wal = path.with_name(path.name + "-wal")
    immutable = "&immutable=1" if not wal.exists() or wal.stat().st_size == 0 else ""
    return f"sqlite:///file:{urllib.parse.quote(str(path))}?mode=ro{immutable}&uri=true"


def _unique_steps(db: Connection) -> None:
    """Key the steps table on (run, step, visit). Where a run was resumed while it still ran (the bug this key
    prevents), its steps are stored twice: the first stored of each stands, as the run went on from it."""
    db.execute(text("DELETE FROM steps WHERE id NOT IN (SELECT MIN(id) FROM steps GROUP BY run_id, step, visit)"))
    db.execute(text(f"CREATE UNIQUE INDEX IF NOT EXISTS {STEP_KEY} ON steps (run_id, step, visit)"))


_ID_LENGTH = 32  # of a run's or batch's id (uuid4().hex)


def _starts(column: Any, prefix: str, what: str) -> Any:
    """The condition that `column` (a run or batch id) starts with `prefix`, compared exactly: LIKE would take `%`
    and `_` in it as wildcards, and ignores case on SQLite. A whole id is looked up by the index (the start of
    one reads every row: 6 ms for each GET /runs/ID of a server that has stored 20,000 runs)."""
    if not re.fullmatch(r"[0-9a-f]+", prefix):
        raise StorageError(f"{prefix!r} is not the start of a {what} id: ids are lowercase hexadecimal (0-9, a-f); "
                           "see `flowrun runs list`")
    return column == prefix if len(prefix) == _ID_LENGTH else func.substr(column, 1, len(prefix)) == prefix


async def through(commit: Awaitable[Any]) -> bool:
    """Await `commit` to its end even if the caller is cancelled meanwhile (what finished is stored whatever
    happens); whether it was cancelled."""
    task = asyncio.ensure_future(commit)
    try:
        await asyncio.shield(task)
        return False
    except asyncio.CancelledError:
        await task
        return True


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _storable_text(_: Any, __: Any, statement: str, parameters: Any, ___: Any, many: bool) -> tuple[str, Any]:
    """The statement's parameters with every text storable on every database: a NUL character, or half of a
    surrogate pair, replaced by U+FFFD.

    A tool's or a model's text can hold either (JSON escapes a lone surrogate, and json.loads keeps it): PostgreSQL
    refuses a NUL, and no driver encodes a lone surrogate as UTF-8, so the record was refused for good, stayed
    queued, and failed every write after it, for every run of the process."""
    if many:
        return statement, [_storable(one) for one in parameters]
    return statement, _storable(parameters)


def _storable(parameters: Any) -> Any:
    if isinstance(parameters, dict):
        if any(map(_unstorable, parameters.values())):
            return {k: _cleaned(v) if _unstorable(v) else v for k, v in parameters.items()}
    elif isinstance(parameters, list | tuple) and any(map(_unstorable, parameters)):
        return type(parameters)(_cleaned(v) if _unstorable(v) else v for v in parameters)
    return parameters


def _unstorable(value: Any) -> bool:
    return type(value) is str and ("\x00" in value or not is_text(value))


def _cleaned(text: str) -> str:
    # through UTF-16, where the two halves of a pair (kept apart) join, and a half alone decodes as U+FFFD
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "\ufffd")


def _json_text(value: Any) -> str:
    """JSON as PostgreSQL's columns get it (its driver adapts it after _storable_text), storable as that makes
    texts: not ASCII-escaped, so that a lone surrogate is a character to replace, not an escape it refuses."""
    text = json.dumps(value, ensure_ascii=False)
    return _cleaned(text) if _unstorable(text) else text


_Row = tuple[Executable, dict[str, Any], "Future[None] | None"]  # a row's write, and its writer's, if awaited
# Rows in one transaction at most: the writer holds the interpreter lock while it prepares them, and 2,000 at once
# held the server's event loop for a third of a second. One job writes the queued rows, a batch at a time.
_BATCH = 100
_RUNS = RunRow.__table__  # type: ignore[attr-defined]
_FINISH = _RUNS.update().where(_RUNS.c.id == bindparam("run"))  # SET: the columns its values name


@functools.cache
def _insert_into(table: type[SQLModel]) -> Executable:
    """The insert of a row of `table`: one statement each, so that the rows of a table group in one executemany."""
    return table.__table__.insert()  # type: ignore[attr-defined]


def _remembered(db: Connection, agent: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """What `agent` has stored under `keys` (None for a key it has not)."""
    data = AgentDataRow.__table__  # type: ignore[attr-defined]
    stored = db.execute(select(data.c.key, data.c.value).where(data.c.agent == agent, data.c.key.in_(keys)))
    return dict.fromkeys(keys) | {key: value for key, value in stored}


def _finished(run_id: str, status: str, answer: Any, error: str | None, events: int | None) -> dict[str, Any]:
    return {"run": run_id, "status": str(status), "answer": answer, "error": error, "finished": time.time(),
            "events": events}


def _fields(step: StepRecord) -> dict[str, Any]:
    return {f.name: getattr(step, f.name) for f in dataclasses.fields(step)}


def _values(row: SQLModel) -> dict[str, Any]:
    return {c.name: getattr(row, c.name) for c in row.__table__.columns}  # type: ignore[attr-defined]


def _idle_timeout(connection: Any, seconds: float) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"SET idle_in_transaction_session_timeout = {max(1, round(seconds * 1000))}")
    connection.commit()


def _run_of(values: dict[str, Any]) -> str | None:
    """The run a queued row is of: a step's, call's or memory's run_id, an end's run, a run's own id."""
    return values.get("run_id") or values.get("run") or values.get("id")


def _settle(done: Future[None], error: BaseException | None) -> None:
    """Tell the writer waiting on `done` how its row went (unless it gave up waiting: cancelled)."""
    with contextlib.suppress(InvalidStateError):
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
