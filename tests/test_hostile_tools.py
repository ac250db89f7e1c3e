"""Issue 11, hardening (tools): hostile or careless tool calls are bounded, confined and stoppable.

Each test here fails on the code before these fixes, but test_a_killed_flowrun_leaves_no_tool_code_running: it
holds the worker processes to what the threads before them did by dying with flowrun.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema_rs
import pytest

from engine.flow.manifest import load_tools
from engine.interpreter.runs import steps_of
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage
from engine.kernel.tables import SyscallRow, ToolCallRow
from engine.kernel.tools import ToolError, tool_from_manifest
from engine.llm.base import Request
from engine.llm.ollama import OllamaBackend
from engine.llm.scripted import ScriptedBackend
from tests.conftest import MATH_LOOP_CASSETTE, TWO_STEPS
from tests.fake_ollama import FakeOllama
from tests.test_run_cli import MATH, cli, runs_of

BUNDLED = load_tools([]).tools


def kernel_with(tmp_path: Path, backend, *names: str) -> Kernel:
    kernel = Kernel(backend, Storage(f"sqlite:///{tmp_path / 'runs.db'}"),
                    tools=[tool_from_manifest(BUNDLED[name]) for name in names], workspaces=tmp_path / "workspaces")
    kernel.open_run("run", "agent", names)
    return kernel


def call(kernel: Kernel, name: str, **arguments):
    return asyncio.run(kernel.call_tool("agent", "run", name, arguments)).result


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


# Item 7: sql_query calls only plain SQL functions; read_file and write_file refuse a hard link.

def test_sql_query_refuses_functions_off_its_list(tmp_path: Path) -> None:
    kernel = kernel_with(tmp_path, ScriptedBackend.from_responses([]), "sql_query")
    for query in ("SELECT fts3_tokenizer('simple')", "SELECT load_extension('x')", "SELECT sqlite_version()"):
        with pytest.raises(ToolError, match="not authorized to use function"):
            call(kernel, "sql_query", query=query)
    found = call(kernel, "sql_query", query="SELECT upper(name), count(*), round(avg(1.5), 1) FROM cities")
    assert found["rows"][0][1] == 30


def planted_link(tmp_path: Path, text: str) -> tuple[Path, Path]:
    """A file outside the run's workspace holding `text`, and the workspace, where planted.txt is a hard link to it."""
    outside = tmp_path / "outside.txt"
    outside.write_text(text)
    folder = tmp_path / "workspaces" / "run"
    folder.mkdir(parents=True)
    os.link(outside, folder / "planted.txt")
    return outside, folder


def test_write_file_refuses_a_hard_link_to_a_file_outside(tmp_path: Path) -> None:
    outside, folder = planted_link(tmp_path, "keep me")
    kernel = kernel_with(tmp_path, ScriptedBackend.from_responses([]), "write_file")
    with pytest.raises(ToolError, match="another hard link"):
        call(kernel, "write_file", path="planted.txt", content="overwritten")
    assert outside.read_text() == "keep me"
    assert call(kernel, "write_file", path="own.txt", content="mine")["bytes"] == 4
    assert call(kernel, "write_file", path="own.txt", content="again")["bytes"] == 5  # its own file: replaced
    assert (folder / "own.txt").read_text() == "again"


def test_read_file_refuses_a_hard_link_to_a_file_outside(tmp_path: Path) -> None:
    _, folder = planted_link(tmp_path, "the secret")
    (folder / "own.txt").write_text("mine")
    kernel = kernel_with(tmp_path, ScriptedBackend.from_responses([]), "read_file")
    with pytest.raises(ToolError, match="another hard link") as refused:
        call(kernel, "read_file", path="planted.txt")
    assert "the secret" not in str(refused.value)
    assert call(kernel, "read_file", path="own.txt")["content"] == "mine"


# Item 2 (the bundled tools bound themselves).

def test_the_calculator_refuses_a_huge_power_before_computing_it(tmp_path: Path) -> None:
    kernel = kernel_with(tmp_path, ScriptedBackend.from_responses([]), "calculator")
    started = time.monotonic()
    # units too: hours / s is 3600, and units raised to a huge power would be converted as one
    for expression in ("3999999^3999999", "factorial(1000)^5", "2^999999999999", "(hours / s) ^ 999999999999",
                       "hours ^ 999999999999 / s ^ 999999999999"):
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


# Item 2: a tool past its timeout, or a run interrupted during a tool call, stops the tool and ends promptly.

HANG = """\
name: hang
description: Sleeps for as long as it is asked, while the flag file {flag} exists.
parameters:
  type: object
  properties: {{seconds: {{type: number}}}}
  required: [seconds]
entry: hang.py:hang
timeout: {timeout}
idempotent: false
"""


def hanging_flow(tmp_path: Path, two_steps: Path, timeout: float) -> tuple[list[str], Path]:
    """`flowrun run` arguments for the two-step flow whose tool step calls `hang` for 300 s, and its flag file
    (where a hanging call writes the id of its process)."""
    flag = tmp_path / "hang.flag"
    flag.write_text("")
    tools = tmp_path / "tools"
    (tools / "hang.tool.yaml").write_text(HANG.format(flag=flag, timeout=timeout))
    (tools / "hang.py").write_text(f"import os, pathlib, time\n\ndef hang(seconds):\n"
                                   f"    flag = pathlib.Path({str(flag)!r})\n"
                                   "    if flag.exists():\n        flag.write_text(str(os.getpid()))\n"
                                   "        time.sleep(seconds)\n"
                                   "    return {'slept': seconds}\n")
    two_steps.write_text(TWO_STEPS.replace("tools: [nap]", "tools: [hang]")
                         .replace("    next: done\n", "    tool: hang\n    next: done\n"))
    answers = tmp_path / "answers.yaml"
    answers.write_text("""responses:\n  - {key: work, text: '{"tool": "hang", "arguments": {"seconds": 300}}'}\n"""
                       "  - {key: done, text: all done}\n")
    return ["--tools", str(tools), "--backend", "scripted", "--cassette", str(answers),
            "--db", str(tmp_path / "runs.db")], flag


@pytest.fixture
def flowrun(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts `flowrun ARGS...` processes in tmp_path, each in a process group of its own (as a shell does); any
    still running at the end of the test is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        started.append(subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=tmp_path, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.slow
def test_a_hung_tool_past_its_timeout_ends_the_run(tmp_path: Path, two_steps: Path, flowrun) -> None:
    options, _ = hanging_flow(tmp_path, two_steps, timeout=1)
    process = flowrun("run", str(two_steps), "-i", "topic=x", *options)
    started = calling(process, tmp_path / "runs.db")
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - started < 5, err
    assert process.returncode == 1 and "step work: tool hang took longer than its timeout of 1 s" in err
    (run,) = runs_of(tmp_path / "runs.db")
    assert run.status == "failed" and "timeout of 1 s" in run.error


@pytest.mark.slow
def test_a_batch_of_hung_tools_ends(tmp_path: Path, two_steps: Path, flowrun) -> None:
    options, _ = hanging_flow(tmp_path, two_steps, timeout=1)
    (tmp_path / "answers.yaml").write_text("responses:\n  - {key: work, text: '{\"tool\": \"hang\", \"arguments\": "
                                           "{\"seconds\": 300}}', times: 5}\n")
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"topic": f"t{n}"}) + "\n" for n in range(5)))
    process = flowrun("batch", str(two_steps), "--inputs", str(inputs), "--concurrency", "3", *options)
    started = calling(process, tmp_path / "runs.db")
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - started < 10, err
    assert process.returncode == 1 and "0 of 5 runs finished" in err
    runs = runs_of(tmp_path / "runs.db")
    assert len(runs) == 5 and all(r.status == "failed" and "timeout of 1 s" in r.error for r in runs)


@pytest.mark.slow
def test_ctrl_c_during_a_hung_tool_ends_the_process_and_the_run_resumes(tmp_path: Path, two_steps: Path,
                                                                          flowrun) -> None:
    options, flag = hanging_flow(tmp_path, two_steps, timeout=600)
    process = flowrun("run", str(two_steps), "-i", "topic=x", *options)
    db = tmp_path / "runs.db"
    calling(process, db)
    time.sleep(1)  # into the tool's sleep
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C does, to flowrun's whole process group
    stopped = time.monotonic()
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - stopped < 2, err
    assert process.returncode == 130 and "Traceback" not in err
    (run,) = runs_of(db)
    assert run.status == "interrupted"
    flag.unlink()  # the tool answers at once now
    resumed = flowrun("runs", "resume", run.id, "--rerun-unrecorded", *options)
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0 and "all done" in out, err
    assert runs_of(db)[0].status == "finished"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_a_killed_flowrun_leaves_no_tool_code_running(tmp_path: Path, two_steps: Path, flowrun) -> None:
    options, flag = hanging_flow(tmp_path, two_steps, timeout=600)
    process = flowrun("run", str(two_steps), "-i", "topic=x", *options)
    calling(process, tmp_path / "runs.db")
    deadline = time.monotonic() + 60
    while not flag.read_text():
        assert time.monotonic() < deadline, "the tool did not start"
        time.sleep(0.05)
    worker = int(flag.read_text())
    process.kill()  # -9: nothing of flowrun runs on to stop its tools
    process.communicate()
    deadline = time.monotonic() + 5
    while running(worker):
        assert time.monotonic() < deadline, f"the tool's process {worker} runs on"
        time.sleep(0.05)


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie, ended and not yet reaped, has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def calling(process: subprocess.Popen[str], db: Path) -> float:
    """When `process` (a flowrun writing database `db`) starts its first tool call, which is stored as started
    just before it runs: the time, measured from there and not from the process's start, which takes seconds
    on a loaded machine."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with sqlite3.connect(db, timeout=5) as connection:
                if connection.execute("SELECT count(*) FROM tool_calls WHERE pending").fetchone()[0]:
                    return time.monotonic()
        except sqlite3.OperationalError:  # the database or its tables are not made yet
            pass
        time.sleep(0.02)
    raise AssertionError(f"no tool call started: {process.communicate()}")


def test_a_tool_that_ends_its_process_fails_its_call_and_the_next_call_works(tmp_path: Path) -> None:
    (tmp_path / "quit.py").write_text("import os\n\ndef quit(code):\n    if code:\n        os._exit(code)\n"
                                      "    return 'still here'\n")
    (tmp_path / "quit.tool.yaml").write_text("name: quit\ndescription: Ends its process.\nentry: quit.py:quit\n"
                                             "parameters: {type: object, properties: {code: {type: integer}}}\n")
    manifests = load_tools([tmp_path], bundled=False)
    kernel = Kernel(ScriptedBackend.from_responses([]), Storage(f"sqlite:///{tmp_path / 'runs.db'}"),
                    tools=[tool_from_manifest(manifests.tools["quit"])])
    kernel.open_run("run", "agent", ["quit"])
    with pytest.raises(ToolError, match=r"tool quit failed: its worker process ended \(exit status 3\)"):
        call(kernel, "quit", code=3)
    assert call(kernel, "quit", code=0) == "still here"


def test_tool_code_that_hangs_while_it_loads_fails_the_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.kernel.workers

    monkeypatch.setattr(engine.kernel.workers, "START_TIMEOUT", 1)
    (tmp_path / "stuck.py").write_text("import time\n\ntime.sleep(300)\n\ndef stuck():\n    return 1\n")
    (tmp_path / "stuck.tool.yaml").write_text("name: stuck\ndescription: Never loads.\nentry: stuck.py:stuck\n"
                                              "parameters: {type: object}\n")
    kernel = Kernel(ScriptedBackend.from_responses([]), Storage(f"sqlite:///{tmp_path / 'runs.db'}"),
                    tools=[tool_from_manifest(load_tools([tmp_path], bundled=False).tools["stuck"])])
    kernel.open_run("run", "agent", ["stuck"])
    started = time.monotonic()
    with pytest.raises(ToolError, match="tool stuck failed: its worker process did not start and load the tools' "
                                        "code within 1 s"):
        call(kernel, "stuck")
    assert time.monotonic() - started < 10


# Item 5: results and answers are bounded before they are stored.

BIG = """\
name: big
description: Returns a lot.
parameters: {type: object, properties: {size: {type: integer}, blob: {type: boolean}}}
entry: big.py:big
"""


def big_tool(tmp_path: Path) -> Path:
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    (tools / "big.tool.yaml").write_text(BIG)
    (tools / "big.py").write_text("def big(size, blob=False):\n    return bytes(size) if blob else 'x' * size\n")
    return tools


def test_a_huge_tool_result_is_cut_before_it_is_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRUN_MAX_RESULT", "100000")
    manifests = load_tools([big_tool(tmp_path)], bundled=False)
    kernel = Kernel(ScriptedBackend.from_responses([]), Storage(f"sqlite:///{tmp_path / 'runs.db'}"),
                    tools=[tool_from_manifest(manifests.tools["big"])])
    kernel.open_run("run", "agent", ["big"])
    small = call(kernel, "big", size=1000)
    assert small == "x" * 1000  # kept whole
    text = call(kernel, "big", size=5_000_000)
    blob = call(kernel, "big", size=5_000_000, blob=True)  # not JSON: its repr, 4 characters a byte
    assert text.startswith("x" * 1000) and text.endswith("[cut by flowrun: 5000000 bytes, more than "
                                                         "FLOWRUN_MAX_RESULT (100000)]")
    assert blob.startswith("b'\\x00\\x00") and "[cut by flowrun: 20000003 bytes" in blob
    kernel.storage.flush()
    stored = [r.result for r in kernel.storage.rows(ToolCallRow)]
    assert stored == [small, text, blob] and all(len(r.encode()) <= 100_000 for r in stored)


def test_a_huge_model_answer_is_cut_before_it_is_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRUN_MAX_RESULT", "1000")
    answer = " ".join(f"w{n}" for n in range(5000))
    kernel = Kernel(ScriptedBackend.from_responses([{"key": "k", "text": answer}]),
                    Storage(f"sqlite:///{tmp_path / 'runs.db'}"))
    result = asyncio.run(kernel.generate("agent", "run", Request([{"role": "user", "content": "go"}], key="k")))
    assert result.text.startswith(answer[:900]) and f"[cut by flowrun: {len(answer)} bytes" in result.text
    assert len(result.text.encode()) == 1000
    kernel.storage.flush()
    (row,) = kernel.storage.rows(SyscallRow)
    assert row.text == result.text


@pytest.mark.slow
def test_a_run_whose_tool_returns_200_mb_stores_a_small_database(tmp_path: Path, two_steps: Path, flowrun) -> None:
    tools = big_tool(tmp_path)
    two_steps.write_text(TWO_STEPS.replace("tools: [nap]", "tools: [big]")
                         .replace("    next: done\n", "    tool: big\n    next: done\n"))
    answers = tmp_path / "answers.yaml"
    answers.write_text("""responses:\n  - {key: work, text: '{"tool": "big", "arguments": {"size": 200000000}}'}\n"""
                       "  - {key: done, text: all done}\n")
    process = flowrun("run", str(two_steps), "-i", "topic=x", "--tools", str(tools), "--backend", "scripted",
                      "--cassette", str(answers), "--db", str(tmp_path / "runs.db"))
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0 and "all done" in out, err
    size = sum(f.stat().st_size for f in tmp_path.glob("runs.db*"))
    assert size < 10_000_000, f"{size} bytes stored"
    (step,) = [s for s in steps_of(Storage(f"sqlite:///{tmp_path / 'runs.db'}"), runs_of(tmp_path / "runs.db")[0].id)
               if s.step == "work"]
    assert step.output.endswith("[cut by flowrun: 200000000 bytes, more than FLOWRUN_MAX_RESULT (1000000)]")


@pytest.mark.parametrize("restated", [False, True], ids=["output", "restated-by-output_schema"])
def test_a_tool_steps_result_is_stored_once(restated: bool, tmp_path: Path, two_steps: Path) -> None:
    tools = big_tool(tmp_path)
    schema = "    output_schema: {type: object, properties: {n: {type: integer}}}\n" if restated else ""
    two_steps.write_text(TWO_STEPS.replace("tools: [nap]", "tools: [big]")
                         .replace("    next: done\n", f"    tool: big\n{schema}    next: done\n"))
    answers = tmp_path / "answers.yaml"
    answers.write_text("""responses:\n  - {key: work, text: '{"tool": "big", "arguments": {"size": 3000000}}'}\n"""
                       + ("""  - {key: work, text: '{"n": 1}'}\n""" if restated else "")
                       + "  - {key: done, text: all done}\n")
    db = tmp_path / "runs.db"
    code, out, err = cli("run", str(two_steps), "-i", "topic=x", "--tools", str(tools), "--backend", "scripted",
                         "--cassette", str(answers), "--db", str(db), env={"FLOWRUN_MAX_RESULT": "100000"})
    assert code == 0 and "all done" in out, err
    with sqlite3.connect(db) as con:  # every table, every column: the result's end is in one row only
        dump = "\n".join(con.iterdump())
    assert dump.count("[cut by flowrun: 3000000 bytes") == 1
    (run,) = runs_of(db)
    work = next(s for s in steps_of(Storage(f"sqlite:///{db}"), run.id) if s.step == "work")
    result = work.tools[0]["result"]
    assert result.startswith("x" * 99000) and work.tools[0]["arguments"] == {"size": 3000000}
    if restated:  # the prompt that showed the result is read back as it was sent
        assert work.output == {"n": 1} and f"big returned: {json.dumps(result, ensure_ascii=False)}" in work.ask
        assert work.prompt[-1] == {"role": "user", "content": work.ask}
    else:
        assert work.output == result
    code, out, err = cli("runs", "show", run.id[:8], "--db", str(db))
    assert code == 0 and 'big' in out and '{"size": 3000000} -> xxxx' in out, out + err


def test_a_max_result_that_is_not_a_number_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = cli(*MATH, "--backend", "scripted", "--cassette", str(MATH_LOOP_CASSETTE),
                       "--db", str(tmp_path / "runs.db"), env={"FLOWRUN_MAX_RESULT": "1 MB"})
    assert code == 2 and "FLOWRUN_MAX_RESULT is '1 MB': it must be a whole number" in err and "Traceback" not in err


# Tool code that misbehaves in its worker: children, stdin, SystemExit, huge errors, many calls at once.

MISBEHAVING = """\
import os, subprocess, sys, time

def spawn(pidfile):
    child = subprocess.Popen(["sleep", "30"])
    with open(pidfile, "w") as file:
        file.write(str(child.pid))
    time.sleep(100)

def read_stdin():
    return sys.stdin.readline()

def bye():
    raise SystemExit("bye")

def shout():
    raise ValueError("x" * 10_000_000)

def nap(seconds):
    time.sleep(seconds)
    return seconds
"""


def misbehaving(tmp_path: Path, timeout: float = 5, concurrency: int = 1, extra: str = "") -> Kernel:
    (tmp_path / "hostile.py").write_text(MISBEHAVING + extra)
    names = ["spawn", "read_stdin", "bye", "shout", "nap"]
    for name in names:
        (tmp_path / f"{name}.tool.yaml").write_text(
            f"name: {name}\ndescription: Misbehaves.\nentry: hostile.py:{name}\nparameters: {{type: object}}\n"
            f"timeout: {timeout}\nconcurrency: {concurrency}\n")
    manifests = load_tools([tmp_path], bundled=False)
    kernel = Kernel(ScriptedBackend.from_responses([]), Storage(f"sqlite:///{tmp_path / 'runs.db'}"),
                    tools=[tool_from_manifest(manifests.tools[name]) for name in names])
    kernel.open_run("run", "agent", names)
    return kernel


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_what_a_tool_started_ends_with_its_timed_out_call(tmp_path: Path) -> None:
    kernel = misbehaving(tmp_path, timeout=1)
    pidfile = tmp_path / "child.pid"
    with pytest.raises(ToolError, match="took longer than its timeout of 1 s"):
        call(kernel, "spawn", pidfile=str(pidfile))
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(child), "the tool's child outlived its call"


def test_a_tool_reading_stdin_reads_nothing_and_takes_no_call(tmp_path: Path) -> None:
    kernel = misbehaving(tmp_path, timeout=5)
    started = time.monotonic()
    assert call(kernel, "read_stdin") == ""
    assert call(kernel, "nap", seconds=0) == 0  # the next call reached the worker whole
    assert time.monotonic() - started < 5


def test_system_exit_fails_the_call_not_the_worker_nor_the_other_tools(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    quits = "\nif 'FLOWRUN_QUIT' in os.environ:\n    sys.exit(2)\n"  # as a script's argparse does
    kernel = misbehaving(tmp_path, extra=quits)
    with pytest.raises(ToolError, match="tool bye failed: SystemExit: bye"):
        call(kernel, "bye")
    assert call(kernel, "nap", seconds=0) == 0
    monkeypatch.setenv("FLOWRUN_QUIT", "1")  # now the code of the tools exits while a new worker loads it
    (tmp_path / "again").mkdir()
    kernel = misbehaving(tmp_path / "again", extra=quits)
    with pytest.raises(ToolError, match="loading it raised SystemExit"):
        call(kernel, "nap", seconds=0)


def test_a_huge_error_message_is_cut(tmp_path: Path) -> None:
    kernel = misbehaving(tmp_path)
    with pytest.raises(ToolError) as failed:
        call(kernel, "shout")
    assert len(str(failed.value)) <= 4_000 and "cut by flowrun" in str(failed.value)
    kernel.storage.flush()
    (row,) = kernel.storage.rows(ToolCallRow)
    assert len(row.error) <= 4_000


def test_calls_in_flight_past_the_default_thread_pool_do_not_time_out(tmp_path: Path) -> None:
    kernel = misbehaving(tmp_path, timeout=5, concurrency=16)  # asyncio's default pool: 6 threads on 2 cores

    async def calls() -> list[object]:
        return await asyncio.gather(*(kernel.call_tool("agent", "run", "nap", {"seconds": 2}) for _ in range(16)),
                                    return_exceptions=True)

    results = [getattr(r, "result", r) for r in asyncio.run(calls())]
    assert results == [2] * 16, [r for r in results if r != 2][:1]
