"""Faults: a model server that refuses, stalls, answers 500 or cuts the stream off is retried with backoff, then the
run is paused and can be resumed; a database that is busy is waited for, one that is full or read-only stops the
run with a message. Whatever happens, what was committed stays readable."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from engine.flow.validate import load_flow
from engine.interpreter.setup import kernel_for, read_cassette
from engine.interpreter.walk import RunOutcome, run_flow
from engine.kernel.storage import Storage
from tests.fake_ollama import FakeOllama
from tests.test_run_cli import cli, runs_of, steps_of

FLOWS_HERE = Path(__file__).resolve().parent / "flows"
ANSWERS = {"fox": "The work on naps is done, and every nap was taken in turn."}
QUICK = {"FLOWRUN_RETRIES": "2", "FLOWRUN_RETRY_DELAY": "0.01", "FLOWRUN_MODEL_TIMEOUT": "0.5"}


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    server = FakeOllama(ANSWERS)
    yield server
    server.close()


def run_on(host: str, flow: Path, db: Path, *command: str) -> tuple[int, str, str]:
    """`flowrun run` of `flow` (or `command`) on the Ollama server at `host`, retrying quickly."""
    return cli(*command or ("run", str(flow), "-i", "topic=naps"), "--tools", str(flow.parent / "tools"),
               "--backend", "ollama", "--model", "fox", "--db", str(db), env={**QUICK, "OLLAMA_HOST": host})


@pytest.mark.parametrize("fault", ["500", "stall", "drop"])
def test_a_passing_fault_is_retried_and_the_run_finishes(fake: FakeOllama, two_steps: Path, tmp_path: Path,
                                                         fault: str) -> None:
    fake.faults = [fault, fault]  # the first two tries of `work` fail; the third (the last allowed) answers
    code, out, err = run_on(fake.url, two_steps, tmp_path / "runs.db")
    assert code == 0, err
    assert out.strip() == ANSWERS["fox"]  # the whole answer, not a part cut off and kept
    assert len(fake.requests) == 4  # work: 3 tries; done: 1
    assert [s.step for s in steps_of(tmp_path / "runs.db")] == ["begin", "work", "done"]


@pytest.mark.parametrize("fault", ["500", "stall", "drop"])
def test_a_lasting_fault_pauses_the_run_and_resume_finishes_it(fake: FakeOllama, two_steps: Path, tmp_path: Path,
                                                               fault: str) -> None:
    db = tmp_path / "runs.db"
    fake.faults = [fault] * 3
    code, _, err = run_on(fake.url, two_steps, db)
    assert code == 3, err
    (run,) = runs_of(db)
    assert run.status == "paused" and "(tried 3 times)" in run.error and run.error.startswith("step work: ")
    assert f"resume it when the model is back: `flowrun runs resume {run.id[:12]}`" in err
    assert [s.step for s in steps_of(db)] == ["begin"]
    code, _out, err = run_on(fake.url, two_steps, db, "runs", "resume", run.id)
    assert code == 0, err
    assert [s.step for s in steps_of(db)] == ["begin", "work", "done"]  # begin kept, and stored once
    assert runs_of(db)[0].status == "finished"


def test_a_server_that_refuses_pauses_the_run(two_steps: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = run_on(f"http://127.0.0.1:{port}", two_steps, tmp_path / "runs.db")
    assert code == 3 and f"no Ollama server answers at http://127.0.0.1:{port}" in err
    assert "(tried 3 times)" in err and "step work" in err
    assert [s.step for s in steps_of(tmp_path / "runs.db")] == ["begin"]
    assert runs_of(tmp_path / "runs.db")[0].status == "paused"


def test_a_busy_database_is_waited_for(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    assert cli("runs", "list", "--db", str(db))[0] == 0  # the database exists, empty
    holder = sqlite3.connect(db, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process writing for a while
    threading.Timer(1.0, holder.commit).start()
    started = time.monotonic()
    code, out, err = cli("run", str(FLOWS_HERE / "ledger.yaml"), "--tools", str(FLOWS_HERE), "-i",
                         "purchases=apples 3", "--backend", "scripted", "--cassette",
                         str(FLOWS_HERE / "ledger.cassette.yaml"), "--db", str(db), "--json",
                         env={"FLOWRUN_DB_TIMEOUT": "20"})
    assert code == 0, err
    assert time.monotonic() - started >= 1.0 and json.loads(out)["status"] == "finished"


def run_ledger(storage: Storage, tmp_path: Path) -> RunOutcome:
    """A run of the ledger flow, in process, stored in `storage`."""
    checked = load_flow(FLOWS_HERE / "ledger.yaml", [FLOWS_HERE])
    kernel = kernel_for([checked], read_cassette(FLOWS_HERE / "ledger.cassette.yaml"), storage,
                        workspaces=tmp_path / "workspaces")
    return asyncio.run(run_flow(kernel, checked.compiled, {"purchases": "apples 3, bread 2 and milk 1.5"},
                                file=str(FLOWS_HERE / "ledger.yaml")))


def resume_ledger(run_id: str, db: Path) -> tuple[int, str, str]:
    """`flowrun runs resume` of a ledger run that this very process stored as running (hence --force)."""
    return cli("runs", "resume", run_id, "--force", "--tools", str(FLOWS_HERE), "--backend", "scripted",
               "--cassette", str(FLOWS_HERE / "ledger.cassette.yaml"), "--db", str(db))


def test_a_full_disk_stops_the_run_cleanly_and_keeps_what_it_committed(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    storage = Storage(f"sqlite:///{db}")
    with sqlite3.connect(db) as connection:
        room = connection.execute("PRAGMA page_count").fetchone()[0] + 4  # a few pages more, then the disk is full
    event.listen(storage.engine, "connect", lambda dbapi, _: dbapi.execute(f"PRAGMA max_page_count = {room}"))
    storage.engine.dispose()
    outcome = run_ledger(storage, tmp_path)
    assert outcome.status == "failed"
    assert "database or disk is full" in outcome.error and "free some space" in outcome.error
    kept = steps_of(db)  # read by a storage of its own: what was committed is all there, and readable
    assert 0 < len(kept) < 10 and [s.step for s in kept] == outcome.path[:len(kept)]
    # Space again: the run (stored as running, by this very process) goes on from where it stopped.
    code, _, err = resume_ledger(outcome.run_id, db)
    assert code == 0, err
    assert [s.step for s in steps_of(db)][:len(kept)] == [s.step for s in kept] and len(steps_of(db)) == 10


@pytest.mark.parametrize(("name", "value"), [("FLOWRUN_RETRIES", "many"), ("FLOWRUN_RETRY_DELAY", "-1"),
                                             ("FLOWRUN_DB_TIMEOUT", "soon"), ("FLOWRUN_MODEL_TIMEOUT", "x")])
def test_a_setting_that_is_not_a_number_is_a_clear_error(fake: FakeOllama, two_steps: Path, tmp_path: Path,
                                                         name: str, value: str) -> None:
    code, _, err = cli("run", str(two_steps), "-i", "topic=naps", "--tools", str(two_steps.parent / "tools"),
                       "--backend", "ollama", "--model", "fox", "--db", str(tmp_path / "runs.db"),
                       env={"OLLAMA_HOST": fake.url, name: value})
    assert code == 2 and f"{name} is {value!r}: it must be" in err and "Traceback" not in err


def test_a_database_that_turns_read_only_stops_the_run_and_keeps_what_it_committed(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    storage = Storage(f"sqlite:///{db}")
    steps_stored = []

    @event.listens_for(storage.engine, "before_cursor_execute")
    def turn_read_only(_: object, cursor: sqlite3.Cursor, statement: str, *__: object) -> None:
        if statement.startswith("INSERT INTO steps"):
            steps_stored.append(statement)
            if len(steps_stored) == 3:  # the database turns read-only as the third step is stored
                cursor.execute("PRAGMA query_only = 1")

    outcome = run_ledger(storage, tmp_path)
    assert outcome.status == "failed"
    assert "readonly database" in outcome.error and "it is read-only: make it writable" in outcome.error
    assert [s.step for s in steps_of(db)] == ["plan", "record"]  # read by another connection: all there
    code, _, err = resume_ledger(outcome.run_id, db)
    assert code == 0, err
    assert len(steps_of(db)) == 10
