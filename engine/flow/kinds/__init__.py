"""The kinds of step, one module each (process, decision, terminal, agent, parallel, map, input), each a StepKind:
how the run goes on from a step of it, what its answer is, the checks only its steps need, how it is drawn.

How a kind runs is the interpreter's, under the same name (engine.interpreter.steps); the fields it takes are its
part of the flow schema (schemas/flow.schema.json). Data flows down (flow -> interpreter), so adding a kind is a
module here, its executor and its schema part; tests/test_compiler.py holds the three to the same names."""

from __future__ import annotations

from engine.flow.kinds import agent, decision, input, map, parallel, process, terminal
from engine.flow.kinds.step_kind import StepKind

KINDS: dict[str, StepKind] = {kind.name: kind for kind in (process.KIND, decision.KIND, terminal.KIND, agent.KIND,
                                                          parallel.KIND, map.KIND, input.KIND)}


def ends_run(kind: str) -> bool:
    """Whether a step of `kind` ends the run (False for a kind that does not exist)."""
    return kind in KINDS and KINDS[kind].ends_run


def chooses(kind: str) -> bool:
    """Whether a step of `kind` answers with one of its branch labels (False for a kind that does not exist)."""
    return kind in KINDS and KINDS[kind].chooses
