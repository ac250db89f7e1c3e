"""What a step does when it fails: its `timeout` bounds each try, its `retry` rules try it again after a backoff,
and its `catch` sends the run on to another step, the error kept for the templates after it (`error`).

A retry starts the step afresh, as resuming a failed run does and no more: the model is asked again, the tool results
the try before got are given back (RunSession.new_try), a child run that finished gives its answer again and one that
did not runs again, as a child of the new try (engine.interpreter.children). An error of no kind (a template that
cannot be rendered, storage that fails) is neither retried nor caught.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from engine.errors import ErrorKind, FlowrunError
from engine.events import StepRetrying
from engine.flow.kinds import KINDS
from engine.flow.model import ANY_ERROR, CATCH, Retry, Step
from engine.interpreter import steps  # the module: its kinds of step start child runs, which walk (a cycle)
from engine.interpreter.state import RunError, RunState, StepDone
from engine.kernel.kernel import Kernel


def delay(rule: Retry, retry: int, draw: Any = random.uniform) -> float:
    """Seconds to wait before retry number `retry` (from 1) under `rule`: min(max, initial * factor**(retry-1));
    with jitter, a random part of that (`draw(0, it)`)."""
    # a float overflows past factor**1023 or so, and any such wait is past any max
    wait = min(rule.max, rule.initial * rule.factor ** min(retry - 1, 64))
    return draw(0, wait) if rule.jitter else wait


async def run_step(kernel: Kernel, run: RunState, step: Step, visit: int) -> StepDone:
    """What visit `visit` of the run's `step` did: its executor's result, tried again as its `retry` says; or, when
    its `catch` catches the error that ended it, a StepDone with no output that takes the catch's way out."""
    session = kernel.runs.get(run.id)
    tries: dict[int, int] = {}  # rule -> the tries it counted, the first one among them
    run.attempt = 1
    run.ended_children.clear()
    while True:
        run.votes = []
        if session is not None:
            session.new_try(retry=run.attempt > 1)
        try:
            run.within_visits(step, visit)
            return await _once(kernel, run, step)
        except FlowrunError as exc:
            if exc.kind is None:
                raise
            rule = next((n for n, rule in enumerate(step.retry) if exc.kind in rule.on), None)
            if rule is not None and tries.setdefault(rule, 1) < step.retry[rule].max_attempts:
                tries[rule] += 1
                wait = delay(step.retry[rule], tries[rule] - 1)
                kernel.events.publish(StepRetrying(run.id, step=step.id, visit=visit, attempt=run.attempt,
                                                   kind=exc.kind, error=str(exc), delay=wait))
                await kernel.sleep(wait)
                run.attempt += 1
                continue
            key = exc.kind if exc.kind in step.catch else ANY_ERROR if ANY_ERROR in step.catch else None
            if key is None:
                raise
            caught = {"kind": str(exc.kind), "message": str(exc.args[0] if exc.args else exc), "step": step.id}
            return StepDone("", None, branch=CATCH + key, error=caught)


async def _once(kernel: Kernel, run: RunState, step: Step) -> StepDone:
    """One try of the step, within its `timeout`."""
    if step.timeout is None or KINDS[step.kind].waits:  # a wait's timeout is how long it waits (its executor's)
        return await steps.EXECUTORS[step.kind](kernel, run, step)
    try:
        async with asyncio.timeout(step.timeout) as timer:
            return await steps.EXECUTORS[step.kind](kernel, run, step)
    except TimeoutError:
        if not timer.expired():  # not this timeout's
            raise
        raise RunError(f"{run.file}: step {step.id} took longer than its timeout of {step.timeout:g} s",
                       kind=ErrorKind.STEP_TIMEOUT) from None
