"""MCP servers as tool sources, against real servers from PyPI that nobody here wrote: the reference time server
(mcp-server-time) and fetch server (mcp-server-fetch, pointed at pages on loopback), each started through a wrapper
script that notes every start (its pid), so that a test can tell whether a server was started, and kill it.

The listing `flowrun tools refresh` takes makes validation offline; a flow calls the server's tools through the
kernel (checked against its inputSchema first, recorded); replay needs no server; a server that dies in a call, or a
call past its timeout, is a tool error, and the next call starts the server again. The streamable HTTP transport is
tested against a server built on the SDK's own MCPServer, run as a process of its own.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.flow.manifest import load_tools
from engine.json_schema import compile_schema
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage
from engine.kernel.tools import BadArguments, Tool, ToolError, ToolTimeout, tool_from_manifest
from engine.llm.scripted import ScriptedBackend
from tests.conftest import ROOT

BIN = Path(sys.executable).parent
CLOCK = """\
flowrun: 1
name: Clock
inputs: {zone: {type: string}}
tools: [get_current_time, convert_time]
steps:
  now: {kind: process, tool: get_current_time, arguments: {timezone: "{{ inputs.zone }}"}, next: convert}
  convert:
    kind: process
    tool: convert_time
    arguments: {source_timezone: UTC, time: "12:00", target_timezone: "{{ inputs.zone }}"}
    next: done
  done: {kind: terminal, output: "{{ steps.now.output.timezone }} {{ steps.convert.output.target.datetime[11:16] }}"}
"""


def server(folder: Path, name: str, program: str, *args: str, tools: list[str], **fields: Any) -> Path:
    """A manifest `name`.mcp.yaml in `folder` for the server `program` starts, through a wrapper that appends its
    pid to `name`.starts at each start; the manifest's path."""
    wrapper = folder / f"{name}-server"
    wrapper.write_text(f'#!/bin/sh\necho $$ >> "{folder / name}.starts"\nexec "{BIN / program}" "$@"\n')
    wrapper.chmod(0o755)
    manifest = folder / f"{name}.mcp.yaml"
    manifest.write_text(json.dumps({"name": name, "command": [str(wrapper), *args], "tools": tools, **fields}))
    return manifest


def starts(folder: Path, name: str) -> list[int]:
    """The pids of the starts of server `name` so far."""
    noted = folder / f"{name}.starts"
    return [int(line) for line in noted.read_text().split()] if noted.exists() else []


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def clock(tmp_path: Path) -> Path:
    """A folder with the time server's manifest (refreshed) and a flow calling both of its tools."""
    tools = tmp_path / "tools"
    tools.mkdir()
    server(tools, "time", "mcp-server-time", "--local-timezone", "UTC", tools=["get_current_time", "convert_time"])
    assert cli("tools", "refresh", str(tools)).exit_code == 0
    (tmp_path / "clock.yaml").write_text(CLOCK)
    return tmp_path


def test_refresh_lists_the_servers_tools_and_validation_then_needs_no_server(tmp_path: Path) -> None:
    manifest = server(tmp_path, "time", "mcp-server-time", tools=["get_current_time", "convert_time"])
    (tmp_path / "clock.yaml").write_text(CLOCK)

    unlisted = cli("validate", str(tmp_path / "clock.yaml"), "--tools", str(manifest))
    assert unlisted.exit_code == 1
    assert f"FR206 mcp-listing: no listing of server time's tools beside this manifest (time.mcp-tools.json): " \
           f"run `flowrun tools refresh {manifest}`" in unlisted.output

    refreshed = cli("tools", "refresh", str(tmp_path))
    assert refreshed.exit_code == 0, refreshed.output
    assert refreshed.output == f"{tmp_path / 'time.mcp-tools.json'}: 2 tools: get_current_time, convert_time\n"
    listing = json.loads((tmp_path / "time.mcp-tools.json").read_text())
    assert listing["source"] == {"command": [str(tmp_path / "time-server")]}
    assert listing["tools"][0]["inputSchema"]["required"] == ["timezone"]
    assert len(starts(tmp_path, "time")) == 1

    (tmp_path / "time-server").unlink()  # the server cannot start any more: validation does not need it
    valid = cli("validate", str(tmp_path / "clock.yaml"), "--tools", str(tmp_path))
    assert valid.exit_code == 0, valid.output + valid.stderr
    listed = cli("tools", "list", "--tools", str(tmp_path)).output
    assert f"get_current_time       Get current time in a specific timezone\n{'':<23}server: time " \
           f"({tmp_path / 'time-server'}) · provider: MCP server time · variables: none · hosts: the server's own\n" \
           in listed
    assert len(starts(tmp_path, "time")) == 1

    # what a flow's examples give a tool is checked against the inputSchema of the listing
    (tmp_path / "example.yaml").write_text(CLOCK.replace(
        'arguments: {timezone: "{{ inputs.zone }}"}',
        'instruction: "The time in {{ inputs.zone }}", examples: [{input: Paris, answer: {zone: Europe/Paris}}]'))
    example = cli("validate", str(tmp_path / "example.yaml"), "--tools", str(tmp_path))
    assert "FR108 example-answer: example 1 of step 'now': the answer does not match the arguments of " \
           "get_current_time: answer: \"timezone\" is a required property" in example.output, example.output

    manifest.write_text(manifest.read_text().replace('"get_current_time"', '"get_curent_time"'))
    misnamed = cli("validate", str(tmp_path / "clock.yaml"), "--tools", str(tmp_path))
    assert "FR206 mcp-listing: server time lists no tool 'get_curent_time' (did you mean 'get_current_time'?) " \
           "(it lists: get_current_time, convert_time)" in misnamed.output

    manifest.write_text(json.dumps({"name": "time", "command": ["mcp-server-time", "--local-timezone", "UTC"],
                                    "tools": ["get_current_time"]}))
    moved = cli("validate", str(manifest))
    assert f"FR206 mcp-listing: time.mcp-tools.json lists the tools of `{tmp_path / 'time-server'}`, not of " \
           f"`mcp-server-time --local-timezone UTC`: run `flowrun tools refresh {manifest}`" in moved.output

    manifest.write_text(json.dumps({"name": "time", "command": [str(tmp_path / "nowhere")], "tools": ["x"]}))
    failed = cli("tools", "refresh", str(manifest))
    assert failed.exit_code == 1 and "Traceback" not in failed.output + failed.stderr
    assert f"error: {manifest}: MCP server time ({tmp_path / 'nowhere'}) failed (FileNotFoundError" in failed.stderr


def test_a_flow_calls_the_servers_tools_and_its_replay_needs_no_server(clock: Path) -> None:
    db = str(clock / "runs.db")
    (clock / "none.cassette.yaml").write_text("responses: []\n")  # no model call: the flow's data is the inputs
    ran = cli("run", str(clock / "clock.yaml"), "--tools", str(clock / "tools"), "--backend", "scripted",
              "--cassette", str(clock / "none.cassette.yaml"), "-i", "zone=Asia/Tokyo", "--db", db)
    assert ran.exit_code == 0, ran.output + ran.stderr
    assert ran.output.startswith("Asia/Tokyo 21:00\n")
    assert len(starts(clock / "tools", "time")) == 2  # the refresh's, then one for both of the run's calls
    run = ran.output.split("\nrun ")[1].split()[0]

    (clock / "tools" / "time-server").unlink()
    replayed = cli("runs", "replay", run, "--db", db)
    assert replayed.exit_code == 0, replayed.output + replayed.stderr
    assert replayed.output == f"run {run} replayed without a model: 3 steps, the same path, outputs and answer as " \
                              f"recorded\n"
    assert len(starts(clock / "tools", "time")) == 2


def kernel_for(folder: Path, *names: str) -> Kernel:
    manifests = load_tools([folder], bundled=False).tools
    kernel = Kernel(ScriptedBackend([]), Storage(f"sqlite:///{folder / 'runs.db'}"),
                    tools=[tool_from_manifest(manifests[name]) for name in names], workspaces=folder / "workspaces")
    kernel.open_run("run", "agent", list(names))
    return kernel


def test_arguments_are_checked_against_the_input_schema_before_the_server_is_started(clock: Path) -> None:
    tools = clock / "tools"
    kernel = kernel_for(tools, "get_current_time")
    before = starts(tools, "time")

    async def calls() -> tuple[str, str, Any]:
        with pytest.raises(BadArguments) as refused:
            await kernel.call_tool("agent", "run", "get_current_time", {"timezone": 5})
        assert starts(tools, "time") == before  # refused before the call: nothing was started
        with pytest.raises(ToolError) as failed:
            await kernel.call_tool("agent", "run", "get_current_time", {"timezone": "Nowhere/Atlantis"})
        found = await kernel.call_tool("agent", "run", "get_current_time", {"timezone": "Europe/Paris"})
        return str(refused.value), str(failed.value), found.result

    refused, failed, found = asyncio.run(calls())
    assert refused == "arguments for get_current_time: timezone: 5 is not of type \"string\""
    assert "Invalid timezone: 'No time zone found with key Nowhere/Atlantis'" in failed
    assert found["timezone"] == "Europe/Paris" and found["datetime"].endswith(("+01:00", "+02:00"))
    assert len(starts(tools, "time")) == len(before) + 1  # one start for both calls


class Pages(http.server.BaseHTTPRequestHandler):
    """/slow answers after 5 s (saying when it was asked, on `asked`), any other page at once."""

    asked: ClassVar[threading.Event] = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/slow":
            Pages.asked.set()
            time.sleep(5)
        body = b"<html><head><title>Fast</title></head><body><p>The page's text.</p></body></html>"
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the server asking was killed, or gave up
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def pages() -> Iterator[str]:
    Pages.asked.clear()
    pages = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{pages.server_port}"
    pages.shutdown()


def test_a_server_that_dies_in_a_call_is_a_tool_error_and_the_next_call_starts_it_again(tmp_path: Path, pages: str
                                                                                        ) -> None:
    server(tmp_path, "fetch", "mcp-server-fetch", "--ignore-robots-txt", "--allow-private-ips", tools=["fetch"],
           timeout=30)
    assert cli("tools", "refresh", str(tmp_path)).exit_code == 0
    kernel = kernel_for(tmp_path, "fetch")

    async def calls() -> tuple[str, Any]:
        call = asyncio.ensure_future(kernel.call_tool("agent", "run", "fetch", {"url": f"{pages}/slow"}))
        await asyncio.to_thread(Pages.asked.wait, 20)
        os.kill(starts(tmp_path, "fetch")[-1], signal.SIGKILL)
        with pytest.raises(ToolError) as ended:
            await call
        again = await kernel.call_tool("agent", "run", "fetch", {"url": f"{pages}/fast"})
        return str(ended.value), again.result

    ended, again = asyncio.run(calls())
    assert ended.startswith(f"MCP server fetch ({tmp_path / 'fetch-server'} --ignore-robots-txt --allow-private-ips) "
                            f"ended while the call")
    assert "The page's text." in again
    assert len(starts(tmp_path, "fetch")) == 3  # the refresh, the call it died in, the next call


def test_a_call_past_its_timeout_is_a_tool_timeout_that_stops_the_server(tmp_path: Path, pages: str) -> None:
    server(tmp_path, "fetch", "mcp-server-fetch", "--ignore-robots-txt", "--allow-private-ips", tools=["fetch"],
           timeout=1)
    assert cli("tools", "refresh", str(tmp_path)).exit_code == 0
    kernel = kernel_for(tmp_path, "fetch")

    async def calls() -> tuple[str, Any]:
        with pytest.raises(ToolTimeout) as late:
            await kernel.call_tool("agent", "run", "fetch", {"url": f"{pages}/slow"})
        stopped = starts(tmp_path, "fetch")[-1]
        assert not psutil.pid_exists(stopped) or psutil.Process(stopped).status() == psutil.STATUS_ZOMBIE
        kernel.tools.tools["fetch"].timeout = 30  # its first page takes the server a second on a fast machine
        again = await kernel.call_tool("agent", "run", "fetch", {"url": f"{pages}/fast"})
        return str(late.value), again.result

    late, again = asyncio.run(calls())
    assert late == "tool fetch took longer than its timeout of 1 s"
    assert "The page's text." in again
    assert len(starts(tmp_path, "fetch")) == 3  # the refresh's, the call stopped, the next call


HTTP_SERVER = """\
import sys
from mcp.server.mcpserver import MCPServer

app = MCPServer("adder")


@app.tool()
def add(a: int, b: int) -> int:
    \"\"\"Add two integers.\"\"\"
    return a + b


app.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
"""


def test_a_server_over_streamable_http(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "adder.py").write_text(HTTP_SERVER)
    process = subprocess.Popen([sys.executable, str(tmp_path / "adder.py"), str(port)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        (tmp_path / "adder.mcp.yaml").write_text(textwrap.dedent(f"""\
            name: adder
            url: http://127.0.0.1:{port}/mcp
            tools: [add]
            """))
        assert cli("tools", "refresh", str(tmp_path)).exit_code == 0
        kernel = kernel_for(tmp_path, "add")
        added = asyncio.run(kernel.call_tool("agent", "run", "add", {"a": 2, "b": 40}))
        assert added.result == {"result": 42}
    finally:
        process.terminate()
        process.wait(10)


RAW = Path(__file__).with_name("raw_mcp_server.py")


def raw(folder: Path, mode: str, *, listed: bool = True) -> Path:
    """The manifest of tests/raw_mcp_server.py in `mode`, its tool `echo` (or `second`), listed unless not."""
    wrapper = folder / "raw-server"
    wrapper.write_text(f'#!/bin/sh\necho $$ >> "{folder / "raw"}.starts"\nexec "{sys.executable}" "{RAW}" "$@"\n')
    wrapper.chmod(0o755)
    manifest = folder / "raw.mcp.yaml"
    manifest.write_text(json.dumps({"name": "raw", "command": [str(wrapper), mode], "tools": ["echo"]}))
    if listed:
        (folder / "raw.mcp-tools.json").write_text(json.dumps({"format": 1, "source": {"command": [str(wrapper), mode]},
                                                               "tools": [{"name": "echo", "inputSchema": {
                                                                   "type": "object", "properties": {
                                                                       "text": {"type": "string"}}}}]}))
    return manifest


def echo(folder: Path, *texts: str) -> list[Any]:
    """What the raw server answers each text, in one event loop: a result, or the message of its ToolError."""
    kernel = kernel_for(folder, "echo")

    async def calls() -> list[Any]:
        said: list[Any] = []
        for text in texts:
            try:
                said.append((await kernel.call_tool("agent", "run", "echo", {"text": text})).result)
            except ToolError as exc:
                said.append(str(exc))
        return said

    return asyncio.run(calls())


def test_a_listing_in_pages_is_read_whole_and_ends_at_a_page_given_twice(tmp_path: Path) -> None:
    raw(tmp_path, "pages", listed=False)
    refreshed = cli("tools", "refresh", str(tmp_path))
    assert refreshed.exit_code == 0, refreshed.output
    assert refreshed.output.endswith(": 2 tools: echo, second\n")


def test_a_servers_own_error_is_its_message_and_the_server_serves_on(tmp_path: Path) -> None:
    raw(tmp_path, "rpcerror")
    assert echo(tmp_path, "fail", "again") == ["MCP server raw refused the call: the echo chamber is full", "again"]
    assert len(starts(tmp_path, "raw")) == 1


def test_a_number_json_cannot_hold_is_a_tool_error(tmp_path: Path) -> None:
    raw(tmp_path, "nan")
    assert echo(tmp_path, "hi") == ["MCP server raw answered a number JSON cannot hold (NaN or Infinity)"]


def test_a_server_that_exits_at_its_start_says_why(tmp_path: Path) -> None:
    raw(tmp_path, "exit")
    [said] = echo(tmp_path, "hi")
    assert said.startswith(f"MCP server raw ({tmp_path / 'raw-server'} exit) ")
    assert said.endswith("while starting; it said: cannot start: no configuration file")
    assert "ExceptionGroup" not in said


def test_what_the_sdk_logs_of_a_server_stays_off_stderr(tmp_path: Path) -> None:
    raw(tmp_path, "garbage")
    (tmp_path / "echo.yaml").write_text(textwrap.dedent("""\
        flowrun: 1
        name: Echo
        inputs: {text: {type: string}}
        tools: [echo]
        steps:
          say: {kind: process, tool: echo, arguments: {text: "{{ inputs.text }}"}, next: done}
          done: {kind: terminal, output: "{{ steps.say.output }}"}
        """))
    (tmp_path / "none.cassette.yaml").write_text("responses: []\n")
    done = subprocess.run([sys.executable, "-m", "engine", "run", str(tmp_path / "echo.yaml"), "--tools",
                           str(tmp_path), "--backend", "scripted", "--cassette", str(tmp_path / "none.cassette.yaml"),
                           "-i", "text=hello", "--db", str(tmp_path / "runs.db")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hello\n")
    assert "Traceback" not in done.stderr and "JSONRPC" not in done.stderr


def test_a_connection_of_an_event_loop_closed_without_ending_it_is_replaced(tmp_path: Path) -> None:
    raw(tmp_path, "echo")
    kernel = kernel_for(tmp_path, "echo")
    loop = asyncio.new_event_loop()
    first = loop.run_until_complete(kernel.call_tool("agent", "run", "echo", {"text": "one"}))
    loop.close()  # its tasks, the connection's among them, never ended
    second = asyncio.run(kernel.call_tool("agent", "run", "echo", {"text": "two"}))
    assert (first.result, second.result) == ("one", "two")


@pytest.mark.parametrize(("listed", "problem"), [
    ({"name": "echo", "inputSchema": {"type": "object"}, "description": ["not", "text"]},
     "its description is not text"),
    ({"name": "echo", "inputSchema": "an object"}, "its inputSchema is not the JSON Schema of an object"),
    ({"name": "echo", "inputSchema": {"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}}},
     "flowrun cannot check arguments with its inputSchema"),
], ids=["description", "schema", "remote-ref"])
def test_a_listed_tool_that_cannot_be_used_is_a_diagnostic(tmp_path: Path, listed: dict[str, Any], problem: str
                                                           ) -> None:
    manifest = raw(tmp_path, "echo")
    listing = json.loads((tmp_path / "raw.mcp-tools.json").read_text())
    (tmp_path / "raw.mcp-tools.json").write_text(json.dumps({**listing, "tools": [listed]}))
    checked = cli("validate", str(manifest))
    assert checked.exit_code == 1 and "Traceback" not in checked.output
    assert f"FR206 mcp-listing: tool 'echo' of server raw cannot be used: {problem}" in checked.output


def test_a_listing_nested_too_deep_or_naming_no_tool_is_a_diagnostic(tmp_path: Path) -> None:
    manifest = raw(tmp_path, "echo")
    (tmp_path / "raw.mcp-tools.json").write_text("[" * 100_000)
    deep = cli("validate", str(manifest))
    assert "FR206 mcp-listing: raw.mcp-tools.json cannot be read (it is nested too deeply to read)" in deep.output
    source = {"command": json.loads(manifest.read_text())["command"]}
    (tmp_path / "raw.mcp-tools.json").write_text(json.dumps({"format": 1, "source": source, "tools": [
        {"name": "\x1b]0;owned\x07", "inputSchema": {}}]}))
    unnamed = cli("validate", str(manifest))
    assert "(it lists: none)" in unnamed.output and "\x1b" not in unnamed.output


def test_a_whitespace_description_lists_the_tool_by_its_name(tmp_path: Path) -> None:
    manifest = raw(tmp_path, "echo")
    listing = json.loads((tmp_path / "raw.mcp-tools.json").read_text())
    listing["tools"][0]["description"] = "  \n "
    (tmp_path / "raw.mcp-tools.json").write_text(json.dumps(listing))
    listed = cli("tools", "list", "--tools", str(manifest))
    assert listed.exit_code == 0 and "\necho                   echo\n" in listed.output


def test_refresh_takes_only_mcp_manifests_and_says_when_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "hello.yaml").write_text("name: hello\ndescription: Greets.\nentry: hello.py:hello\n"
                                         "parameters: {type: object, properties: {name: {type: string}}}\n")
    (tmp_path / "hello.py").write_text("def hello(name):\n    return 'hi ' + name\n")
    assert cli("tools", "refresh", str(tmp_path / "hello.yaml")).exit_code == 2  # no MCP manifest: a usage error
    flow = tmp_path / "greet.yaml"  # a tool manifest given by its path, whatever its name, is still one
    flow.write_text("flowrun: 1\nname: Greet\ntools: [hello]\nsteps:\n"
                    "  say: {kind: process, tool: hello, arguments: {name: Ann}, next: done}\n"
                    "  done: {kind: terminal, output: '{{ steps.say.output }}'}\n")
    assert cli("validate", str(flow), "--tools", str(tmp_path / "hello.yaml")).exit_code == 0
    raw(tmp_path, "echo", listed=False)
    (tmp_path / "raw.mcp-tools.json").mkdir()
    failed = cli("tools", "refresh", str(tmp_path))
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert f"error: {tmp_path / 'raw.mcp.yaml'}: [Errno 21] Is a directory" in failed.output


def test_a_tool_choice_among_tools_whose_schemas_have_defs_resolves_each(tmp_path: Path) -> None:
    """Servers built on pydantic put nested models in `$defs`: in the schema of a choice of tools, each tool's
    references must still reach its own."""
    person = {"type": "object", "properties": {"who": {"$ref": "#/$defs/Person"}}, "required": ["who"],
              "$defs": {"Person": {"type": "object", "required": ["name"],
                                   "properties": {"name": {"type": "string"}}}}}
    place = {"type": "object", "properties": {"at": {"$ref": "#/$defs/Person"}}, "required": ["at"],
             "$defs": {"Person": {"type": "object", "required": ["city"],
                                  "properties": {"city": {"type": "string"}}}}}
    tools = [Tool("greet", "Greets.", person, function=lambda who: who),
             Tool("visit", "Goes.", place, function=lambda at: at)]
    kernel = Kernel(ScriptedBackend([]), Storage(f"sqlite:///{tmp_path / 'runs.db'}"), tools=tools)
    _, schema = kernel._callable(["greet", "visit"])
    check = compile_schema(schema)
    assert check.is_valid({"tool": "greet", "arguments": {"who": {"name": "Ann"}}})
    assert check.is_valid({"tool": "visit", "arguments": {"at": {"city": "Oslo"}}})
    assert not check.is_valid({"tool": "greet", "arguments": {"who": {"city": "Oslo"}}})
