"""MCP servers as sources of tools, through the official `mcp` SDK: the listing of a server's tools, and calls to
them over a connection to each server that is opened at its first call and kept while its event loop runs.

A stdio server (its program found beside flowrun's Python, else on PATH) is started in a session of its own (the
SDK does that, so a terminal's Ctrl-C reaches only flowrun), with PATH, HOME and the like and the variables its
manifest names, nothing else of flowrun's environment; what it writes on stderr goes to a file whose end is quoted
when it fails. A server that ends or cannot be reached is a tool error, and the next call starts it again. A call
past its timeout drops the connection, as a tool worker is killed: a stdio server is stopped, so nothing of the call
runs on (a server over HTTP is only told, and may go on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from engine.kernel.bounds import MAX_MESSAGE, cut
from engine.kernel.tool_code import ToolError

if TYPE_CHECKING:  # the SDK takes about a second to import: only runs that reach a server pay for it
    from mcp import ClientSession
    from mcp_types import CallToolResult

START_TIMEOUT = 60  # seconds for a server to start and answer `initialize`, however busy the machine
STDERR_QUOTED = 600  # characters of the end of a stdio server's stderr quoted when it fails
MAX_TOOLS = 1000  # tools a server may list
SSE_EVENT = 16 << 20  # bytes of one message from a server over HTTP (a result is cut to FLOWRUN_MAX_RESULT after)


@dataclass(frozen=True)
class McpServer:
    """How to reach an MCP server: a command to start (stdio; a relative path in it is of `folder`, its manifest's)
    or a streamable HTTP URL, and the variables of flowrun's environment it is given."""

    name: str
    command: tuple[str, ...] = ()
    url: str = ""
    variables: tuple[str, ...] = ()
    folder: str = ""

    def source(self) -> dict[str, Any]:
        """What the server is reached by, as a listing of its tools records it (to tell when it is out of date)."""
        return {"url": self.url} if self.url else {"command": list(self.command)}

    def shown(self) -> str:
        """The command or URL, for messages (a password in the URL left out)."""
        if not self.url:
            return " ".join(self.command)
        parts = urllib.parse.urlsplit(self.url)
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


async def list_tools(server: McpServer) -> list[dict[str, Any]]:
    """Every tool the server lists (as MCP's JSON has it: name, description, inputSchema, annotations...)."""
    from mcp_types import PaginatedRequestParams

    _quiet()
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errors:
        try:
            async with asyncio.timeout(START_TIMEOUT), _session(server, errors) as session:
                listed: list[dict[str, Any]] = []
                cursors: set[str] = set()
                cursor = None
                while True:
                    page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
                    listed += [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in page.tools]
                    if len(listed) > MAX_TOOLS:
                        raise ToolError(f"MCP server {server.name} lists more than {MAX_TOOLS} tools")
                    cursor = page.next_cursor
                    if not cursor or cursor in cursors:  # a server that gives a page twice has no more
                        return listed
                    cursors.add(cursor)
        except ToolError:
            raise
        except Exception as exc:
            raise _failure(server, exc, errors, "listing its tools") from None


def result_data(server: McpServer, result: CallToolResult) -> Any:
    """A tool result as data: its structured content when it has one, else its text (one block: the text; several:
    a list), other blocks named by type. ToolError when the tool says it failed, or answers what JSON cannot
    hold (NaN)."""
    from mcp_types import TextContent

    blocks = [block.text if isinstance(block, TextContent) else f"[{block.type} content]" for block in result.content]
    if result.is_error:
        raise ToolError(cut(" ".join(blocks) or "the tool reported an error and said nothing more", MAX_MESSAGE))
    data = result.structured_content if result.structured_content is not None else \
        blocks[0] if len(blocks) == 1 else blocks
    try:
        json.dumps(data, allow_nan=False)
    except ValueError:
        raise ToolError(f"MCP server {server.name} answered a number JSON cannot hold (NaN or Infinity)") from None
    return data


class McpClients:
    """Connections to MCP servers, one a server, opened at its first call."""

    def __init__(self) -> None:
        self._open: dict[McpServer, _Connection] = {}

    async def call(self, server: McpServer, tool: str, arguments: dict[str, Any], timeout: float) -> Any:
        """What `tool` of `server` answers to `arguments` (result_data), within `timeout` seconds (TimeoutError
        past it, and the connection is dropped, which stops a stdio server: nothing of the call runs on there);
        ToolError when the server fails or ends."""
        from mcp.shared.exceptions import MCPError

        connection = await self._connection(server)
        try:
            async with asyncio.timeout(timeout):
                result = await connection.session.call_tool(tool, arguments)
        except TimeoutError:
            await self._drop(server, connection)
            raise
        except MCPError as exc:
            if not _closed(exc):
                raise ToolError(cut(f"MCP server {server.name} refused the call: {exc.error.message}",
                                    MAX_MESSAGE)) from None
            failure = _failure(server, exc, connection.errors, "the call")
            await self._drop(server, connection)
            raise failure from None
        except Exception as exc:  # an answer the SDK could not read, say
            failure = _failure(server, exc, connection.errors, "the call")
            await self._drop(server, connection)
            raise failure from None
        return result_data(server, result)

    async def _connection(self, server: McpServer) -> _Connection:
        connection = self._open.get(server)
        if connection is not None and (connection.loop is not asyncio.get_running_loop() or connection.task.done()):
            await self._drop(server, connection)  # its loop has ended, or its server has
            connection = None
        if connection is None:
            connection = self._open[server] = _Connection(server)
        await connection.ready.wait()
        if connection.failure is not None:
            if connection.reported is None:  # said once, for every call that waited on this start
                connection.reported = _failure(server, connection.failure, connection.errors, "starting")
            await self._drop(server, connection)
            raise connection.reported
        return connection

    async def _drop(self, server: McpServer, connection: _Connection) -> None:
        """End `connection`, and forget it unless another has taken its place."""
        if self._open.get(server) is connection:
            del self._open[server]
        await connection.end()


class _Connection:
    """A session with one server, held open by a task of its own: the SDK's transports must be entered and left
    in one task, and calls come from many."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        # open as long as the server runs, closed by `end`: what it said is quoted when it fails
        self.errors: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        self.ready, self.stop = asyncio.Event(), asyncio.Event()
        self.failure: BaseException | None = None
        self.reported: ToolError | None = None
        self.session: ClientSession
        _quiet()
        self.task = asyncio.create_task(self._hold(), name=f"mcp-server-{server.name}")

    async def _hold(self) -> None:
        try:
            async with asyncio.timeout(START_TIMEOUT) as starting, _session(self.server, self.errors) as self.session:
                starting.reschedule(None)  # started: it may now run as long as the tool manager lasts
                self.ready.set()
                await self.stop.wait()
        except Exception as exc:
            self.failure = exc
        finally:
            self.ready.set()

    async def end(self) -> None:
        """Close the session (a stdio server is asked to stop, then killed), if its event loop still runs."""
        if self.loop is asyncio.get_running_loop():
            self.stop.set()
            with contextlib.suppress(Exception):
                await self.task
        self.errors.close()


@contextlib.asynccontextmanager
async def _session(server: McpServer, errors: IO[str]) -> AsyncIterator[ClientSession]:
    """An initialized session with `server`; a stdio server's stderr goes to `errors`."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client
    from mcp.client.streamable_http import streamable_http_client

    if server.url:
        transport = streamable_http_client(server.url, max_sse_event_size=SSE_EVENT)
    else:
        given = {name: os.environ[name] for name in server.variables if name in os.environ}
        transport = stdio_client(StdioServerParameters(command=program(server.command[0], server.folder),
                                                       args=list(server.command[1:]), env=given), errlog=errors)
    async with transport as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def program(name: str, folder: str = "") -> str:
    """The program `name` a server's command starts: a relative path is of `folder`; a bare name is found beside
    the Python flowrun runs on (where pip puts the scripts of a server installed with flowrun, in a virtual
    environment activated or not), else on PATH."""
    if os.sep in name:
        return os.path.join(folder, name)
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name) or name


def _quiet() -> None:
    """The SDK logs what it meets (a line that is no JSON, with its traceback): not on flowrun's stderr, where
    Python's last-resort handler would print it, unless the application sets up logging."""
    logging.getLogger("mcp").addHandler(logging.NullHandler())


def _closed(exc: Exception) -> bool:
    """Whether the SDK raised `exc` because the connection closed (not a server's own error of that code)."""
    from mcp_types import CONNECTION_CLOSED

    return exc.error.code == CONNECTION_CLOSED and exc.error.message == "Connection closed"  # type: ignore[attr-defined]


def _cause(exc: BaseException) -> BaseException:
    """The first exception inside the task groups `exc` comes out of."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _failure(server: McpServer, exc: BaseException, errors: IO[str], doing: str) -> ToolError:
    """The ToolError for a server that failed or ended while `doing` something, quoting the end of its stderr."""
    from mcp.shared.exceptions import MCPError

    exc = _cause(exc)
    if isinstance(exc, TimeoutError):
        what = f"did not start and answer within {START_TIMEOUT} s"
        doing = "" if doing == "starting" else doing
    elif isinstance(exc, MCPError) and _closed(exc):
        what = "ended" if doing == "the call" else "closed the connection"
    else:
        what = f"failed ({type(exc).__name__}: {exc})"
    message = f"MCP server {server.name} ({server.shown()}) {what}" + (f" while {doing}" if doing else "")
    with contextlib.suppress(ValueError, OSError):  # a closed file has nothing more to say
        errors.seek(0)
        said = errors.read()[-STDERR_QUOTED:].strip()
        if said:
            message += f"; it said: {said}"
    return ToolError(cut(message, MAX_MESSAGE))
