"""Run events: what happens in a run, as typed events numbered per run, published on a bus that front ends (the
console, a server's event stream, telemetry) subscribe to instead of polling.

The interpreter publishes the run and step events, the kernel those of its syscalls and tool calls. A subscriber
gets the events of one run in order, each once: those it missed (after the sequence number it last saw) first,
then the new ones as they come, until the run's end. The bus keeps a run's events only while the run is open;
storage keeps the numbers of its step.ended and run.ended events, from which engine.service rebuilds those, and a
resumed run numbers its events on from where it stopped (`open`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

OUTPUT_ROOM = 200  # characters of a step's output an event carries


@dataclass(frozen=True)
class Event:
    """Something that happened in run `run`: `seq` numbers the run's events from 1 (set when published)."""

    type: ClassVar[str] = "event"
    run: str
    seq: int = 0
    at: float = field(default_factory=time.time)

    def data(self) -> dict[str, Any]:
        """The event as JSON data, with its type (not the fields kept for subscribers in this process)."""
        return {"type": self.type, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}}


@dataclass(frozen=True)
class RunStarted(Event):
    type: ClassVar[str] = "run.started"
    agent: str = ""
    flow: str = ""
    created: float = 0.0  # when the run was first stored


@dataclass(frozen=True)
class RunEnded(Event):
    type: ClassVar[str] = "run.ended"
    status: str = ""
    error: str | None = None
    tokens: int = 0  # generated in all


@dataclass(frozen=True)
class StepStarted(Event):
    type: ClassVar[str] = "step.started"
    step: str = ""
    visit: int = 0


@dataclass(frozen=True)
class StepEnded(Event):
    type: ClassVar[str] = "step.ended"
    step: str = ""
    visit: int = 0
    branch: str | None = None
    output: str = ""  # the start of it, as text
    tokens: int = 0
    kind: str = ""
    error: dict[str, Any] | None = None  # the error its `catch` caught: {kind, message, step}
    value: Any = field(default=None, repr=False, compare=False)  # the whole output, for this process only


@dataclass(frozen=True)
class InputRequired(Event):
    """An input step asks a person `prompt`: the answer is one of `labels`, or data matching `schema` (None: text),
    before `deadline` (seconds since the epoch; None: no timeout). The run then stops as waiting."""

    type: ClassVar[str] = "input.required"
    step: str = ""
    visit: int = 0
    key: str = ""  # its request key: the step id, after a child run's place (`--step` of `runs answer` takes it)
    asker: str = ""  # the run that asks: this one, or (on the stream of the run a user started) a child run of it
    prompt: str = ""
    schema: dict[str, Any] | None = None
    labels: list[str] = field(default_factory=list)
    deadline: float | None = None


@dataclass(frozen=True)
class StepRetrying(Event):
    """A try of a step failed with an error its `retry` tries again: the next try starts after `delay` seconds."""

    type: ClassVar[str] = "step.retrying"
    step: str = ""
    visit: int = 0
    attempt: int = 0  # the try that failed, from 1
    kind: str = ""  # its error's (engine.errors.ErrorKind)
    error: str = ""
    delay: float = 0.0


@dataclass(frozen=True)
class SyscallQueued(Event):
    type: ClassVar[str] = "syscall.queued"
    syscall: str = ""
    kind: str = ""
    key: str = ""


@dataclass(frozen=True)
class SyscallStarted(Event):
    type: ClassVar[str] = "syscall.started"
    syscall: str = ""
    waiting: float = 0.0  # seconds since it was queued (or suspended)


@dataclass(frozen=True)
class SyscallSuspended(Event):
    type: ClassVar[str] = "syscall.suspended"
    syscall: str = ""
    tokens: int = 0  # generated so far


@dataclass(frozen=True)
class SyscallEnded(Event):
    type: ClassVar[str] = "syscall.ended"
    syscall: str = ""
    kind: str = ""
    waiting: float | None = None  # seconds from queued to first started
    running: float = 0.0  # seconds it held a model slot (or ran, for tool, memory and storage syscalls)
    tokens: int = 0
    input_tokens: int | None = None  # a model call's prompt, where its backend counted it
    first_token: float | None = None  # seconds from a model call's first start to its first token
    error: str | None = None


@dataclass(frozen=True)
class ToolStarted(Event):
    type: ClassVar[str] = "tool.started"
    tool: str = ""
    syscall: str = ""


@dataclass(frozen=True)
class ToolEnded(Event):
    type: ClassVar[str] = "tool.ended"
    tool: str = ""
    syscall: str = ""
    error: str | None = None


@dataclass
class _Run:
    first: int = 1  # the number of events[0]
    events: list[Event] = field(default_factory=list)
    waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)  # one a subscriber
    ended: bool = False

    def next(self) -> int:
        return self.first + len(self.events)


class EventBus:
    """Publishes each run's events to its subscribers, and to `listeners` (called with every event in the
    publisher's thread: they must be quick). Events may be published from any thread."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()  # the kernel records memory and storage syscalls on worker threads
        self.listeners: list[Callable[[Event], None]] = []

    def open(self, run: str, after: int) -> None:
        """Number the events of `run` from after `after` (a resumed run's events go on from its stored ones)."""
        with self._lock:
            self._runs[run] = _Run(first=after + 1)

    def next_seq(self, run: str) -> int:
        """The number the next event of `run` will have (so that a record stored before it is published can say
        it: the run's own walk publishes it next)."""
        with self._lock:
            found = self._runs.get(run)
            return 1 if found is None else found.next()

    def first_seq(self, run: str) -> int | None:
        """The number of the first event of `run` the bus keeps, or None when it keeps none (the run is not open
        in this process)."""
        with self._lock:
            found = self._runs.get(run)
            return None if found is None else found.first

    def publish(self, event: Event) -> Event:
        """Number `event` (a new one: the bus keeps it) as the next of its run and hand it to the run's
        subscribers; the numbered event."""
        with self._lock:  # every step publishes several: kept lean (a copy of the event cost 0.1 ms a step)
            run = self._runs.get(event.run) or self._runs.setdefault(event.run, _Run())
            object.__setattr__(event, "seq", run.first + len(run.events))  # frozen for subscribers
            run.events.append(event)
            run.ended = run.ended or isinstance(event, RunEnded)
            waiters = list(run.waiters) if run.waiters else None
        if waiters:
            _wake(waiters)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception as exc:  # an observer's failure (metrics, say) must not end the run it observes
                print(f"flowrun: a listener of run events failed on {event.type}: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
        return event

    def forget(self, run: str) -> None:
        """Drop what the bus keeps of `run` (it ended); its subscribers still get what they have not yet seen."""
        with self._lock:
            found = self._runs.pop(run, None)
            if found is None:
                return
            found.ended = True
            waiters = list(found.waiters)
        _wake(waiters)

    def __len__(self) -> int:
        """How many runs the bus keeps events of."""
        return len(self._runs)

    async def subscribe(self, run: str, after: int = 0) -> AsyncIterator[Event]:
        """The events of `run` numbered above `after` that the bus keeps, as they come, until its end (nothing for
        a run the bus does not keep)."""
        with self._lock:
            found = self._runs.get(run)
            if found is None:
                return
            waiter = (asyncio.get_running_loop(), asyncio.Event())
            found.waiters.add(waiter)
        sent, wake = max(after, found.first - 1), waiter[1]
        try:
            while True:
                wake.clear()  # before looking, so that an event published after the look wakes the wait
                if sent < found.next() - 1:
                    for event in found.events[sent - found.first + 1:]:
                        sent = event.seq
                        yield event
                    continue
                if found.ended:
                    return
                await wake.wait()
        finally:
            found.waiters.discard(waiter)


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:  # a worker thread
        here = None
    for loop, wake in waiters:
        if loop is here:
            wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)


def short(value: Any) -> str:
    """`value` as text for an event, cut to OUTPUT_ROOM characters."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= OUTPUT_ROOM else text[: OUTPUT_ROOM - 1] + "…"
