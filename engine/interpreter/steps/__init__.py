"""The kinds of step (engine.flow.kinds), each with how it runs: a function of the kernel, the run's state and the
step that returns what the step did (StepDone), which the walk (engine.interpreter.walk) calls by kind; and what
one try of it costs at most in model calls (engine.interpreter.budget adds those up)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from engine.flow.model import Step
from engine.interpreter.cost import BodyCost, Cost, Prices
from engine.interpreter.state import RunState, StepDone
from engine.interpreter.steps.agent import agent_cost, run_agent
from engine.interpreter.steps.decision import decision_cost, run_decision
from engine.interpreter.steps.input import input_cost, run_input
from engine.interpreter.steps.map import map_cost, run_map
from engine.interpreter.steps.parallel import parallel_cost, run_parallel
from engine.interpreter.steps.process import process_cost, run_process
from engine.kernel.kernel import Kernel

EXECUTORS: dict[str, Callable[[Kernel, RunState, Step], Awaitable[StepDone]]] = {
    "process": run_process, "terminal": run_process, "decision": run_decision, "agent": run_agent,
    "parallel": run_parallel, "map": run_map, "input": run_input,
}
COSTS: dict[str, Callable[[Step, Prices, BodyCost], Cost]] = {
    "process": process_cost, "terminal": process_cost, "decision": decision_cost, "agent": agent_cost,
    "parallel": parallel_cost, "map": map_cost, "input": input_cost,
}
