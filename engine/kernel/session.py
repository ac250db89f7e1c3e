"""A run's session: what the kernel keeps for one run from Kernel.open_run to Kernel.close_run, and nothing longer,
so that a process serving runs for weeks does not grow with the runs it served."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.errors import RunFailure
from engine.kernel.journal import Journal
from engine.llm.base import Request


class LimitReached(RunFailure):
    """A run spent what its budget allows on the model; the message says which limit."""


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
