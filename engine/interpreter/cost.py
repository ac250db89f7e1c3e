"""What model calls cost at most: a number of calls and the tokens they may generate (Cost), and the price of each
kind of call a step makes (Prices). Each kind of step says what one try of it costs at most, next to how it runs
(engine.interpreter.steps); engine.interpreter.budget adds them up over a flow's graph."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.flow.model import Flow
from engine.kernel.kernel import SUMMARY_TOKENS

DEFAULT_MAX_TOKENS = 512  # per model call, unless the flow's model.options set max_tokens
CHOICE_MAX_TOKENS = 32  # a label, quoted


@dataclass(frozen=True)
class Cost:
    """At most `calls` model calls, generating at most `tokens` tokens."""

    calls: int = 0
    tokens: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.calls + other.calls, self.tokens + other.tokens)

    def __mul__(self, times: int) -> Cost:
        return Cost(self.calls * times, self.tokens * times)

    def most(self, other: Cost) -> Cost:
        """The larger of each: a bound of whichever of the two happens."""
        return Cost(max(self.calls, other.calls), max(self.tokens, other.tokens))


BodyCost = Callable[[str], "Cost"]  # the most a run of a step's body costs, by branch ("" for an agent's or a map's)


@dataclass(frozen=True)
class Prices:
    """The most each kind of model call of a flow's steps costs: an answer (text or data; under `context.policy:
    summarize`, with the summary of the progress it may need first), a tool's pick, a label."""

    answer: Cost
    pick: Cost
    label: Cost

    @classmethod
    def of(cls, flow: Flow) -> Prices:
        tokens = run_options(flow)["max_tokens"]
        summary = Cost(1, SUMMARY_TOKENS) if flow.context_policy == "summarize" else Cost()
        return cls(Cost(1, tokens) + summary, Cost(1, tokens), Cost(1, CHOICE_MAX_TOKENS))


def run_options(flow: Flow) -> dict[str, Any]:
    """The options of a run's model calls: the flow's model.options, with max_tokens by default."""
    return {"max_tokens": DEFAULT_MAX_TOKENS, **flow.model.get("options", {})}
