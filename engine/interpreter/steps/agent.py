"""How an agent step runs: the flow it calls, as a child run (engine.interpreter.children); its answer is the
step's output."""

from __future__ import annotations

from engine.flow.model import Step
from engine.interpreter import children  # the module: its child runs walk steps again (a cycle of imports)
from engine.interpreter.cost import BodyCost, Cost, Prices
from engine.interpreter.state import RunState, StepDone
from engine.kernel.kernel import Kernel


async def run_agent(kernel: Kernel, run: RunState, step: Step) -> StepDone:
    """An agent step: the answer of the flow it calls, run as a child run."""
    assert step.body is not None  # a valid agent step has its `flow`
    [answer] = await children.run_children(kernel, run, step, [children.child_of(run, step, "", step.body)])
    return StepDone(step.body.flow or step.id, answer)


def agent_cost(step: Step, prices: Prices, body: BodyCost) -> Cost:
    """The most one try of an agent step costs: a run of the flow it calls."""
    return body("")
