"""An agent step: another flow runs as a child run (its own agent, tools and memory); its answer is the step's
output, and the run goes on at the step's `next`."""

from __future__ import annotations

from engine.flow.kinds.step_kind import StepKind

KIND = StepKind(
    "agent", mermaid='[["{}"]]', dot="box, peripheries=2, style=dashed",
    no_way_on="step {id!r} has no `next`, so the run cannot go on after the flow it calls: add `next:`")
