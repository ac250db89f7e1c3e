"""The kinds of step (engine.flow.kinds), each with how it runs: a function of the kernel, the run's state and the
step that returns what the step did (StepDone). The walk (engine.interpreter.walk) calls them by kind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from engine.flow.model import Step
from engine.interpreter.state import RunState, StepDone
from engine.interpreter.steps.agent import run_agent
from engine.interpreter.steps.decision import run_decision
from engine.interpreter.steps.map import run_map
from engine.interpreter.steps.parallel import run_parallel
from engine.interpreter.steps.process import run_process
from engine.kernel.kernel import Kernel

EXECUTORS: dict[str, Callable[[Kernel, RunState, Step], Awaitable[StepDone]]] = {
    "process": run_process, "terminal": run_process, "decision": run_decision, "agent": run_agent,
    "parallel": run_parallel, "map": run_map,
}
