"""StepKind: what the flow layer knows of a kind of step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model imports the kinds: these are for the annotations only
    from engine.flow.diagnostics import Diagnostic
    from engine.flow.loader import Document
    from engine.flow.model import Step

Check = Callable[["Step", "Document"], Iterator["Diagnostic"]]  # located diagnostics of one step of the kind


@dataclass(frozen=True)
class StepKind:
    name: str
    ends_run: bool = False  # its output is the run's answer; a way on from it is an error (FR106), not an edge
    chooses: bool = False  # its answer is one of its branch labels (the route it takes), not its output data
    no_way_on: str = ""  # why a step of this kind with no way on stops the run (FR103), with {id} for the step
    waits: bool = False  # it waits for a person: its `timeout` is how long, not a bound of its work
    checks: tuple[Check, ...] = ()  # run on each step of the kind, besides the checks every step gets
    mermaid: str = '["{}"]'  # the node's shape in Mermaid, {} for its label
    dot: str = "box"  # the node's shape attributes in Graphviz DOT
