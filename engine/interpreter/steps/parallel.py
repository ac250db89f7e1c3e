"""How a parallel step runs: each branch as a child run (engine.interpreter.children), all at once up to its
`max_concurrency`; its output is {branch: answer}, in the order the branches are written."""

from __future__ import annotations

from engine.flow.model import Step
from engine.interpreter import children  # the module: its child runs walk steps again (a cycle of imports)
from engine.interpreter.cost import BodyCost, Cost, Prices
from engine.interpreter.state import RunState, StepDone
from engine.kernel.kernel import Kernel


async def run_parallel(kernel: Kernel, run: RunState, step: Step) -> StepDone:
    """A parallel step: the answers of its branches, by name (None for a branch that failed, where tolerated)."""
    started = [children.child_of(run, step, name, body) for name, body in step.parallel.items()]
    answers = await children.run_children(kernel, run, step, started)
    return StepDone(", ".join(step.parallel), dict(zip(step.parallel, answers, strict=True)))


def parallel_cost(step: Step, prices: Prices, body: BodyCost) -> Cost:
    """The most one try of a parallel step costs: a run of each branch."""
    return sum((body(name) for name in step.parallel), Cost())
