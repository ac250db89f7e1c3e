"""How a map step runs: its `items` rendered to a list, then its body once per item as a child run
(engine.interpreter.children), with `item` and `index` in its templates, all at once up to its `max_concurrency`;
its output is the list of their answers, in item order."""

from __future__ import annotations

from typing import Any

from engine.errors import ErrorKind
from engine.flow.model import Step
from engine.interpreter import children  # the module: its child runs walk steps again (a cycle of imports)
from engine.interpreter.cost import BodyCost, Cost, Prices
from engine.interpreter.state import RunError, RunState, StepDone
from engine.jsontext import json_or_text
from engine.kernel.kernel import Kernel


async def run_map(kernel: Kernel, run: RunState, step: Step) -> StepDone:
    """A map step: the answers of its body for each of its items (None for an item that failed, where
    tolerated)."""
    assert step.body is not None and step.items is not None  # a valid map step has both
    items = _items(run, step)
    started = [children.child_of(run, step, str(n), step.body, names={"item": item, "index": n})
                for n, item in enumerate(items)]
    return StepDone(f"{len(items)} items", await children.run_children(kernel, run, step, started))


def _items(run: RunState, step: Step) -> list[Any]:
    """The step's items: its `items` template's value, a list, or text that is a JSON array; at most max_items."""
    value = run.value(step, "items", step.items or "", {})
    if isinstance(value, str):
        value = json_or_text(value)
    if not isinstance(value, list):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:79] + "…"
        raise RunError(f"{run.at(step, 'items')}: step {step.id}: its items are {shown}, not a list: `items` must "
                       "render to a JSON array", kind=ErrorKind.BAD_OUTPUT)
    if len(value) > step.max_items:
        raise RunError(f"{run.at(step, 'items')}: step {step.id}: {len(value)} items, more than its max_items "
                       f"({step.max_items}): raise max_items if the flow needs more", kind=ErrorKind.LIMIT)
    return value


def map_cost(step: Step, prices: Prices, body: BodyCost) -> Cost:
    """The most one try of a map step costs: a run of its body for each of max_items items."""
    return body("") * step.max_items
