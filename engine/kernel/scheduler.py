"""The scheduler: shares one model backend's slots among the LLM syscalls of many agents.

Event-driven: work is dispatched when a syscall arrives and when a generation ends or is suspended; there is no
polling loop and no sleep. Policies:
- fifo: in order of arrival, each to the end;
- rr: in order of arrival, but a generation whose slice (`slice_tokens` generated tokens) ran out while others
  wait is suspended through the context manager and requeued at the tail;
- priority: the highest `priority` first; every syscall passed over gains `aging`, so none waits forever.
The backend's `slots` bound how many generations run at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from engine.events import EventBus, SyscallQueued, SyscallStarted, SyscallSuspended
from engine.kernel.context import ContextManager
from engine.kernel.syscall import Syscall
from engine.llm.base import Backend, Result


class Policy(StrEnum):
    FIFO = "fifo"
    RR = "rr"
    PRIORITY = "priority"


@dataclass
class _Waiting:
    syscall: Syscall
    done: asyncio.Future[Result]
    order: int  # arrival order; a requeued generation gets a new one (the tail)
    boost: int = 0  # aging gained while passed over
    since: float = field(default_factory=time.time)  # when it was queued, or requeued


@dataclass
class Scheduler:
    """Runs LLM syscalls on `backend` under `policy`."""

    backend: Backend
    policy: Policy = Policy.FIFO
    slice_tokens: int = 32
    aging: int = 1
    context: ContextManager = field(default_factory=ContextManager)
    events: EventBus = field(default_factory=EventBus)

    def __post_init__(self) -> None:
        self._ready: list[_Waiting] = []
        self._running = 0
        self._order = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self.generated: Counter[str] = Counter()  # tokens generated so far, by run (for progress displays)

    @property
    def waiting(self) -> int:
        """How many syscalls are queued (new or suspended)."""
        return len(self._ready)

    @property
    def running(self) -> int:
        """How many generations hold a slot now."""
        return self._running

    async def submit(self, syscall: Syscall) -> Result:
        """Queue `syscall` and wait for its result; its timings and counts are kept on it."""
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        waiting = _Waiting(syscall, done, next(self._order))
        self._ready.append(waiting)
        key = syscall.request.key if syscall.request is not None else ""
        self.events.publish(SyscallQueued(syscall.run, syscall=syscall.id, kind=syscall.kind, key=key))
        self._dispatch()
        try:
            return await done
        except asyncio.CancelledError:  # its run stopped: nobody waits for what it asked any more
            if waiting in self._ready:
                self._ready.remove(waiting)
            raise

    def _dispatch(self) -> None:
        while self._running < self.backend.slots and self._ready:
            waiting = self._next()
            self._running += 1
            # started when given the slot, not when its task first runs: a syscall queued in between was not
            # there to be chosen, and its event must not come before this one's
            began = time.time()
            self.events.publish(SyscallStarted(waiting.syscall.run, syscall=waiting.syscall.id,
                                               waiting=began - waiting.since))
            task = asyncio.get_running_loop().create_task(self._run(waiting, began))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _next(self) -> _Waiting:
        if self.policy is not Policy.PRIORITY:
            return self._ready.pop(0)  # kept in arrival order: new and requeued syscalls are appended
        best = max(self._ready, key=lambda w: (w.syscall.priority + w.boost, -w.order))
        self._ready.remove(best)
        for passed_over in self._ready:
            passed_over.boost += self.aging
        return best

    async def _run(self, waiting: _Waiting, began: float) -> None:
        syscall = waiting.syscall
        if syscall.started is None:
            syscall.started = began
        used = 0

        def on_token(_: str) -> bool:
            nonlocal used
            used += 1
            syscall.tokens += 1
            if syscall.first_token is None:
                syscall.first_token = time.time()
            if waiting.done.cancelled():  # nobody waits for it any more (its run stopped, its step timed out)
                return True
            self.generated[syscall.run] += 1
            return self.policy is Policy.RR and used >= self.slice_tokens and bool(self._ready)

        try:
            assert syscall.request is not None, "an LLM syscall carries a request"
            resume = self.context.restore(syscall)
            result = await self.backend.generate(syscall.request, on_token, resume)
        except Exception as exc:  # the caller gets the error; the slot goes to the next syscall
            syscall.finished = time.time()
            syscall.slices.append((began, syscall.finished))
            if not waiting.done.cancelled():
                waiting.done.set_exception(exc)
        else:
            syscall.slices.append((began, time.time()))
            if syscall.input_tokens is None and result.prompt_tokens:  # a slice stopped early may not say
                # a resumed slice's prompt ends with the text generated before it
                syscall.input_tokens = max(result.prompt_tokens - (resume.tokens if resume else 0), 0)
            if result.finish == "suspended" and result.snapshot is not None:
                syscall.preemptions += 1
                try:
                    await asyncio.to_thread(self.context.suspend, syscall, result.snapshot)  # may write to storage
                except Exception as exc:  # not stored (storage failed, or the run was taken over): its caller hears
                    syscall.finished = time.time()
                    if not waiting.done.cancelled():
                        waiting.done.set_exception(exc)
                    return
                self.events.publish(SyscallSuspended(syscall.run, syscall=syscall.id, tokens=syscall.tokens))
                if waiting.done.cancelled():  # stored (prune removes its KV file), not queued again
                    self.context.restore(syscall)
                else:
                    waiting.order, waiting.since = next(self._order), time.time()
                    self._ready.append(waiting)
            else:
                syscall.finished = syscall.slices[-1][1]
                syscall.result = result
                if not waiting.done.cancelled():  # a caller that gave up does not stop the others
                    waiting.done.set_result(result)
        finally:
            self._running -= 1
            self._dispatch()
