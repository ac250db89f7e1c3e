"""The tool manager: arguments checked against the tool's JSON Schema before the call, each tool's concurrency
limit and timeout enforced (excess calls wait their turn, none is dropped), every call recorded.

Tool calls run on worker threads of their own, so they never wait behind the model.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import importlib.util
import inspect
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.json_schema import compile_schema
from engine.kernel.journal import Journal
from engine.kernel.storage import Storage, ToolCallRow, through
from engine.kernel.syscall import Syscall

# The run's workspace directory while a tool runs (the kernel sets it per call; worker threads inherit it). Tools
# that touch files (read_file, write_file) stay inside it.
workspace: contextvars.ContextVar[Path] = contextvars.ContextVar("workspace")
# While a tool that is not idempotent runs: a key of the call, unique, and the same when a resumed run makes again
# a call whose result was not stored. A tool that remembers the keys it has done can do each call only once.
call_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_key", default=None)


class ToolError(Exception):
    """A tool call failed: bad arguments, a timeout, or an error in the tool; the message says which."""


class BadArguments(ToolError):
    """The arguments do not match the tool's parameters schema; the message lists the problems."""


@dataclass(frozen=True)
class ToolCall:
    """A tool call a model made: the tool, the arguments it gave, and what the tool returned."""

    tool: str
    arguments: Any
    result: Any


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


@dataclass
class Tool:
    """A callable tool: `function(**arguments)` returns JSON-able data."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any]
    timeout: float = 30
    concurrency: int = 1
    idempotent: bool = False  # a call may be repeated safely (after a failure, say)
    validator: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.validator = compile_schema(self.parameters)

    def problems(self, arguments: Any) -> list[str]:
        """What is wrong with `arguments` for this tool (empty when they fit)."""
        return [f"{'.'.join(map(str, e.instance_path)) or 'arguments'}: {e.message}"
                for e in self.validator.iter_errors(arguments)]


def load_entry(entry: str, base: Path) -> Callable[..., Any]:
    """The callable `file.py:function` (a file in `base`) or `package.module:function` names."""
    module_name, _, function = entry.partition(":")
    if module_name.endswith(".py"):
        path = base / module_name
        spec = importlib.util.spec_from_file_location(f"flowrun_tool_{path.stem}", path)
        if spec is None or spec.loader is None or not path.is_file():
            raise ToolError(f"tool code {path} does not exist")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    found = getattr(module, function, None)
    if not callable(found):
        raise ToolError(f"{entry}: no function {function!r}")
    return found


def tool_from_manifest(manifest: ManifestLike) -> Tool:
    """The Tool a manifest describes, its code loaded."""
    function = load_entry(manifest.entry, Path(manifest.file).parent)
    return Tool(manifest.name, manifest.description, manifest.parameters, function, manifest.timeout,
                manifest.concurrency, manifest.idempotent)


class ToolManager:
    """Calls tools by name, recording each call in `storage`.

    A call that times out is abandoned: its result is discarded, but a thread running it cannot be killed.
    """

    def __init__(self, tools: Iterable[Tool], storage: Storage) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self.storage = storage
        self._slots = {tool.name: asyncio.Semaphore(tool.concurrency) for tool in self.tools.values()}

    async def call(self, syscall: Syscall, name: str, arguments: Any, journal: Journal | None = None) -> Any:
        """Call tool `name` with `arguments` (checked first) within its concurrency limit and timeout, or give the
        result `journal` recorded for that call instead.

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
            if recorded.error is not None:
                raise (BadArguments if problems else ToolError)(recorded.error)
            return recorded.result
        row = ToolCallRow(run_id=syscall.run, agent=syscall.agent, tool=name, arguments=_jsonable(arguments),
                          started=time.time(), finished=time.time())
        try:
            if problems:
                raise BadArguments(f"arguments for {name}: " + "; ".join(problems))
            async with self._slots[name]:
                syscall.started = row.started = time.time()
                if not tool.idempotent:
                    row.pending = True
                    row.id = journal.unrecorded(name, arguments) if journal is not None else None
                    if row.id is None:
                        row.id = await self.storage.commit(self.storage.start_tool_call, row)
                key = call_key.set(f"{syscall.run}/{row.id}" if row.id is not None else None)
                try:
                    row.result = _jsonable(await asyncio.wait_for(self._run(tool, arguments), tool.timeout))
                finally:
                    call_key.reset(key)
            return row.result
        except TimeoutError:
            row.error = f"tool {name} took longer than its timeout of {tool.timeout:g} s"
            raise ToolError(row.error) from None
        except ToolError as exc:
            row.error = str(exc)
            raise
        except Exception as exc:
            row.error = f"tool {name} failed: {type(exc).__name__}: {exc}"
            raise ToolError(row.error) from exc
        finally:
            syscall.finished = row.finished = time.time()
            if syscall.started is None:
                syscall.started = syscall.finished
            if row.pending:  # its result is awaited, to leave the least time in which a crash leaves it unknown
                row.pending = None
                if await through(self.storage.commit(self.storage.end_tool_call, row)):
                    raise asyncio.CancelledError
            else:
                self.storage.record_tool_call(row)

    @staticmethod
    async def _run(tool: Tool, arguments: dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(tool.function):
            return await tool.function(**arguments)
        return await asyncio.to_thread(tool.function, **arguments)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)
