"""A map step: its body (a sub-flow or another flow) runs once per item of `items` as child runs; its output is the
list of their answers in item order, and the run goes on at its `next`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.kinds.step_kind import StepKind
from engine.jsontext import parse_json

if TYPE_CHECKING:
    from engine.flow.loader import Document
    from engine.flow.model import Step


def items_are_a_list(step: Step, doc: Document) -> Iterator[Diagnostic]:
    """FR126: `items` written as a constant is a JSON array."""
    if step.items is None:
        return
    try:
        value = parse_json(step.items)
    except ValueError:  # a template (its markup is not JSON), or text
        value = None if "{" in step.items else step.items
    if value is not None and not isinstance(value, list):
        message = (f"step {step.id!r} maps over {step.items!r}, which is not a list: give a template that renders "
                   "to a JSON array, e.g. \"{{ steps.plan.output.items }}\"")
        yield diagnostic("FR126", message, doc.file, doc.position(("steps", step.id, "items")))


KIND = StepKind(
    "map", checks=(items_are_a_list,), mermaid='[/"{}"/]', dot="parallelogram",
    no_way_on="step {id!r} has no `next`, so the run cannot go on after its items: add `next:`")
