"""A process step: the model does something (with a tool, or a choice of tools), or `output` builds its output
from data; the run goes on at its `next`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.kinds.step_kind import StepKind

if TYPE_CHECKING:
    from engine.flow.loader import Document
    from engine.flow.model import Step


def output_on_chosen_tool(step: Step, doc: Document) -> Iterator[Diagnostic]:
    """FR107: `output` builds on the result of the step's one `tool`, so a choice of `tools` leaves it nothing."""
    if step.output is not None and step.tools and not step.tool:
        message = (f"step {step.id!r} chooses among tools, so what `output` would build on is unknown: name the "
                   "tool with `tool:` (`result` is then its result) or drop `output`")
        yield diagnostic("FR107", message, doc.file, doc.position(("steps", step.id, "output")))


KIND = StepKind(
    "process", checks=(output_on_chosen_tool,),
    no_way_on="step {id!r} has no `next` and is not a terminal: add `next:` or make it `kind: terminal`")
