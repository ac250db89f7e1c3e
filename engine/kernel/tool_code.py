"""What tool code runs with, and the worker process it runs in (`python -m engine.kernel.tool_code`).

A worker first reads the [entry, base] pairs of the tools it may run and loads them, before it says it is ready
(so that loading, imports included, does not count against a call's time). Then it reads calls from stdin, one
JSON line each ({entry, base, arguments, workspace, call_key, limit}), runs each with the per-call context
variables set, and writes one JSON line back ({result}, cut to `limit` bytes, or {error, type}) on its own copy of
stdout; what the tool prints goes to stderr. It ends when its stdin closes, even in the middle of a call (as soon
as Python code can run in it: a single C call holding the interpreter lock finishes first): the parent closed it
or ended, however it ended, killed -9 too. It runs in a session of its own, so that a terminal's Ctrl-C reaches
only flowrun, which decides which calls to stop and kills their workers.

This module imports nothing heavy, so that a worker starts fast.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import importlib.util
import inspect
import json
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import ErrorKind, RunFailure
from engine.kernel.bounds import MAX_MESSAGE, cut

# The run's workspace directory while a tool runs (the kernel sets it per call). Tools that touch files (read_file,
# write_file) stay inside it.
workspace: contextvars.ContextVar[Path] = contextvars.ContextVar("workspace")
# While a tool that is not idempotent runs: a key of the call, unique, and the same when a resumed run makes again
# a call whose result was not stored. A tool that remembers the keys it has done can do each call only once.
call_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_key", default=None)
# The tool running, and the hosts its manifest lets it reach over HTTP (engine.kernel.network enforces them).
running: contextvars.ContextVar[str] = contextvars.ContextVar("running", default="")
reachable: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("reachable", default=())


class ToolError(RunFailure):
    """A tool call failed: bad arguments, a timeout, or an error in the tool; the message says which."""

    kind = ErrorKind.TOOL_ERROR


class ToolTimeout(ToolError):
    """A tool call ran past its timeout."""

    kind = ErrorKind.TOOL_TIMEOUT


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


def fitted(text: str, size: int) -> str:
    """`text` within `size` characters, for a small model's window: cut at the last line break past its middle, or
    else the last space, and marked " …"."""
    if len(text) <= size:
        return text
    head = text[:max(size - 2, 0)]
    for mark in ("\n", " "):
        if (at := head.rfind(mark)) > size // 2:
            return head[:at].rstrip() + " …"
    return head + " …"


Loaded = dict[tuple[str, str], Callable[..., Any] | Exception]  # entry, base -> its function, or why it has none


def _load(entry: str, base: str, loaded: Loaded) -> None:
    try:
        loaded[entry, base] = load_entry(entry, Path(base))
    except BaseException as exc:  # said when it is called (SystemExit too: one tool's code must not end the worker)
        loaded[entry, base] = exc if isinstance(exc, Exception) else ToolError(f"{entry}: loading it raised {exc!r}")


def _serve(call: dict[str, Any], loaded: Loaded) -> dict[str, Any]:
    """The reply to one call: its result, or its error's message and type."""
    try:
        if (call["entry"], call["base"]) not in loaded:
            _load(call["entry"], call["base"], loaded)
        function = loaded[call["entry"], call["base"]]
        if isinstance(function, Exception):
            raise function
        context = contextvars.copy_context()
        if call["workspace"] is not None:
            context.run(workspace.set, Path(call["workspace"]))
        context.run(call_key.set, call["call_key"])
        context.run(running.set, call.get("tool", ""))
        context.run(reachable.set, tuple(call.get("hosts", ())))
        if inspect.iscoroutinefunction(function):
            result = context.run(asyncio.run, function(**call["arguments"]))
        else:
            result = context.run(function, **call["arguments"])
        return {"result": cut(result, call["limit"])}
    except BaseException as exc:  # SystemExit too: the tool's call failed, not the worker
        return {"error": cut(str(exc), MAX_MESSAGE), "type": type(exc).__name__}


def main() -> None:
    """Serve calls until stdin closes."""
    # The calls and replies go over copies of stdin and stdout that tool code and its children do not see: what a
    # tool prints goes to stderr, and what it reads from stdin is nothing (it cannot take the next call's line).
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    requests = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)
    nothing = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nothing, 0)
    os.close(nothing)
    calls: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def read() -> None:
        for line in requests:
            calls.put(line)
        os._exit(0)  # the parent is gone or done: stop, whatever runs

    threading.Thread(target=read, daemon=True).start()
    loaded: Loaded = {}
    for entry, base in json.loads(calls.get()):
        _load(entry, base, loaded)
    reply: dict[str, Any] = {"ready": True}
    while True:
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        reply = _serve(json.loads(calls.get()), loaded)


if __name__ == "__main__":  # run as the module tool code imports, so that both see the same context variables
    from engine.kernel.tool_code import main as serve

    serve()
