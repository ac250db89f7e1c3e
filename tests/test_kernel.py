"""The kernel on the scripted backend: stored metrics, tools beside the model, busy tools, access, memory."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.kernel.access import ANY, AccessDenied, Group
from engine.kernel.context import ContextOverflow, WindowPolicy
from engine.kernel.kernel import Kernel, KernelError
from engine.kernel.scheduler import Policy
from engine.kernel.storage import SCHEMA_VERSION, Storage, StorageError, default_url
from engine.kernel.tables import AuditRow, Meta, RunRow, SnapshotRow, StepRecord, StepRow, SyscallRow, ToolCallRow
from engine.kernel.tools import BadArguments, Tool, ToolError, load_entry
from engine.llm.base import Request
from engine.llm.scripted import ScriptedBackend, tokenize


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(f"sqlite:///{tmp_path / 'flowrun.db'}")


def scripted(responses: list[dict], **options) -> ScriptedBackend:
    return ScriptedBackend.from_responses(responses, **options)


def ask(key: str) -> Request:
    return Request([{"role": "user", "content": f"please {key}"}], key=key)


def sleeper(seconds: float, log: list | None = None) -> Tool:
    def nap(label: str) -> str:
        if log is not None:
            log.append(("in", label))
        time.sleep(seconds)
        if log is not None:
            log.append(("out", label))
        return f"slept {label}"

    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"],
              "additionalProperties": False}
    return Tool("nap", "sleeps", schema, nap, timeout=5, concurrency=1)


def test_every_syscall_is_stored_with_its_metrics(storage: Storage) -> None:
    texts = {f"a{i}": " ".join(f"w{j}" for j in range(6 + i)) for i in range(3)}
    kernel = Kernel(scripted([{"key": k, "text": t} for k, t in texts.items()]), storage, policy=Policy.RR,
                    slice_tokens=2)

    async def main() -> None:
        await asyncio.gather(*(kernel.generate(f"agent{k}", f"run{k}", ask(k)) for k in texts))

    asyncio.run(main())
    rows = {r.run_id: r for r in storage.rows(SyscallRow)}
    assert set(rows) == {f"run{k}" for k in texts}
    for key, text in texts.items():
        row = rows[f"run{key}"]
        assert row.kind == "generate" and row.error is None
        assert row.created <= row.started <= row.finished
        assert 0 <= row.waiting <= row.turnaround
        assert row.tokens == len(tokenize(text))
    assert sum(r.preemptions for r in rows.values()) == len(storage.rows(SnapshotRow)) > 0


def test_tool_calls_run_while_the_model_is_busy(storage: Storage) -> None:
    long_answer = " ".join(f"w{i}" for i in range(40))
    kernel = Kernel(scripted([{"key": "long", "text": long_answer}], token_delay=0.01), storage,
                    tools=[sleeper(0.05)])
    kernel.open_run("run", "agent", ["nap"])

    async def main() -> None:
        generation = asyncio.create_task(kernel.generate("agent", "run", ask("long")))
        await asyncio.sleep(0.05)  # the model is generating now, and holds the only slot
        assert kernel.scheduler.running == 1
        assert (await kernel.call_tool("agent", "run", "nap", {"label": "x"})).result == "slept x"
        assert not generation.done()  # the tool call finished first
        await generation

    asyncio.run(main())
    tool, generate = sorted(storage.rows(SyscallRow), key=lambda r: r.kind == "generate")
    assert tool.kind == "tool" and tool.finished < generate.finished and tool.waiting < 0.05


def test_a_busy_tool_makes_callers_wait_and_drops_none(storage: Storage) -> None:
    log: list = []
    kernel = Kernel(scripted([]), storage, tools=[sleeper(0.02, log)])
    kernel.open_run("run", "agent", ["nap"])

    async def main() -> list:
        return await asyncio.gather(*(kernel.call_tool("agent", "run", "nap", {"label": str(i)}) for i in range(5)))

    assert [call.result for call in asyncio.run(main())] == [f"slept {i}" for i in range(5)]
    assert [kind for kind, _ in log] == ["in", "out"] * 5  # never two at once: concurrency 1
    waits = sorted(r.waiting for r in storage.rows(SyscallRow))
    assert waits[-1] >= 0.06  # the last caller waited for the four before it
    assert len(storage.rows(ToolCallRow)) == 5


def test_tool_arguments_are_checked_and_timeouts_enforced(storage: Storage) -> None:
    slow = sleeper(0.5)
    slow.timeout = 0.05
    kernel = Kernel(scripted([]), storage, tools=[slow])
    kernel.open_run("run", "agent", ["nap"])
    with pytest.raises(BadArguments, match="label"):
        asyncio.run(kernel.call_tool("agent", "run", "nap", {"lable": "x"}))
    with pytest.raises(ToolError, match=r"timeout of 0\.05 s"):
        asyncio.run(kernel.call_tool("agent", "run", "nap", {"label": "x"}))
    errors = [r.error for r in storage.rows(ToolCallRow)]
    assert len(errors) == 2 and all(errors)


def test_a_tool_not_listed_is_denied_and_audited(storage: Storage) -> None:
    kernel = Kernel(scripted([]), storage, tools=[sleeper(0)])
    kernel.open_run("run", "agent", ["calculator"])
    with pytest.raises(AccessDenied, match="may not call tool 'nap'"):
        asyncio.run(kernel.call_tool("agent", "run", "nap", {"label": "x"}))
    (audit,) = storage.rows(AuditRow)
    assert (audit.agent, audit.action, audit.target, audit.allowed) == ("agent", "call_tool", "nap", False)
    assert not storage.rows(ToolCallRow)  # the tool never ran


def test_memory_is_bounded_evicts_to_storage_and_is_private(storage: Storage) -> None:
    kernel = Kernel(scripted([]), storage, memory_capacity=2,
                    groups={"auditors": Group(members=frozenset({"auditor"}), read_agents=frozenset({"planner"}))})

    async def main() -> None:
        for i, text in enumerate(["flight to Austin booked", "hotel Driskill chosen", "dinner at Franklin", "taxi"]):
            await kernel.remember("planner", "run1", ("assistant", text))
            assert len(kernel.memory.recent("run1")) == [1, 2, 1, 2][i]  # full: the older half goes
        found = await kernel.recall("planner", "run2", "Austin flight")
        assert [m.content for m in found] == ["flight to Austin booked"]
        assert await kernel.recall("planner", "run2", "taxi") == []  # still short-term
        kernel.memory.end_run("run1")
        assert [m.content for m in await kernel.recall("planner", "run2", "taxi")] == ["taxi"]
        with pytest.raises(AccessDenied, match="memory of agent 'planner'"):
            await kernel.recall("intruder", "run3", "Austin", owners=["planner"])
        found = await kernel.recall("auditor", "run4", "Driskill", owners=["planner"])
        assert [m.content for m in found] == ["hotel Driskill chosen"]

    asyncio.run(main())
    (denied,) = storage.rows(AuditRow)
    assert (denied.agent, denied.action, denied.target) == ("intruder", "read_memory", "planner")
    kinds = [r.kind for r in storage.rows(SyscallRow)]
    assert kinds == ["memory"] * len(kinds) and len(kinds) == 9


def test_agent_storage_is_kept_across_runs_and_private(storage: Storage) -> None:
    kernel = Kernel(scripted([]), storage,
                    groups={"ops": Group(members=frozenset({"ops"}), read_agents=frozenset({ANY}))})

    async def main() -> None:
        await kernel.store("planner", "run1", "visited", ["Austin", "Dallas"])
        await kernel.store("planner", "run1", "visited", ["Austin", "Dallas", "Houston"])
        assert await kernel.load("planner", "run2", "visited") == ["Austin", "Dallas", "Houston"]
        assert await kernel.load("planner", "run2", "nothing") is None
        with pytest.raises(AccessDenied, match="storage of agent 'planner'"):
            await kernel.load("intruder", "run3", "visited", owner="planner")
        assert await kernel.load("ops", "run4", "visited", owner="planner") == ["Austin", "Dallas", "Houston"]

    asyncio.run(main())
    assert [(a.agent, a.action) for a in storage.rows(AuditRow)] == [("intruder", "read_storage")]
    rows = storage.rows(SyscallRow)
    assert {r.kind for r in rows} == {"storage"} and len(rows) == 6
    assert [r.error is not None for r in rows].count(True) == 1


def test_choose_holds_any_backend_to_the_labels(storage: Storage) -> None:
    kernel = Kernel(scripted([{"key": "a", "text": "state"}, {"key": "b", "text": "maybe"}]), storage)
    messages = [{"role": "user", "content": "state or city?"}]
    assert asyncio.run(kernel.choose("agent", "run", messages, ["city", "state"], key="a")) == "state"
    with pytest.raises(KernelError, match="not one of city, state"):
        asyncio.run(kernel.choose("agent", "run", messages, ["city", "state"], key="b"))
    assert [r.kind for r in storage.rows(SyscallRow)] == ["choose", "choose"]


def test_use_tool_sends_bad_arguments_back_once(storage: Storage) -> None:
    bad = json.dumps({"tool": "nap", "arguments": {"lable": "x"}})
    good = json.dumps({"tool": "nap", "arguments": {"label": "x"}})
    kernel = Kernel(scripted([{"key": "t", "text": bad}, {"key": "t", "text": good}]), storage, tools=[sleeper(0)])
    kernel.open_run("run", "agent", ["nap"])
    messages = [{"role": "user", "content": "take a nap"}]
    call = asyncio.run(kernel.use_tool("agent", "run", messages, ["nap"], key="t"))
    assert (call.tool, call.arguments, call.result) == ("nap", {"label": "x"}, "slept x")
    kernel = Kernel(scripted([{"key": "t", "text": bad}, {"key": "t", "text": bad}]), storage, tools=[sleeper(0)])
    kernel.open_run("run", "agent", ["nap"])
    with pytest.raises(ToolError, match="still failed"):
        asyncio.run(kernel.use_tool("agent", "run", messages, ["nap"], key="t"))


def test_storage_defaults_wal_and_schema_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWRUN_DB", raising=False)
    assert default_url() == f"sqlite:///{tmp_path / '.flowrun' / 'flowrun.db'}"
    storage = Storage()
    assert (tmp_path / ".flowrun" / "flowrun.db").is_file()
    assert sqlite3.connect(tmp_path / ".flowrun" / "flowrun.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with storage.engine.begin() as db:
        db.execute(Meta.__table__.update().values(value="99"))
    with pytest.raises(StorageError, match="newer than this flowrun"):
        Storage()


def test_a_version_1_database_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)  # the tables as schema version 1 made them, with a run in them
    old.executescript("""
        CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE runs (id VARCHAR PRIMARY KEY, agent VARCHAR, flow VARCHAR, status VARCHAR, inputs JSON,
                           answer JSON, error VARCHAR, created FLOAT, finished FLOAT);
        INSERT INTO runs VALUES ('r1', 'A', 'a.yaml', 'finished', '{}', '"42"', NULL, 1.0, 2.0);
        CREATE TABLE steps (id INTEGER PRIMARY KEY, run_id VARCHAR, step VARCHAR, visit INTEGER, kind VARCHAR,
                            prompt JSON, output JSON, branch VARCHAR, tokens INTEGER, started FLOAT, finished FLOAT);
    """)
    old.close()
    storage = Storage(f"sqlite:///{path}")
    (run,) = storage.rows(RunRow)
    assert (run.id, run.answer, run.batch) == ("r1", "42", None)
    storage.record_step(StepRecord("r1", "s", 1, "process", None, None, None, [{"tool": "t"}], 0, 1.0, 2.0))
    assert storage.of_runs(StepRow, ["r1"])[0].tools == [{"tool": "t"}]
    assert storage.rows(Meta)[0].value == str(SCHEMA_VERSION)


def test_tool_calls_stored_before_schema_6_get_a_key_a_step_can_refer_to(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    storage = Storage(f"sqlite:///{path}")
    storage.record_tool_call(ToolCallRow(run_id="r1", agent="A", tool="t", arguments={}, result=42, started=1.0,
                                         finished=2.0))
    storage.close()
    with sqlite3.connect(path) as old:
        old.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    (call,) = Storage(f"sqlite:///{path}").rows(ToolCallRow)
    assert call.syscall == f"row-{call.id}" and call.result == 42


def test_tool_code_is_loaded_from_a_file_beside_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "adder.py").write_text("def add(a, b):\n    return a + b\n")
    assert load_entry("adder.py:add", tmp_path)(a=2, b=3) == 5
    assert load_entry("json:dumps", tmp_path)([1]) == "[1]"
    with pytest.raises(ToolError, match="does not exist"):
        load_entry("missing.py:f", tmp_path)
    with pytest.raises(ToolError, match="no function"):
        load_entry("adder.py:subtract", tmp_path)


def recording(responses: list[dict], **options) -> tuple[ScriptedBackend, list[Request]]:
    backend = scripted(responses, **options)
    seen: list[Request] = []
    original = backend.generate

    async def generate(request, on_token, resume=None):
        seen.append(request)
        return await original(request, on_token, resume)

    backend.generate = generate
    return backend, seen


SYSTEM = {"role": "system", "content": "be brief now"}  # 3 tokens
TASK = {"role": "user", "content": "do the task"}  # 3 tokens
PROGRESS = [{"role": "assistant", "content": f"p{n} a b c d"} for n in range(6)]  # 5 tokens each


def test_truncate_drops_the_oldest_progress_to_fit_the_window(storage: Storage) -> None:
    backend, seen = recording([{"key": "task", "text": "done"}], context=30)
    kernel = Kernel(backend, storage)
    request = Request([SYSTEM, *PROGRESS, TASK], options={"max_tokens": 5}, key="task")  # 36 tokens, room 25
    asyncio.run(kernel.generate("agent", "run", request))
    assert seen[0].messages == [SYSTEM, *PROGRESS[3:], TASK]  # 3 + 15 + 3 = 21 fits; one more would be 26


def test_summarize_replaces_the_oldest_progress_with_a_summary(storage: Storage) -> None:
    backend, seen = recording([{"key": "summarize", "text": "S one two"}, {"key": "task", "text": "done"}],
                              context=30)
    kernel = Kernel(backend, storage)
    request = Request([SYSTEM, *PROGRESS, TASK], options={"max_tokens": 5}, key="task")
    asyncio.run(kernel.generate("agent", "run", request, window=WindowPolicy.SUMMARIZE))
    summary_request, task_request = seen
    # p0-p2 were dropped; in so small a window the summary request keeps the most recent of them, and fits
    assert summary_request.messages[-1]["content"].endswith("p2 a b c d")
    assert backend.count_tokens(summary_request.messages) <= 30 - summary_request.options["max_tokens"]
    summary = {"role": "user", "content": "Summary of the earlier progress: S one two"}  # 8 tokens
    assert task_request.messages == [SYSTEM, summary, *PROGRESS[4:], TASK]  # 3 + 8 + 10 + 3 = 24 fits
    assert len(storage.rows(SyscallRow)) == 2


def test_a_prompt_that_cannot_fit_is_refused_not_sent(storage: Storage) -> None:
    backend, seen = recording([{"key": "task", "text": "done"}], context=30)
    long_task = {"role": "user", "content": " ".join(["word"] * 40)}
    with pytest.raises(ContextOverflow, match="shorten"):
        asyncio.run(Kernel(backend, storage).generate("agent", "run", Request([SYSTEM, *PROGRESS, long_task])))
    assert seen == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 12), min_size=1, max_size=10), window=st.integers(8, 60),
       answer=st.integers(1, 6))
def test_no_prompt_sent_is_longer_than_the_window_allows(storage: Storage, sizes: list[int], window: int,
                                                          answer: int) -> None:
    backend, seen = recording([{"text": "ok"}] * 3, context=window)
    messages = [{"role": "user", "content": " ".join(["w"] * n)} for n in sizes]
    try:
        asyncio.run(Kernel(backend, storage).generate("a", "r", Request(messages, options={"max_tokens": answer})))
    except ContextOverflow:
        assert backend.count_tokens(messages[:1] + messages[-1:]) > window - answer
        return
    assert backend.count_tokens(seen[0].messages) <= window - answer
    assert seen[0].messages[-1] == messages[-1]


def test_storage_has_every_table(storage: Storage) -> None:
    from sqlalchemy import inspect

    assert set(inspect(storage.engine).get_table_names()) >= {
        "meta", "runs", "steps", "syscalls", "snapshots", "memories", "agent_data", "tool_calls", "audit",
        "memories_fts"}


def test_a_manifest_and_its_code_become_a_tool_the_kernel_calls(storage: Storage, tmp_path: Path) -> None:
    from engine.flow.manifest import load_tools
    from engine.kernel.tools import tool_from_manifest

    (tmp_path / "greeter.py").write_text("def greet(name):\n    return f'hello {name}'\n")
    (tmp_path / "greet.tool.yaml").write_text(
        "name: greet\ndescription: Greets.\nentry: greeter.py:greet\nconcurrency: 2\n"
        "parameters: {type: object, properties: {name: {type: string}}, required: [name]}\n")
    manifests = load_tools([tmp_path], bundled=False)
    assert not manifests.diagnostics
    kernel = Kernel(scripted([]), storage, tools=[tool_from_manifest(manifests.tools["greet"])])
    kernel.open_run("run", "agent", ["greet"])
    assert asyncio.run(kernel.call_tool("agent", "run", "greet", {"name": "Ada"})).result == "hello Ada"


def test_json_values_read_back_exactly_on_sqlite(tmp_path: Path) -> None:
    values = [20.0, 2 ** 70, 12345678901234567890, -0.0, 1.5e300, "5", "20.0", True, None, {"a": 20.0}, [1.0]]
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    for n, value in enumerate(values):
        storage.record_step(StepRecord("r1", f"s{n}", 1, "process", None, value, None, None, 0, 1.0, 2.0))
    got = [step.output for step in storage.of_runs(StepRow, ["r1"])]
    assert got == values and [type(v) for v in got] == [type(v) for v in values]  # 20.0 was read back as 20
    storage.close()
    with sqlite3.connect(tmp_path / "runs.db") as db:  # as an older flowrun stored it: SQLite made it an INTEGER
        db.execute("UPDATE steps SET output = 20 WHERE step = 's0'")
    assert Storage(f"sqlite:///{tmp_path / 'runs.db'}").of_runs(StepRow, ["r1"])[0].output == 20


def test_time_to_first_token_runs_from_the_try_that_gave_it_not_from_one_the_model_failed(storage: Storage) -> None:
    """A model unavailable at first is tried again after a backoff: the wait for the first token is counted from
    the try that got it (the backoff is the call's, not the model's)."""
    from engine.events import SyscallEnded
    from engine.llm.base import ModelUnavailable

    class UnavailableOnce(ScriptedBackend):
        failed = False

        async def generate(self, request, on_token, resume=None):
            if not self.failed:
                self.failed = True
                raise ModelUnavailable("restarting")
            return await super().generate(request, on_token, resume)

    backoff = 0.3
    kernel = Kernel(UnavailableOnce.from_responses([{"key": "a", "text": "one two three"}]), storage)
    kernel.sleep = lambda _: asyncio.sleep(backoff)
    ended: list[SyscallEnded] = []
    kernel.events.listeners.append(lambda event: isinstance(event, SyscallEnded) and ended.append(event))
    kernel.open_run("r", "agent")
    asyncio.run(kernel.generate("agent", "r", ask("a")))
    [call] = storage.rows(SyscallRow)
    assert len(call.slices) == 2 and ended[0].first_token is not None
    assert 0 <= ended[0].first_token < backoff <= call.first_token - call.started
