"""A run's journal: the model answers and tool results it already got, given back instead of asking again.

Resuming a run, the journal holds what its unfinished step got before the process stopped (so a model answer or
tool result that was stored is reused, and a snapshot of a suspended generation is continued); a request it does
not hold in that order ends the journal and the run goes on live. Replaying a run, it holds everything the run got,
and is strict: a request it does not hold is a divergence.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import RunFailure
from engine.llm.base import Snapshot, sampled


class Divergence(RunFailure):
    """A replayed run asked for something the recorded run did not; the message says what and where."""


@dataclass(frozen=True)
class RecordedAnswer:
    """A model answer as recorded: its request key, its text, and its syscall's id."""

    key: str
    text: str
    id: str | None = None


@dataclass(frozen=True)
class RecordedTool:
    """A tool call as recorded: the result, or the error it raised, its row id and its syscall's id."""

    tool: str
    arguments: Any
    result: Any = None
    error: str | None = None
    id: int | None = None
    syscall: str | None = None
    kind: str | None = None  # its error's (engine.errors.ErrorKind)


@dataclass
class Journal:
    """Recorded model answers in the order asked, and tool calls in the order made.

    What a resumed run will not use (it went another way) is handed to `supersede` (syscall ids, tool call ids),
    which marks it in storage, so that a replay or an export of the run leaves it out. A replay's journal also
    holds the journals of the run's child runs, by their place in it (engine.interpreter.children.place_of).
    """

    answers: deque[RecordedAnswer] = field(default_factory=deque)
    tools: deque[RecordedTool] = field(default_factory=deque)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)  # by request key: where a generation stopped
    pending: list[RecordedTool] = field(default_factory=list)  # started, their result not stored
    strict: bool = False
    children: dict[str, Journal] = field(default_factory=dict)  # a replay's: each child run's, by its place
    memory: dict[str, Any] | None = None  # a replay's: what the recorded run read of its flow's memory
    # a test case's: the tool calls answered for child runs, by their scope (`search.web.`, `each[2].`), handed down;
    # a child's journal takes its scope's deque itself, so that a child run again (a retry) goes on from what is left
    given: dict[str, deque[RecordedTool]] = field(default_factory=dict)
    supersede: Callable[[list[str], list[int]], None] = lambda calls, tools: None

    def answer(self, key: str) -> str | None:
        """The next recorded answer if it was for a request with `key`; else None (strict: Divergence).

        Samples of one request (engine.llm.base.sample_key), drawn at once, may ask in any order: each takes the
        first answer with its key among the samples of that request recorded next, and one not recorded leaves the
        others theirs.
        """
        at = self._find(key)
        if at is not None:
            found = self.answers[at]
            del self.answers[at]
            return found.text
        if self.strict:
            recorded = f"the recorded run asked for {self.answers[0].key!r} here" if self.answers else \
                "the recorded run asked the model nothing more"
            raise Divergence(f"a model call for {key!r}, but {recorded}")
        if self.answers and sampled(self.answers[0].key) == sampled(key) is not None:
            return None  # a sample the run did not get an answer for before it stopped
        if self.answers:  # what follows was answered for another path, and so was any snapshot
            self.supersede([a.id for a in self.answers if a.id is not None], [])
            self.answers.clear()
            self.snapshots.clear()
        return None

    def _find(self, key: str) -> int | None:
        """Where the answer for `key` is: first, or (for a sample) among the samples of its request that come first."""
        of = sampled(key)
        for n, recorded in enumerate(self.answers):
            if recorded.key == key:
                return n
            if of is None or sampled(recorded.key) != of:
                return None
        return None

    def drop_unused(self) -> None:
        """Supersede what is left (the run ended without needing it)."""
        calls, tools = [a.id for a in self.answers if a.id is not None], [t.id for t in self.tools if t.id is not None]
        if calls or tools:  # most runs: nothing, and a write with nothing in it still cost a transaction
            self.supersede(calls, tools)
        self.answers.clear()
        self.tools.clear()

    def snapshot(self, key: str) -> Snapshot | None:
        """Where the recorded run's generation for `key` was suspended, if it was (handed over once)."""
        return self.snapshots.pop(key, None)

    def unrecorded(self, name: str, arguments: Any) -> int | None:
        """The stored id of a call of `name` with `arguments` that started but whose result was not stored, if
        there is one (handed over once): calling it again keeps its id, and so its key."""
        for n, call in enumerate(self.pending):
            if (call.tool, call.arguments) == (name, arguments):
                del self.pending[n]
                return call.id
        return None

    def tool(self, name: str, arguments: Any) -> RecordedTool | None:
        """The next recorded call if it was `name` with `arguments`; else None (strict: Divergence)."""
        if self.tools and (self.tools[0].tool, self.tools[0].arguments) == (name, arguments):
            return self.tools.popleft()
        if self.strict:
            recorded = f"the recorded run called {self.tools[0].tool} with {self.tools[0].arguments} here" \
                if self.tools else "the recorded run called no more tools"
            raise Divergence(f"a call of {name} with {arguments}, but {recorded}")
        if self.tools:
            self.supersede([], [t.id for t in self.tools if t.id is not None])
            self.tools.clear()
        return None
