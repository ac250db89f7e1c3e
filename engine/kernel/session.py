"""A run's session: what the kernel keeps for one run from Kernel.open_run to Kernel.close_run, and nothing longer,
so that a process serving runs for weeks does not grow with the runs it served."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.errors import ErrorKind, RunFailure
from engine.kernel.journal import Journal
from engine.kernel.tools import ToolCall
from engine.llm.base import Request


class LimitReached(RunFailure):
    """A run spent what its budget allows on the model; the message says which limit."""

    kind = ErrorKind.LIMIT


@dataclass
class Budget:
    """What a run may spend on the model, its child runs with it (they share one): `calls` model calls and
    `tokens` generated tokens at most (None: no bound); `called` and `generated` are what they spent so far, and
    `held` the tokens granted to calls still generating (calls at once share what is left, never spend it twice)."""

    calls: int | None = None
    tokens: int | None = None
    called: int = 0
    generated: int = 0
    held: int = 0

    def charge(self, request: Request) -> tuple[Request, int]:
        """Count `request` as a model call, its max_tokens cut to the tokens left (and held for it until `settle`);
        the request and the tokens held. LimitReached when no call or no token is left."""
        if self.calls is not None and self.called >= self.calls:
            raise LimitReached(f"the run has made limits.max_model_calls ({self.calls}) model calls, its child "
                               "runs' included, and would make another: raise the limit if the flow needs more")
        held = 0
        if self.tokens is not None:
            left = self.tokens - self.generated - self.held
            if left <= 0:
                raise LimitReached(f"the run has generated limits.max_tokens ({self.tokens}) tokens, its child "
                                   "runs' included (or holds them for calls under way), and would ask the model "
                                   "again: raise the limit if the flow needs more")
            asked = request.options.get("max_tokens")
            held = left if asked is None else min(asked, left)
            request = replace(request, options={**request.options, "max_tokens": held})
            self.held += held
        self.called += 1
        return request, held

    def settle(self, held: int, generated: int) -> None:
        """A call that held `held` tokens ended, having generated `generated`."""
        self.held -= held
        self.generated += generated


@dataclass
class RunSession:
    """A run open in the kernel. Its grants are its own: two runs of flows with the same name (agent) share
    nothing but the agent's long-term memory and storage."""

    id: str
    agent: str
    tools: frozenset[str]  # the tools its flow lists, which it may call (a privilege group may grant more)
    workspace: Path  # the directory its tools read and write in
    journal: Journal | None = None  # what a resumed or replayed run already got, given back first
    priority: int = 0  # of its model calls, unless a call says otherwise
    agents: frozenset[str] = frozenset()  # the agents it may start child runs of (its flow's `agents`)
    budget: Budget = field(default_factory=Budget)  # what it may spend on the model (shared with its children)
    root: str = ""  # the run a user started, of whose tree it is
    made: list[ToolCall] = field(default_factory=list)  # the calls its step's try made that gave a result
    again: deque[ToolCall] = field(default_factory=deque)  # those of the try before, which a retry gets back

    def new_try(self, *, retry: bool) -> None:
        """A try of the run's step starts: a `retry` of the step gets back, in their order, the tool results the
        try before it got (as a failed run resumed does), and does not call those tools again."""
        self.again = deque(self.made) if retry else deque()
        self.made = []

    def given_back(self, name: str, arguments: Any) -> ToolCall | None:
        """The result of the call of tool `name` with `arguments` that the step's try before made, if it is the
        next one it made (any other call ends what is given back)."""
        if self.again and (self.again[0].tool, self.again[0].arguments) == (name, arguments):
            return self.again.popleft()
        self.again.clear()
        return None
