"""The storage contract, one suite run on every database flowrun supports: SQLite and the real PostgreSQL server
that tests/test_postgres.py starts (after LangGraph's checkpoint-conformance suite). A test here holds for every
backend; behaviour of one backend only (SQLite's read-only files, WAL, FTS5 ranking) is tested beside it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import event

from engine.errors import RunStatus
from engine.kernel.storage import SCHEMA_VERSION, Fenced, NoSuchRun, Storage, StorageError
from engine.kernel.syscall import Syscall, SyscallKind
from engine.kernel.tables import (
    AgentDataRow,
    AuditRow,
    MemoryRow,
    Meta,
    RunRow,
    StepRecord,
    StepRow,
    SyscallRow,
    ToolCallRow,
)
from tests.test_postgres import postgres, server  # noqa: F401 (fixtures: a PostgreSQL server on loopback)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of a new, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'runs.db'}"
    return request.getfixturevalue("postgres")


@pytest.fixture
def storage(url: str) -> Iterator[Storage]:
    opened = Storage(url)
    yield opened
    opened.close()


def run(run_id: str, *, created: float | None = None, status: str = RunStatus.FINISHED, agent: str = "MathAgent",
        **row: object) -> RunRow:
    return RunRow(id=run_id, agent=agent, flow="math_agent.yaml", status=status, inputs={"problem": "2 + 3"},
                  created=time.time() if created is None else created, **row)


def step(run_id: str, visit: int = 1, output: object = "out", name: str = "solve") -> StepRecord:
    return StepRecord(run_id, name, visit, "process", None, output, None, None, 3, time.time(), time.time())


# Values a run's inputs, answer and steps hold, which must come back exactly as they went in (not 20.0 as 20,
# nor 2**70 as a float, nor a string of digits as a number).
EXACT = {"float": 20.0, "big": 2**70, "negative": -3, "digits": "007", "text": "naïve ✓ \u202e", "none": None,
         "nested": [{"a": [1.5, True, False, {}]}], "empty": ""}


def test_runs_are_found_by_a_unique_start_of_their_id_and_listed_newest_first(storage: Storage) -> None:
    for n, run_id in enumerate(["0b48a" + "0" * 27, "0b49f" + "0" * 27, "ab48a" + "0" * 27]):
        storage.start_run(run(run_id, created=1000.0 + n, batch="bb01" if n < 2 else None))
    assert storage.find_run("0b48").id == "0b48a" + "0" * 27
    assert storage.find_run("ab48a" + "0" * 27).id.startswith("ab48a")
    with pytest.raises(NoSuchRun, match="more than one run with an id starting '0b4'"):
        storage.find_run("0b4")
    with pytest.raises(NoSuchRun, match="no run with an id starting 'b48a'"):  # inside an id, not at its start
        storage.find_run("b48a")
    for pattern in ("%b48a", "_b48a", "0B48A", "%"):  # never a LIKE pattern
        with pytest.raises(StorageError, match="is not the start of a run id"):
            storage.find_run(pattern)
    assert [r.id[:5] for r in storage.find_runs()] == ["ab48a", "0b49f", "0b48a"]
    assert [r.id[:5] for r in storage.find_runs(limit=1)] == ["ab48a"]
    assert [r.id[:5] for r in storage.find_runs(limit=None, batch="bb")] == ["0b49f", "0b48a"]
    storage.finish_run("0b48a" + "0" * 27, RunStatus.INTERRUPTED, error="stopped")
    assert [r.id[:5] for r in storage.find_runs(limit=1, status=RunStatus.INTERRUPTED)] == ["0b48a"]
    assert [r.id[:5] for r in storage.find_runs(status=RunStatus.FINISHED)] == ["ab48a", "0b49f"]
    storage.start_run(run("cc000" + "0" * 27, created=999.0, agent="Other"))
    assert [r.id[:5] for r in storage.find_runs(flow="Other")] == ["cc000"]
    assert [r.id[:5] for r in storage.find_runs(flow="MathAgent", status=RunStatus.FINISHED)] == ["ab48a", "0b49f"]
    assert storage.find_runs(flow="mathagent") == []  # a flow's name, exactly
    with pytest.raises(StorageError, match="is not the start of a batch id"):
        storage.find_runs(batch="%")


def test_values_come_back_exactly_as_they_were_stored(storage: Storage) -> None:
    storage.start_run(run("c" * 32, status=RunStatus.RUNNING))
    storage.record_step(step("c" * 32, output=EXACT))
    storage.finish_run("c" * 32, RunStatus.FINISHED, answer=EXACT)
    stored = storage.find_run("c")
    assert (stored.status, stored.answer, stored.inputs) == (RunStatus.FINISHED, EXACT, {"problem": "2 + 3"})
    assert stored.finished is not None
    assert [s.output for s in storage.of_runs(StepRow, ["c" * 32])] == [EXACT]
    with pytest.raises(StorageError, match="no run"):
        storage.finish_run("d" * 32, RunStatus.FAILED, error="gone")


def test_a_step_is_stored_once_per_visit_in_the_order_of_its_runs_steps(storage: Storage) -> None:
    storage.start_run(run("e" * 32))
    storage.record_step(step("e" * 32, 1))
    storage.record_step(step("e" * 32, 1, name="check"))
    with pytest.raises(StorageError, match="refused a record it holds already"):
        storage.record_step(step("e" * 32, 1, output="twice"))
    storage.record_step(step("e" * 32, 2, output="twice"))
    assert [(s.step, s.visit, s.output) for s in storage.of_runs(StepRow, ["e" * 32])] == [
        ("solve", 1, "out"), ("check", 1, "out"), ("solve", 2, "twice")]


def test_rows_awaited_while_the_writer_is_busy_are_committed_together_and_a_bad_one_fails_alone(
        storage: Storage) -> None:
    commits: list[object] = []
    event.listen(storage.engine, "commit", commits.append)

    async def store_while_busy(*steps: StepRecord) -> list[BaseException | None]:
        gate = threading.Event()
        storage.later(gate.wait, 30)  # the writer is busy until every step below is queued
        stored = [asyncio.ensure_future(storage.commit_step(s)) for s in steps]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*stored, return_exceptions=True)

    asyncio.run(storage.commit_start_run(run("c" * 32)))
    commits.clear()
    assert asyncio.run(store_while_busy(*(step("c" * 32, n) for n in range(1, 41)))) == [None] * 40
    assert len(commits) == 1  # 2,000 runs POSTed at once were 2,000 commits in a row
    # visit 3 again: refused, and only it; the others are stored
    outcomes = asyncio.run(store_while_busy(step("c" * 32, 41), step("c" * 32, 3, output="twice"),
                                            step("c" * 32, 42)))
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], StorageError) and "refused a record it holds already" in str(outcomes[1])
    assert [s.visit for s in storage.of_runs(StepRow, ["c" * 32])] == list(range(1, 43))
    # a value the database driver refuses (not JSON): that step fails alone, with a StorageError
    outcomes = asyncio.run(store_while_busy(step("c" * 32, 3, output="again"), step("c" * 32, 43, output={1, 2}),
                                            step("c" * 32, 44)))
    assert all(isinstance(o, StorageError) for o in outcomes[:2]) and outcomes[2] is None
    assert "refused a record" in str(outcomes[1])
    # a write not awaited (from a thread of its own) behind more rows than one transaction takes
    gate = threading.Event()
    storage.later(gate.wait, 30)
    for _ in range(250):
        storage.record_syscall(Syscall(SyscallKind.TOOL, "MathAgent", "c" * 32))
    gate.set()
    storage.record_step(step("c" * 32, 45))
    assert len(storage.of_runs(SyscallRow, ["c" * 32])) == 250
    assert storage.of_runs(StepRow, ["c" * 32])[-1].visit == 45


def test_runs_ending_at_once_are_committed_together_with_their_memories(storage: Storage) -> None:
    ids = [digit * 32 for digit in "12345"]
    for run_id in ids:
        storage.start_run(run(run_id, status=RunStatus.RUNNING))
    commits: list[object] = []
    event.listen(storage.engine, "commit", commits.append)

    async def end_while_busy() -> list[None]:
        gate = threading.Event()
        storage.later(gate.wait, 30)  # the writer is busy until every run below has ended
        ended = []
        for run_id in ids:  # as a run ends: what is left of its short-term memory goes first
            storage.add_memories("MathAgent", run_id, [("user", f"pears of run {run_id[0]}")])
            ended.append(asyncio.ensure_future(storage.commit_finish_run(run_id, RunStatus.FINISHED,
                                                                         {"run": run_id[0]})))
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*ended)

    assert asyncio.run(end_while_busy()) == [None] * 5
    assert len(commits) == 1  # 2,000 runs ending at once were 4,000 commits in a row
    assert [storage.find_run(run_id).answer for run_id in ids] == [{"run": digit} for digit in "12345"]
    assert {storage.find_run(run_id).status for run_id in ids} == {RunStatus.FINISHED}
    found = storage.search_memories(["MathAgent"], "pears", limit=10)
    assert sorted(m.content for m in found) == [f"pears of run {digit}" for digit in "12345"]


def test_a_run_end_is_stored_once_and_says_the_failure_of_a_write_queued_before_it(storage: Storage) -> None:
    storage.start_run(run("7" * 32, status=RunStatus.RUNNING))
    updates: list[str] = []
    event.listen(storage.engine, "before_cursor_execute",
                 lambda _, __, statement, *___: updates.append(statement) if statement.startswith("UPDATE") else None)

    def refused() -> None:
        raise StorageError("the database refused a record")

    storage.later(refused)
    with pytest.raises(StorageError, match="refused a record"):
        asyncio.run(storage.commit_finish_run("7" * 32, RunStatus.FINISHED, 42))
    assert storage.find_run("7" * 32).answer == 42 and len(updates) == 1


def test_a_write_queued_without_waiting_is_seen_by_the_next_read(storage: Storage) -> None:
    storage.start_run(run("f" * 32))
    calls = [Syscall(SyscallKind.TOOL, "MathAgent", "f" * 32) for _ in range(50)]
    for n, call in enumerate(calls):
        call.created = 1000.0 + n
        storage.record_syscall(call, error="boom" if n == 7 else None)
        storage.record_tool_call(ToolCallRow(run_id="f" * 32, agent="MathAgent", tool="calculator",
                                             syscall=call.id, arguments={"n": n}, result={"n": n}, started=0.0,
                                             finished=0.0))
    stored = storage.of_runs(SyscallRow, ["f" * 32])  # no flush: a read waits for the queue itself
    assert [s.id for s in stored] == [c.id for c in calls]
    assert [s.error for s in stored if s.error] == ["boom"]
    assert [t.arguments["n"] for t in storage.of_runs(ToolCallRow, ["f" * 32])] == list(range(50))


def test_runs_and_ended_steps_are_read_without_waiting_behind_the_queued_records(storage: Storage) -> None:
    """A server reads runs all the time, while under load the queue of records nothing waits on is long."""
    storage.start_run(run("d" * 32))
    storage.record_step(step("d" * 32))
    gate = threading.Event()
    storage.later(gate.wait, 30)  # the writer is busy: what is queued after this waits
    storage.record_syscall(Syscall(SyscallKind.GENERATE, "MathAgent", "d" * 32))
    started = time.monotonic()
    assert storage.find_run("d").id == "d" * 32 and len(storage.find_runs()) == 1
    assert [s.step for s in storage.of_runs(StepRow, ["d" * 32])] == ["solve"]
    assert storage.of_runs(SyscallRow, ["d" * 32], wait=False) == []  # queued, not committed yet
    assert time.monotonic() - started < 10
    gate.set()
    assert len(storage.of_runs(SyscallRow, ["d" * 32])) == 1  # waits for the queue


def test_a_started_tool_call_is_pending_until_it_ends_and_can_be_superseded(storage: Storage) -> None:
    storage.start_run(run("a" * 32))
    row = ToolCallRow(run_id="a" * 32, agent="MathAgent", tool="mailer", arguments={"to": "x"}, started=1.0,
                      finished=1.0, pending=True)
    row.id = storage.start_tool_call(row)
    [pending] = storage.of_runs(ToolCallRow, ["a" * 32])
    assert (pending.id, pending.pending, pending.result) == (row.id, True, None)
    storage.end_tool_call(row.model_copy(update={"result": {"sent": 1}, "finished": 2.0}))
    [ended] = storage.of_runs(ToolCallRow, ["a" * 32])
    assert (ended.pending, ended.result, ended.finished, ended.superseded) == (None, {"sent": 1}, 2.0, None)
    call = Syscall(SyscallKind.GENERATE, "MathAgent", "a" * 32)
    storage.record_syscall(call)
    storage.later(storage.supersede, [call.id], [row.id])  # queued after the record, as a resumed run does
    assert storage.of_runs(ToolCallRow, ["a" * 32])[0].superseded is True
    assert storage.of_runs(SyscallRow, ["a" * 32])[0].superseded is True


def test_of_two_claims_of_a_stopped_run_only_one_wins(url: str) -> None:
    first, second = Storage(url), Storage(url)  # two processes resuming it at once, say
    try:
        first.start_run(run("b" * 32, status=RunStatus.INTERRUPTED, pid=41))
        call = Syscall(SyscallKind.GENERATE, "MathAgent", "b" * 32)
        first.record_syscall(call)
        first.flush()
        seen = (RunStatus.INTERRUPTED, 41)
        mine = {"host": "here", "pid": 42, "pid_started": 5.0}
        assert first.claim_run("b" * 32, seen, mine, ([call.id], [])) == 0  # claimed (not a run of the queue)
        assert second.claim_run("b" * 32, seen, {**mine, "pid": 43}) is None
        claimed = second.find_run("b")
        assert (claimed.status, claimed.pid, claimed.host, claimed.error) == (RunStatus.RUNNING, 42, "here", None)
        assert second.of_runs(SyscallRow, ["b" * 32])[0].superseded is True
    finally:
        first.close()
        second.close()


def test_a_fenced_run_is_written_only_until_another_process_claims_it(url: str) -> None:
    """A worker that claimed a run fences it with the claim's epoch: once another worker claimed it (the first one
    froze past the stall time), the first one's steps, calls, child runs, tool calls and end are not stored."""
    first, second = Storage(url), Storage(url)
    root, child = "f" * 32, "c" * 32
    try:
        first.start_run(run(root, status=RunStatus.QUEUED, epoch=0))
        epoch = first.claim_run(root, (RunStatus.QUEUED, None), {"host": "a", "pid": 1, "pid_started": 1.0},
                                queue=True)
        first.fences.fence(root, epoch)
        asyncio.run(first.commit_step(step(root, 1)))  # held: written
        assert second.claim_run(root, (RunStatus.RUNNING, 1), {"host": "b", "pid": 2, "pid_started": 2.0},
                                queue=True) == 2

        with pytest.raises(Fenced, match="taken over by another process"):
            asyncio.run(first.commit_step(step(root, 2)))
        first.record_syscall(Syscall(SyscallKind.GENERATE, "MathAgent", root))
        with pytest.raises(Fenced):
            asyncio.run(first.commit_start_run(run(child, status=RunStatus.RUNNING, parent=root)))
        with pytest.raises(Fenced):  # a call that may have an effect is not even begun
            first.start_tool_call(ToolCallRow(run_id=root, agent="MathAgent", tool="send", arguments={},
                                              started=time.time(), finished=time.time(), pending=True))
        with pytest.raises(Fenced):
            asyncio.run(first.commit_finish_run(root, RunStatus.FINISHED, "done"))
        first.flush()
        taken = second.find_run(root)
        assert (taken.status, taken.host, taken.epoch) == (RunStatus.RUNNING, "b", 2)
        assert [s.visit for s in second.of_runs(StepRow, [root])] == [1]
        assert second.of_runs(SyscallRow, [root]) == second.of_runs(ToolCallRow, [root]) == []
        with pytest.raises(NoSuchRun):
            second.find_run(child)
    finally:
        first.close()
        second.close()


def test_deleting_runs_takes_what_they_left_but_not_a_run_changed_since_nor_the_audit(storage: Storage) -> None:
    for run_id in ("1" * 32, "2" * 32):
        storage.start_run(run(run_id))
        storage.record_step(step(run_id))
        storage.record_syscall(Syscall(SyscallKind.GENERATE, "MathAgent", run_id))
        storage.add_memories("MathAgent", run_id, [("user", f"remember {run_id[0]}")])
        storage.audit("MathAgent", run_id, "tool", "calculator", True, "granted")
    storage.put("MathAgent", "notes", {"kept": True})
    seen = storage.find_runs(limit=None)
    storage.finish_run("2" * 32, RunStatus.FAILED, error="resumed and failed meanwhile")
    ids, gone = storage.delete_runs(seen, memories=False)
    assert ids == ["1" * 32]
    assert gone == {"runs": 1, "steps": 1, "syscalls": 1, "tool_calls": 0, "snapshots": 0}
    assert [r.id for r in storage.rows(RunRow)] == ["2" * 32]
    assert {m.run_id for m in storage.rows(MemoryRow)} == {"1" * 32, "2" * 32}
    ids, gone = storage.delete_runs(storage.find_runs(limit=None))
    assert (ids, gone["memories"]) == (["2" * 32], 1)
    assert [len(storage.rows(t)) for t in (RunRow, StepRow, SyscallRow)] == [0, 0, 0]
    assert len(storage.rows(AuditRow)) == 2 and storage.get("MathAgent", "notes") == {"kept": True}
    storage.vacuum()  # gives the space back (`runs prune --vacuum`), on either database
    assert [m.content for m in storage.search_memories(["MathAgent"], "remember")] == ["remember 1"]


def test_memories_stored_after_a_search_and_after_deleted_ones_are_found(storage: Storage) -> None:
    for digit in "12":
        storage.start_run(run(digit * 32))
        storage.add_memories("MathAgent", digit * 32, [("user", f"plums of run {digit}")])
    assert len(storage.search_memories(["MathAgent"], "plums")) == 2
    gate = threading.Event()
    storage.later(gate.wait, 30)  # the writer is busy: the memories below are still queued as the runs go
    storage.add_memories("MathAgent", "1" * 32, [("user", "plums again, run 1")])
    storage.add_memories("MathAgent", "2" * 32, [("user", "plums again, run 2")])
    threading.Timer(0.2, gate.set).start()
    storage.delete_runs([storage.find_run("2" * 32)])  # the last memories searched for go, and one not yet
    storage.add_memories("MathAgent", "3" * 32, [("user", "plums of run 3")])
    found = storage.search_memories(["MathAgent"], "plums", limit=10)
    assert sorted(m.content for m in found) == ["plums again, run 1", "plums of run 1", "plums of run 3"]


def test_agent_data_is_kept_by_agent_and_key_and_memories_are_found_by_their_words(storage: Storage) -> None:
    storage.put("MathAgent", "units", "metric")
    storage.put("MathAgent", "units", EXACT)
    storage.put("TravelAgent", "units", "imperial")
    assert (storage.get("MathAgent", "units"), storage.get("TravelAgent", "units")) == (EXACT, "imperial")
    assert storage.get("MathAgent", "nothing") is None
    assert len(storage.rows(AgentDataRow)) == 2
    storage.add_memories("MathAgent", "9" * 32, [("user", "the train leaves Seattle at 9"),
                                                 ("assistant", "noted: Seattle, 9 am")])
    storage.add_memories("TravelAgent", "8" * 32, [("user", "Seattle hotels are dear")])
    storage.add_memories("MathAgent", "9" * 32, [])
    found = storage.search_memories(["MathAgent"], "when does the train leave Seattle?")
    assert {m.content for m in found} == {"the train leaves Seattle at 9", "noted: Seattle, 9 am"}
    assert {m.agent for m in storage.search_memories(["MathAgent", "TravelAgent"], "Seattle")} == {
        "MathAgent", "TravelAgent"}
    assert storage.search_memories(["MathAgent"], "?!") == []


def test_an_old_database_migrates_keeping_the_first_of_each_step_stored_twice(url: str) -> None:
    old = Storage(url)
    old.start_run(run("0b48a" + "0" * 27))
    old.record_step(step("0b48a" + "0" * 27))
    with old.engine.begin() as db:  # as flowrun's schema 4 left it, with a step stored twice by a double run
        db.exec_driver_sql("DROP INDEX ux_steps_run_step_visit")
        db.exec_driver_sql("ALTER TABLE runs DROP COLUMN pid_started")
        db.exec_driver_sql("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        db.exec_driver_sql("INSERT INTO steps (run_id, step, visit, kind, tokens, started, finished, output) "
                           "SELECT run_id, step, visit, kind, tokens, started, finished, '\"second\"' FROM steps")
    old.close()
    storage = Storage(url)
    try:
        assert [r.value for r in storage.rows(Meta)] == [str(SCHEMA_VERSION)]
        assert [(s.step, s.visit, s.output) for s in storage.rows(StepRow)] == [("solve", 1, "out")]
        assert storage.find_run("0b4").pid_started is None
        with pytest.raises(StorageError, match="refused a record it holds already"):
            storage.record_step(step("0b48a" + "0" * 27, output="x"))
    finally:
        storage.close()


def test_a_database_of_a_newer_flowrun_is_refused_untouched(url: str) -> None:
    made = Storage(url)
    with made.engine.begin() as db:
        db.exec_driver_sql(f"UPDATE meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")
    made.close()
    with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this flowrun's"):
        Storage(url)


def test_a_record_holding_a_nul_character_is_stored_and_the_writes_after_it_go_on(storage: Storage) -> None:
    # PostgreSQL refuses a NUL in text, where a tool's or a model's text can put one: refused, the record stayed
    # queued and every write after it failed, in every run of the process
    storage.start_run(run("9" * 32, status=RunStatus.RUNNING))
    storage.record_syscall(Syscall(SyscallKind.TOOL, "MathAgent", "9" * 32), error="the tool said a\x00b")
    storage.add_memories("MathAgent", "9" * 32, [("user", "x\x00y")])
    storage.record_step(step("9" * 32, output={"said": "a\x00b"}))  # JSON holds it as an escape
    storage.finish_run("9" * 32, RunStatus.FAILED, error="stopped at \x00")
    assert [s.output for s in storage.of_runs(StepRow, ["9" * 32])] == [{"said": "a\x00b"}]
    assert [c.error for c in storage.of_runs(SyscallRow, ["9" * 32])] == ["the tool said a\ufffdb"]
    assert [m.content for m in storage.of_runs(MemoryRow, ["9" * 32])] == ["x\ufffdy"]
    assert storage.find_run("9" * 32).error == "stopped at \ufffd"


def test_a_record_holding_a_lone_surrogate_is_stored_and_the_writes_after_it_go_on(storage: Storage) -> None:
    # JSON a tool or the model gives can escape half a surrogate pair, which json.loads keeps: no database takes
    # it as UTF-8 (SQLite's driver cannot encode it), and the refused record stopped every write after it
    storage.start_run(run("8" * 32, status=RunStatus.RUNNING))
    storage.record_syscall(Syscall(SyscallKind.TOOL, "MathAgent", "8" * 32), error="the tool said \ud800!")
    storage.record_step(step("8" * 32, output={"said": "\udfff", "whole": "\U0001f600"}))
    storage.finish_run("8" * 32, RunStatus.FAILED, error="stopped")
    assert [c.error for c in storage.of_runs(SyscallRow, ["8" * 32])] == ["the tool said \ufffd!"]
    assert [s.output for s in storage.of_runs(StepRow, ["8" * 32])] in (
        [{"said": "\udfff", "whole": "\U0001f600"}], [{"said": "\ufffd", "whole": "\U0001f600"}])
