"""Hardening of storage, run records and the `runs` commands against hostile or careless input (issue 11): run-id
prefixes, databases opened by several processes at once, runs resumed twice, signals, retention, and model text
printed to a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from engine.interpreter.resume import ResumeError, stopped
from engine.interpreter.runs import status
from engine.kernel.storage import Storage, StorageError
from engine.kernel.syscall import Syscall, SyscallKind
from engine.kernel.tables import (
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
from engine.llm.base import Request, Snapshot
from tests.test_postgres import postgres, server  # noqa: F401 (fixtures: a PostgreSQL server on loopback)
from tests.test_resume import MATH_CASSETTE
from tests.test_run_cli import MATH, cli, runs_of, slow_run, steps_of, wait_for_steps


def stored_run(db: Path | str, run_id: str, *, status: str = "finished", answer: object = "done",
               output: object = "out", created: float | None = None, **row: object) -> None:
    """A run `run_id` with one step, stored in `db` (an SQLite file or a URL) as a run of math_agent would be."""
    storage = Storage(str(db))
    storage.start_run(RunRow(id=run_id, agent="MathAgent", flow="math_agent.yaml", status=status, inputs={"q": "x"},
                             answer=answer, created=created or time.time(), **row))
    storage.record_step(StepRecord(run_id, "solve", 1, "process", None, output, None, None, 3, time.time(),
                                   time.time()))
    storage.close()


# 7. Run-id prefixes


def test_a_run_id_prefix_is_matched_exactly_not_as_a_pattern(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    stored_run(db, "0b48a" + "0" * 27)
    for pattern in ("%b48a", "_b48a", "0B48A", "%"):
        code, out, err = cli("runs", "show", pattern, "--db", str(db))
        assert code == 2 and "is not the start of a run id" in err and "0-9, a-f" in err, (pattern, out)
    code, out, _ = cli("runs", "show", "0b48", "--db", str(db))
    assert code == 0 and f"run 0b48a{'0' * 27}" in out
    code, _, err = cli("runs", "show", "b48a", "--db", str(db))  # inside the id, not at its start
    assert code == 2 and "no run with an id starting 'b48a'" in err
    code, _, err = cli("runs", "list", "--batch", "%", "--db", str(db))
    assert code == 2 and "is not the start of a batch id" in err


# 14. Model text printed to a terminal


HOSTILE = "plan\x1b]52;c;cm0gLXJmIH4=\x07 ready\x1b[2J\x1b[1;1H\x1b]0;pwned\x1b\\\r\u202eevil\x9b31m"


def test_stored_model_text_is_printed_without_control_sequences(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    run_id = "c0ffee" + "0" * 26
    stored_run(db, run_id, status="failed", answer=None, output={"text": HOSTILE}, error=f"step solve: {HOSTILE}")
    stored_run(db, "d" * 32, answer=HOSTILE)
    shown = [cli("runs", "show", run_id, "--db", str(db))[1], cli("runs", "show", "d" * 32, "--db", str(db))[1],
             cli("runs", "list", "--db", str(db))[1]]
    for out in shown:
        assert not any(c in out for c in "\x1b\x07\r\x9b\u202e"), repr(out)
    assert "plan ready" in shown[1] and "evil31m" in shown[1]  # the text itself is still shown
    assert "step solve: plan ready" in shown[0]


# 8. A new SQLite database opened by several processes at once

OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from engine.kernel.storage import Storage, StorageError
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
Storage(sys.argv[1]).close()
"""


@pytest.mark.slow
def test_processes_creating_one_new_sqlite_database_at_once_all_succeed(tmp_path: Path) -> None:
    for trial in range(8):  # without the lock, most trials lost at least one of the 4 processes
        folder = tmp_path / str(trial)
        folder.mkdir()
        processes = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(folder / "new.db"),
                                       str(folder / f"ready{n}"), str(folder / "go")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(4)]
        deadline = time.time() + 60
        while len(list(folder.glob("ready*"))) < 4 and time.time() < deadline:
            time.sleep(0.005)
        (folder / "go").touch()
        failed = [p.communicate(timeout=60)[1] for p in processes if p.wait(timeout=60) != 0]
        assert not failed, f"trial {trial}: {len(failed)} of 4 failed: {failed[0][-400:]}"
        assert [r.key for r in Storage(str(folder / "new.db")).rows(Meta)] == ["schema_version"]


# 9. A run resumed while its process still runs it


@pytest.mark.slow
def test_resume_force_refuses_a_run_whose_process_runs_on_this_machine(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    process = slow_run(tmp_path, db)
    try:
        wait_for_steps(db, 2, process)
        code, _, err = cli("runs", "resume", runs_of(db)[0].id, "--force", *MATH_CASSETTE, "--db", str(db))
        assert code == 2 and f"it is running in process {process.pid} on this machine" in err, err
    finally:
        _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    steps = [(s.step, s.visit) for s in steps_of(db)]
    assert len(steps) == 9 and len(set(steps)) == 9, "a step was run twice"


def test_a_process_that_took_a_dead_runs_pid_is_not_its_process(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    started = psutil.Process().create_time()
    stored_run(db, "a" * 32, status="running", pid_started=started, **me)
    stored_run(db, "b" * 32, status="running", pid_started=started - 3600, **me)  # ran in a process now gone
    storage = Storage(f"sqlite:///{db}")
    alive, reused = (storage.find_run(c * 32) for c in "ab")
    assert (status(alive), status(reused)) == ("running", "crashed")
    with pytest.raises(ResumeError, match="it is running in process"):
        stopped(storage, alive.id, force=True)
    assert stopped(storage, reused.id).run.id == reused.id


# 10. SIGTERM, Ctrl-C while starting up, read-only databases


def test_sigterm_stores_the_run_as_interrupted_and_it_resumes(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    process = slow_run(tmp_path, db)
    wait_for_steps(db, 2, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err, err
    (run,) = runs_of(db)
    assert run.status == "interrupted" and f"its {len(steps_of(db))} finished steps are kept" in err
    code, _, err = cli("runs", "resume", run.id, *MATH_CASSETTE, "--db", str(db))
    assert code == 0, err
    assert runs_of(db)[0].status == "finished" and len(steps_of(db)) == 9


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_while_the_backend_opens_ends_cleanly(tmp_path: Path, sent: signal.Signals) -> None:
    answers = tmp_path / "cassette.yaml"
    os.mkfifo(answers)  # reading the cassette waits for a writer that never comes: the backend is still opening
    db = tmp_path / "runs.db"
    process = subprocess.Popen([sys.executable, "-m", "engine", *MATH, "--backend", "scripted", "--cassette",
                                str(answers), "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 60
    while not db.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)
    process.send_signal(sent)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in err, err
    assert "Traceback" not in err and "Aborted" not in err
    assert runs_of(db) == []


def test_runs_are_listed_and_shown_from_a_database_that_cannot_be_written(tmp_path: Path) -> None:
    folder = tmp_path / "kept"
    folder.mkdir()
    db = folder / "runs.db"
    subprocess.run([sys.executable, "-m", "engine", *MATH, *MATH_CASSETTE, "--db", str(db)], check=True,
                   capture_output=True)
    with contextlib.closing(sqlite3.connect(db)) as connection:  # the last to close it: its WAL files go
        ((run_id,),) = connection.execute("SELECT id FROM runs").fetchall()
    assert sorted(p.name for p in folder.iterdir()) == ["runs.db"]
    with read_only(folder, db):
        code, out, err = cli("runs", "list", "--db", str(db))
        assert code == 0 and run_id[:12] in out, err
        code, out, err = cli("runs", "show", run_id[:8], "--db", str(db))
        assert code == 0 and "· finished" in out, err


@contextlib.contextmanager
def read_only(folder: Path, db: Path) -> Iterator[None]:
    """`folder` and the database `db` in it made read-only (for root, who ignores modes, immutable)."""
    for path, mode in ((db, 0o444), (folder, 0o555)):
        path.chmod(mode)
    immutable = os.access(db, os.W_OK)
    if immutable and subprocess.run(["chattr", "+i", str(db), str(folder)], capture_output=True).returncode != 0:
        folder.chmod(0o755)
        pytest.skip("cannot make a file read-only here (root, without chattr)")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(db), str(folder)], check=True)
        folder.chmod(0o755)


# 11. Retention: `flowrun runs prune`

DAY = 86400


def with_records(storage: Storage, run_id: str, kv_folder: Path) -> Path:
    """Give run `run_id` a syscall, a tool call, a snapshot whose KV file is in `kv_folder`, a long-term memory and
    an audit record, as a run on the embedded backend leaves them; the KV file."""
    call = Syscall(SyscallKind.GENERATE, "MathAgent", run_id, Request([], key="solve"))
    kv = kv_folder / f"{uuid.uuid4().hex}.bin"
    kv.write_bytes(b"kv cache")
    storage.record_snapshot(call, Snapshot("so far", 2, {"ids": [1, 2], "kv": kv.name, "dir": str(kv_folder)}))
    storage.record_syscall(call)
    storage.record_tool_call(ToolCallRow(run_id=run_id, agent="MathAgent", tool="calculator", arguments={},
                                         result=1, started=0.0, finished=0.0))
    storage.add_memories("MathAgent", run_id, [("user", f"bananas of run {run_id[:4]}")])
    storage.audit("MathAgent", run_id, "tool", "calculator", True, "listed")
    return kv


def test_prune_removes_old_runs_with_everything_they_left_but_never_a_running_one(tmp_path: Path) -> None:
    db, now = tmp_path / "runs.db", time.time()
    here = {"host": socket.gethostname(), "pid": os.getpid()}
    started = psutil.Process().create_time()
    stored_run(db, "1" * 32, created=now - 40 * DAY)
    stored_run(db, "2" * 32, status="failed", created=now - 40 * DAY)
    stored_run(db, "3" * 32, status="running", created=now - 40 * DAY, pid_started=started, **here)  # this process
    stored_run(db, "4" * 32, status="running", created=now - 40 * DAY, pid_started=started - 60, **here)  # crashed
    stored_run(db, "5" * 32, status="running", created=now - 40 * DAY, host="elsewhere", pid=1)  # cannot be checked
    stored_run(db, "6" * 32, created=now - DAY)
    storage = Storage(str(db))
    kv = {run_id: with_records(storage, run_id, tmp_path) for run_id in ("1" * 32, "6" * 32)}
    storage.close()

    code, out, err = cli("runs", "prune", "--older-than", "30d", "--dry-run", "--db", str(db))
    assert code == 0 and "3 runs would be removed" in err and "2222" in out
    assert len(runs_of(db)) == 6 and all(path.exists() for path in kv.values())

    code, _, err = cli("runs", "prune", "--older-than", "30d", "--db", str(db))
    assert code == 0 and "removed 3 runs" in err and "1 KV files" in err, err
    storage = Storage(str(db))
    assert sorted(r.id[0] for r in storage.rows(RunRow)) == ["3", "5", "6"]
    for table in (StepRow, SyscallRow, ToolCallRow, SnapshotRow, MemoryRow):
        assert {row.run_id[0] for row in storage.rows(table)} <= {"3", "5", "6"}, table.__tablename__
    assert not kv["1" * 32].exists() and kv["6" * 32].exists()
    assert [m.run_id[0] for m in storage.search_memories(["MathAgent"], "bananas")] == ["6"]
    assert len(storage.rows(AuditRow)) == 2  # the audit log is kept


def test_prune_by_status_keeping_the_newest_and_the_memories(tmp_path: Path) -> None:
    db, now = tmp_path / "runs.db", time.time()
    for n, run_status in enumerate(["failed", "failed", "failed", "finished"]):
        stored_run(db, str(n + 1) * 32, status=run_status, created=now - 10 * (5 - n))
    storage = Storage(str(db))
    with_records(storage, "1" * 32, tmp_path)
    storage.close()
    code, _, err = cli("runs", "prune", "--status", "failed", "--keep", "2", "--keep-memories", "--vacuum",
                       "--db", str(db))
    assert code == 0 and "removed 2 runs" in err and "vacuumed" in err, err
    storage = Storage(str(db))
    assert sorted(r.id[0] for r in storage.rows(RunRow)) == ["3", "4"]  # the 2 newest kept; 4 is finished anyway
    assert [m.run_id[0] for m in storage.search_memories(["MathAgent"], "bananas")] == ["1"]
    assert sorted(s.run_id[0] for s in storage.rows(StepRow)) == ["3", "4"]
    code, _, err = cli("runs", "prune", "--db", str(db))
    assert code == 2 and "say which runs to remove" in err
    code, _, err = cli("runs", "prune", "--older-than", "soon", "--db", str(db))
    assert code == 2 and "is not a duration" in err


def test_rows_left_queued_by_a_locked_database_go_in_once_it_is_free(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """More rows than one transaction takes, queued while another process held the database: none is lost, and a
    step awaited after them is committed (a writer waited forever on it once, its row past the first batch)."""
    monkeypatch.setenv("FLOWRUN_DB_TIMEOUT", "0.02")
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    storage.start_run(RunRow(id="a" * 32, agent="A", flow="f.yaml", status="running", inputs={}, created=1.0))
    other = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write lock
    for _ in range(150):
        storage.record_syscall(Syscall(SyscallKind.TOOL, "A", "a" * 32))
    storage._writes.submit(lambda: None).result()  # every queued write has been tried, and found it busy
    other.execute("ROLLBACK")
    step = StepRecord("a" * 32, "solve", 1, "process", None, "out", None, None, 3, 1.0, 2.0)
    with contextlib.suppress(StorageError):  # committed; then the database found busy before is said, once
        asyncio.run(asyncio.wait_for(storage.commit_step(step), 10))
    assert len(storage.of_runs(SyscallRow, ["a" * 32])) == 150
    assert [s.step for s in storage.of_runs(StepRow, ["a" * 32])] == ["solve"]


def test_a_step_awaited_while_the_writer_fails_on_a_locked_database_is_told_so(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A step queued while the writer retries rows another process's lock keeps out is not left waiting: it is
    tried in its turn, and its writer told that the database is busy; once it is free, every row goes in."""
    monkeypatch.setenv("FLOWRUN_DB_TIMEOUT", "0.5")
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    storage.start_run(RunRow(id="a" * 32, agent="A", flow="f.yaml", status="running", inputs={}, created=1.0))
    other = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write lock
    storage.record_syscall(Syscall(SyscallKind.TOOL, "A", "a" * 32))  # the writer retries it for 0.5 s
    time.sleep(0.1)
    step = StepRecord("a" * 32, "solve", 1, "process", None, "out", None, None, 3, 1.0, 2.0)
    with pytest.raises(StorageError, match="locked"):
        asyncio.run(asyncio.wait_for(storage.commit_step(step), 10))
    other.execute("ROLLBACK")
    with contextlib.suppress(StorageError):  # committed; then the busy database found before is said, once
        asyncio.run(asyncio.wait_for(storage.commit_step(replace(step, visit=2)), 10))
    assert len(storage.of_runs(SyscallRow, ["a" * 32])) == 1
    assert [s.visit for s in storage.of_runs(StepRow, ["a" * 32])] == [2]


def test_a_step_queued_behind_more_rows_than_a_transaction_takes_is_told_the_database_stays_locked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows queued past the first transaction of a write that fails get no job of their own: a step among them
    is told at once that the database is locked (it waited forever once), and the others go in when it is free."""
    monkeypatch.setenv("FLOWRUN_DB_TIMEOUT", "0.3")
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    storage.start_run(RunRow(id="a" * 32, agent="A", flow="f.yaml", status="running", inputs={}, created=1.0))
    other = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write lock
    step = StepRecord("a" * 32, "solve", 1, "process", None, "out", None, None, 3, 1.0, 2.0)

    async def step_behind_rows() -> None:
        gate = threading.Event()
        storage.later(gate.wait, 30)  # the writer is busy until every row below is queued
        for _ in range(150):
            storage.record_syscall(Syscall(SyscallKind.TOOL, "A", "a" * 32))
        stored = asyncio.ensure_future(storage.commit_step(step))
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.wait_for(stored, 10)

    with pytest.raises(StorageError, match="locked"):
        asyncio.run(step_behind_rows())
    other.execute("ROLLBACK")
    with contextlib.suppress(StorageError):  # committed; then the busy database found before is said, once
        asyncio.run(asyncio.wait_for(storage.commit_step(replace(step, visit=2)), 10))
    assert len(storage.of_runs(SyscallRow, ["a" * 32])) == 150
    assert [s.visit for s in storage.of_runs(StepRow, ["a" * 32])] == [2]


def test_memories_are_searched_while_another_process_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search whose memories are all indexed only reads: another process's write lock does not stop it."""
    monkeypatch.setenv("FLOWRUN_DB_TIMEOUT", "0.3")
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    storage.add_memories("A", "a" * 32, [("user", "plums are ripe")])
    assert [m.content for m in storage.search_memories(["A"], "plums")] == ["plums are ripe"]  # indexed now
    other = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write lock
    assert [m.content for m in storage.search_memories(["A"], "ripe")] == ["plums are ripe"]
    other.execute("ROLLBACK")
