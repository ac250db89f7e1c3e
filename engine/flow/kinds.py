"""The kinds of step, one entry each: what the flow layer needs to know of a kind (how the run goes on from it,
what its answer is, how it is drawn). How a kind runs is the interpreter's (engine.interpreter.steps), under the
same name; its fields are in the flow schema. Adding a kind is an entry here, its executor and its schema."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepKind:
    name: str
    ends_run: bool = False  # its output is the run's answer; a way on from it is an error (FR106), not an edge
    chooses: bool = False  # its answer is one of its branch labels (the route it takes), not its output data
    no_way_on: str = ""  # why a step of this kind with no way on stops the run (FR103), with {id} for the step
    mermaid: str = '["{}"]'  # the node's shape in Mermaid, {} for its label
    dot: str = "box"  # the node's shape attributes in Graphviz DOT


KINDS: dict[str, StepKind] = {kind.name: kind for kind in (
    StepKind("process",
             no_way_on="step {id!r} has no `next` and is not a terminal: add `next:` or make it `kind: terminal`"),
    StepKind("decision", chooses=True, mermaid='{{"{}"}}', dot="diamond",
             no_way_on="decision {id!r} has no branches, so the run cannot go on: add `branches`"),
    StepKind("terminal", ends_run=True, mermaid='(["{}"])', dot="box, style=rounded, peripheries=2"),
)}


def ends_run(kind: str) -> bool:
    """Whether a step of `kind` ends the run (False for a kind that does not exist)."""
    return kind in KINDS and KINDS[kind].ends_run


def chooses(kind: str) -> bool:
    """Whether a step of `kind` answers with one of its branch labels (False for a kind that does not exist)."""
    return kind in KINDS and KINDS[kind].chooses
