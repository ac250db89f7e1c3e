"""A decision: exactly one of its `branches` is taken, chosen by the model, by its examples' vote, or by `decide`
from data; its answer is the label."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.kinds.step_kind import StepKind

if TYPE_CHECKING:
    from engine.flow.loader import Document
    from engine.flow.model import Step


def labels_differ(step: Step, doc: Document) -> Iterator[Diagnostic]:
    """FR105: the branch labels of a decision differ by more than case and spacing."""
    seen: dict[str, str] = {}
    for label in step.branches:
        norm = " ".join(label.split()).casefold()
        if norm in seen:
            message = f"branch labels {seen[norm]!r} and {label!r} differ only in case or spacing: merge or rename"
            yield diagnostic("FR105", message, doc.file, doc.position(("steps", step.id, "branches", label), key=True))
        seen.setdefault(norm, label)


def examples_answer_every_label(step: Step, doc: Document) -> Iterator[Diagnostic]:
    """FR110: a decision that chooses by its examples has an example answering each label."""
    if step.answer_by != "examples" or not step.examples or step.unused_examples():
        return
    answered = {example.answer for example in step.examples if isinstance(example.answer, str)}
    for label in step.branches:
        if label not in answered:
            message = (f"step {step.id!r} chooses by its examples, but none answers {label!r}, so the vote can never "
                       "choose it: add examples of questions it answers")
            yield diagnostic("FR110", message, doc.file, doc.position(("steps", step.id, "branches", label), key=True))


KIND = StepKind(
    "decision", chooses=True, checks=(labels_differ, examples_answer_every_label), mermaid='{{"{}"}}', dot="diamond",
    no_way_on="decision {id!r} has no branches, so the run cannot go on: add `branches`")
