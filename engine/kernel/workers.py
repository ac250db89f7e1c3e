"""Worker processes for tool code, so that a call can be stopped: a call past its timeout, or cancelled (Ctrl-C),
has its worker killed.

A worker loads all the tools' code when it starts (within START_TIMEOUT, not a call's timeout), serves one call
at a time and is reused after a call that ended. Workers start when calls need them (and at once to replace one
killed after a timeout); the tool manager's concurrency limits bound how many calls run at once. A worker sees
the module search path, environment and working directory this process had when it started it. What crosses is
JSON (see engine.kernel.tool_code, which runs in the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from engine.kernel.tool_code import ToolError

START_TIMEOUT = 60  # seconds for a worker to start and load its tools' code, however busy the machine


class _Worker:
    """One worker process, and the blocking exchange of one call with it."""

    def __init__(self, code: list[tuple[str, str]]) -> None:
        search = os.pathsep.join(p or os.getcwd() for p in sys.path)  # where this process finds modules
        self.process = subprocess.Popen([sys.executable, "-P", "-m", "engine.kernel.tool_code"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env={**os.environ, "PYTHONPATH": search},
                                        start_new_session=True)  # a terminal's Ctrl-C is flowrun's to handle
        self.ready = False  # it has said so
        self.calls: IO[bytes] = self.process.stdin  # type: ignore[assignment]
        self.replies: IO[bytes] = self.process.stdout  # type: ignore[assignment]
        self.calls.write(json.dumps(code).encode() + b"\n")  # what to load first
        self.calls.flush()

    def reply(self, request: bytes | None = None) -> dict[str, Any]:
        """Send `request` (if any) and read the worker's next line: its reply, or first that it is ready."""
        try:
            if request is not None:
                self.calls.write(request)
                self.calls.flush()
            line = self.replies.readline()
        except OSError:  # it was killed while the request was written
            line = b""
        if not line:
            raise ToolError(f"its worker process ended (exit status {self.process.wait()})")
        return json.loads(line)

    def kill(self) -> None:
        """Kill the worker and what its tool code started (they share its process group, its session's)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


class WorkerPool:
    """Worker processes, started as calls need them and reused."""

    def __init__(self, code: list[tuple[str, str]], calls: int) -> None:
        self.code = code  # [entry, base] of the tools a worker may run, loaded when it starts
        self._idle: list[_Worker] = []
        # A thread waits on each call in flight (and on a starting worker): threads of their own, as many as the
        # tools' concurrency allows, so that calls never wait for a thread (asyncio's default pool is small and
        # shared, with the embedded model among others) while their timeout runs.
        self._threads = ThreadPoolExecutor(max_workers=calls + 1, thread_name_prefix="flowrun-tool-call")

    async def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The reply of a worker to `request`: {"result": ...} or {"error": message, "type": exception name}.

        Raises TimeoutError after `timeout` seconds; that, or cancelling the call, kills the worker running it.
        """
        worker = self._take() or _Worker(self.code)
        loop = asyncio.get_running_loop()
        try:
            if not worker.ready:  # its start does not count against the call's time
                try:
                    await asyncio.wait_for(loop.run_in_executor(self._threads, worker.reply), START_TIMEOUT)
                except TimeoutError:
                    raise ToolError(f"its worker process did not start and load the tools' code within "
                                    f"{START_TIMEOUT} s") from None
                worker.ready = True
            call = json.dumps(request).encode() + b"\n"
            reply = await asyncio.wait_for(loop.run_in_executor(self._threads, worker.reply, call), timeout)
        except BaseException as exc:
            worker.kill()  # its thread reads the end of the pipe, reaps it and ends
            if isinstance(exc, TimeoutError):  # the next call, likely of the same tool, need not wait for a start
                self._idle.append(_Worker(self.code))
            raise
        self._idle.append(worker)
        return reply

    def _take(self) -> _Worker | None:
        """An idle worker still alive, if there is one."""
        while self._idle:
            worker = self._idle.pop()
            if worker.process.poll() is None:
                return worker
        return None

    def close(self) -> None:
        """End the idle workers and what their tools left running (not waited for, to end this process fast)."""
        for worker in self._idle:
            worker.kill()
        self._idle.clear()
        self._threads.shutdown(wait=False)
