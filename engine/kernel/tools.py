"""The tool manager: arguments checked against the tool's JSON Schema before the call, each tool's concurrency
limit and timeout enforced (excess calls wait their turn, none is dropped), every call recorded.

Tool calls never wait behind the model. A manifest's tool code runs in worker processes (engine.kernel.workers):
a call past its timeout, or cancelled (Ctrl-C), is stopped by killing its worker. A tool of an MCP server is
called over the connection to that server (engine.kernel.mcp); a call past its timeout is cancelled there.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.errors import ErrorKind
from engine.json_schema import compile_schema
from engine.kernel.bounds import MAX_MESSAGE, cut
from engine.kernel.journal import Journal
from engine.kernel.mcp import McpClients, McpServer
from engine.kernel.storage import Fenced, Storage, through
from engine.kernel.syscall import Syscall
from engine.kernel.tables import ToolCallRow
from engine.kernel.tool_code import ToolError, ToolTimeout, call_key
from engine.kernel.tool_code import load_entry as load_entry  # where tool code and library users find them
from engine.kernel.tool_code import workspace as workspace
from engine.kernel.workers import WorkerPool


class BadArguments(ToolError):
    """The arguments do not match the tool's parameters schema; the message lists the problems."""

    kind = ErrorKind.BAD_OUTPUT


@dataclass(frozen=True)
class ToolCall:
    """A tool call made: the tool, its arguments, what the tool returned, and the key of the call's record (the
    `syscall` of its tool_calls row, where its result is stored)."""

    tool: str
    arguments: Any
    result: Any
    syscall: str | None


class ManifestLike(Protocol):
    """What the tool manager needs of a tool manifest (engine.flow.manifest.ToolManifest has it)."""

    name: str
    description: str
    parameters: dict[str, Any]
    entry: str
    timeout: float
    concurrency: int
    idempotent: bool
    file: str
    hosts: tuple[str, ...]
    server: McpServer | None


@dataclass
class Tool:
    """A callable tool: called with the arguments, it returns JSON-able data.

    A tool with an `entry` (`file.py:function` in folder `base`, or `package.module:function`; what a manifest
    gives) runs in a worker process, which a timeout or a cancellation kills: nothing of the call runs on. A tool
    given only a `function` (a library user's callable) runs in this process: a coroutine function on the event
    loop, which a timeout cancels at its next await; any other function on a thread, which a timeout abandons but
    cannot stop. Give code that may hang an entry. A tool of an MCP `server` is that server's tool of its name.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any] | None = None
    timeout: float = 30
    concurrency: int = 1
    idempotent: bool = False  # a call may be repeated safely (after a failure, say)
    entry: str | None = None
    base: Path | None = None
    hosts: tuple[str, ...] = ()  # the hosts its code may reach (engine.kernel.network)
    server: McpServer | None = None
    validator: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.function is None and self.entry is None and self.server is None:
            raise ValueError(f"tool {self.name} needs a function, an entry or a server")
        self.validator = compile_schema(self.parameters)

    def problems(self, arguments: Any) -> list[str]:
        """What is wrong with `arguments` for this tool (empty when they fit)."""
        return [f"{'.'.join(map(str, e.instance_path)) or 'arguments'}: {e.message}"
                for e in self.validator.iter_errors(arguments)]


def tool_from_manifest(manifest: ManifestLike) -> Tool:
    """The Tool a manifest describes; its code is loaded by the worker processes that run it (or its server
    serves it)."""
    return Tool(manifest.name, manifest.description, manifest.parameters, None, manifest.timeout,
                manifest.concurrency, manifest.idempotent, entry=manifest.entry or None,
                base=Path(manifest.file).parent, hosts=manifest.hosts, server=manifest.server)


class ToolManager:
    """Calls tools by name, recording each call in `storage`. Its worker processes end with it (or with this
    process)."""

    def __init__(self, tools: Iterable[Tool], storage: Storage, max_result: int) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self.storage = storage
        self._slots = {tool.name: asyncio.Semaphore(tool.concurrency) for tool in self.tools.values()}
        self.max_result = max_result  # bytes of a result kept (engine.kernel.bounds)
        in_workers = [t for t in self.tools.values() if t.entry is not None]
        self._workers = WorkerPool([(t.entry, str(t.base)) for t in in_workers],
                                   calls=sum(t.concurrency for t in in_workers))
        weakref.finalize(self, self._workers.close)
        self._servers = McpClients()  # their connections end with the event loop they were opened in

    async def call(self, syscall: Syscall, name: str, arguments: Any, journal: Journal | None = None) -> ToolCall:
        """Call tool `name` with `arguments` (checked first) within its concurrency limit and timeout, or give the
        call `journal` recorded instead.

        `syscall` gets its start (when the call got one of the tool's slots) and finish times. A tool that is not
        idempotent has its call stored as pending before it runs, so that a run resumed after a crash can tell a
        call that may have happened from one that did not; the call's `call_key` is the same when a resumed run
        makes such a call again.
        """
        tool = self.tools.get(name)
        if tool is None:
            raise ToolError(f"no tool {name!r}; known: {', '.join(sorted(self.tools))}")
        problems = tool.problems(arguments)
        recorded = journal.tool(name, arguments) if journal is not None else None
        if recorded is not None:
            syscall.started = syscall.finished = time.time()
            if recorded.error is not None:  # as it was raised (a row stored before schema 12 has no kind)
                raise {ErrorKind.TOOL_TIMEOUT: ToolTimeout, ErrorKind.BAD_OUTPUT: BadArguments}.get(
                    recorded.kind, BadArguments if problems else ToolError)(recorded.error)
            return ToolCall(name, arguments, recorded.result, recorded.syscall)
        row = ToolCallRow(run_id=syscall.run, agent=syscall.agent, tool=name, syscall=syscall.id,
                          arguments=cut(arguments, self.max_result), started=time.time(), finished=time.time())
        stopped = False
        try:
            if problems:
                raise BadArguments(f"arguments for {name}: " + "; ".join(problems))
            async with self._slots[name]:
                syscall.started = row.started = time.time()
                if tool.idempotent and self.storage.fences.holds(syscall.run):  # a worker's run: still its own?
                    await self.storage.commit(self.storage.hold, syscall.run)
                if not tool.idempotent:
                    row.pending = True
                    row.id = journal.unrecorded(name, arguments) if journal is not None else None
                    if row.id is None:
                        row.id = await self.storage.commit(self.storage.start_tool_call, row)
                key = call_key.set(f"{syscall.run}/{row.id}" if row.id is not None else None)
                try:
                    row.result = cut(await self._run(tool, arguments), self.max_result)
                finally:
                    call_key.reset(key)
            return ToolCall(name, arguments, row.result, row.syscall)
        except TimeoutError:
            row.error, row.error_kind = f"tool {name} took longer than its timeout of {tool.timeout:g} s", \
                ErrorKind.TOOL_TIMEOUT
            raise ToolTimeout(row.error) from None
        except asyncio.CancelledError:  # its run stopped, or its step ran past its timeout: no result
            row.error, row.error_kind = "the call was stopped before it returned", ErrorKind.TOOL_ERROR
            # what may or may not have happened stays pending; an idempotent call is left out of what a resumed
            # or replayed run is given back, which then calls it again
            stopped, row.superseded = True, None if row.pending else True
            raise
        except Fenced:  # the run is another process's now: nothing was called, and nothing more is stored
            row.pending = None
            raise
        except ToolError as exc:
            row.error, row.error_kind = cut(str(exc), MAX_MESSAGE), exc.kind
            raise type(exc)(row.error) from None
        except Exception as exc:
            row.error, row.error_kind = cut(f"tool {name} failed: {type(exc).__name__}: {exc}", MAX_MESSAGE), \
                ErrorKind.TOOL_ERROR
            raise ToolError(row.error) from exc
        finally:
            syscall.finished = row.finished = time.time()
            if syscall.started is None:
                syscall.started = syscall.finished
            if row.pending:  # its result is awaited, to leave the least time in which a crash leaves it unknown
                row.pending = True if stopped else None
                if await through(self.storage.commit(self.storage.end_tool_call, row, stopped)):
                    raise asyncio.CancelledError
            else:
                self.storage.record_tool_call(row)

    async def _run(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        """The tool's result, within its timeout (TimeoutError past it)."""
        if tool.server is not None:
            return await self._servers.call(tool.server, tool.name, arguments, tool.timeout)
        if tool.entry is None:
            return await asyncio.wait_for(self._run_here(tool, arguments), tool.timeout)
        folder = workspace.get(None)
        try:
            reply = await self._workers.call({"entry": tool.entry, "base": str(tool.base), "arguments": arguments,
                                              "workspace": None if folder is None else str(folder),
                                              "call_key": call_key.get(), "limit": self.max_result,
                                              "hosts": list(tool.hosts), "tool": tool.name}, tool.timeout)
        except ToolError as exc:  # its worker ended in the call
            raise ToolError(f"tool {tool.name} failed: {exc}") from None
        if "error" in reply:  # a tool's own error (its kind kept: a request that timed out), or any other
            own = {"ToolError": ToolError, "ToolTimeout": ToolTimeout}.get(reply["type"])
            raise own(reply["error"]) if own else ToolError(f"tool {tool.name} failed: {reply['type']}: "
                                                            f"{reply['error']}")
        return reply["result"]

    @staticmethod
    async def _run_here(tool: Tool, arguments: dict[str, Any]) -> Any:
        assert tool.function is not None  # a tool without an entry has one
        if inspect.iscoroutinefunction(tool.function):
            return await tool.function(**arguments)
        return await asyncio.to_thread(tool.function, **arguments)
