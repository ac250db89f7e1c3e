"""Issue 11, hardening (tools): hostile or careless tool calls are bounded, confined and stoppable.

Each test here failed on the code before its fix (see the report of branch h11-tools).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import jsonschema_rs
import pytest

from engine.flow.manifest import load_tools
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage, ToolCallRow
from engine.kernel.tools import ToolError, tool_from_manifest
from engine.llm.ollama import OllamaBackend
from engine.llm.scripted import ScriptedBackend
from tests.fake_ollama import FakeOllama

BUNDLED = load_tools([]).tools


def kernel_with(tmp_path: Path, backend, *names: str) -> Kernel:
    kernel = Kernel(backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"),
                    tools=[tool_from_manifest(BUNDLED[name]) for name in names], workspaces=tmp_path / "workspaces")
    kernel.access.allow_tools("agent", list(names))
    return kernel


def call(kernel: Kernel, name: str, **arguments):
    return asyncio.run(kernel.call_tool("agent", "run", name, arguments))


# Item 4: a `tool:` step runs only its tool.

WRITE = json.dumps({"tool": "write_file", "arguments": {"path": "planted.txt", "content": "x"}})
READ = json.dumps({"tool": "read_file", "arguments": {"path": "notes.txt"}})
ASK = [{"role": "user", "content": "read the notes"}]


def test_a_tool_step_never_runs_another_tool_the_model_names(tmp_path: Path) -> None:
    answers = ScriptedBackend.from_responses([{"key": "read", "text": WRITE}, {"key": "read", "text": READ}])
    kernel = kernel_with(tmp_path, answers, "read_file", "write_file")  # the agent may use both; the step one
    (tmp_path / "workspaces" / "run").mkdir(parents=True)
    (tmp_path / "workspaces" / "run" / "notes.txt").write_text("hello")
    used = asyncio.run(kernel.use_tool("agent", "run", ASK, ["read_file"], key="read"))
    assert (used.tool, used.result["content"]) == ("read_file", "hello")
    assert not (tmp_path / "workspaces" / "run" / "planted.txt").exists()
    assert [r.tool for r in kernel.storage.rows(ToolCallRow)] == ["read_file"]

    answers = ScriptedBackend.from_responses([{"key": "read", "text": WRITE, "times": 2}])
    kernel = kernel_with(tmp_path, answers, "read_file", "write_file")
    with pytest.raises(ToolError, match="'write_file' is not a tool this step may use; use read_file"):
        asyncio.run(kernel.use_tool("agent", "run", ASK, ["read_file"], key="read"))
    assert not (tmp_path / "workspaces" / "run" / "planted.txt").exists()


def test_the_schema_a_backend_constrains_to_names_only_the_steps_tools(tmp_path: Path) -> None:
    server = FakeOllama({"writer": WRITE})
    try:
        kernel = kernel_with(tmp_path, OllamaBackend("writer", server=server.url), "read_file", "write_file")
        with pytest.raises(ToolError):
            asyncio.run(kernel.use_tool("agent", "run", ASK, ["read_file"], key="read"))
        sent = jsonschema_rs.validator_for(server.requests[0]["format"])  # what Ollama's decoder is held to
    finally:
        server.close()
    assert sent.is_valid(json.loads(READ)) and not sent.is_valid(json.loads(WRITE))
    assert not (tmp_path / "workspaces" / "run" / "planted.txt").exists()


# Item 7: sql_query calls only plain SQL functions; write_file refuses a hard link.

def test_sql_query_refuses_functions_off_its_list(tmp_path: Path) -> None:
    kernel = kernel_with(tmp_path, ScriptedBackend.from_responses([]), "sql_query")
    for query in ("SELECT fts3_tokenizer('simple')", "SELECT load_extension('x')", "SELECT sqlite_version()"):
        with pytest.raises(ToolError, match="not authorized to use function"):
            call(kernel, "sql_query", query=query)
    found = call(kernel, "sql_query", query="SELECT upper(name), count(*), round(avg(1.5), 1) FROM cities")
    assert found["rows"][0][1] == 30


def test_write_file_refuses_a_hard_link_to_a_file_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    folder = tmp_path / "workspaces" / "run"
    folder.mkdir(parents=True)
    os.link(outside, folder / "planted.txt")
    kernel = kernel_with(tmp_path, ScriptedBackend.from_responses([]), "write_file")
    with pytest.raises(ToolError, match="another hard link"):
        call(kernel, "write_file", path="planted.txt", content="overwritten")
    assert outside.read_text() == "keep me"
    assert call(kernel, "write_file", path="own.txt", content="mine")["bytes"] == 4
    assert call(kernel, "write_file", path="own.txt", content="again")["bytes"] == 5  # its own file: replaced
    assert (folder / "own.txt").read_text() == "again"


# Item 2 (the bundled tools bound themselves).

def test_the_calculator_refuses_a_huge_power_before_computing_it(tmp_path: Path) -> None:
    kernel = kernel_with(tmp_path, ScriptedBackend.from_responses([]), "calculator")
    started = time.monotonic()
    for expression in ("3999999^3999999", "factorial(1000)^5", "2^999999999999"):
        with pytest.raises(ToolError, match="too large"):
            call(kernel, "calculator", expression=expression)
    assert time.monotonic() - started < 5  # refused, not computed until the timeout
    assert call(kernel, "calculator", expression="2^64")["result"] == 2 ** 64


def test_sql_query_bounds_its_time_and_its_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.sql

    monkeypatch.setattr(tools.sql, "SECONDS", 0.5)
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"took longer than 0\.5 s"):
        tools.sql.sql_query(endless)
    assert time.monotonic() - started < 5
    with pytest.raises(ValueError, match="too big"):
        tools.sql.sql_query("SELECT randomblob(100000000)")
    big = tools.sql.sql_query("SELECT randomblob(300000) FROM cities", max_rows=1000)
    assert big["truncated"] and 0 < len(big["rows"]) < 30
    assert sum(len(row[0]) for row in big["rows"]) <= tools.sql.MAX_BYTES
