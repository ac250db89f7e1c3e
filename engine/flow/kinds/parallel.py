"""A parallel step: its named branches (each a sub-flow or another flow) run at once as child runs; its output is
{branch: answer}, and the run goes on at its `next`."""

from __future__ import annotations

from engine.flow.kinds.step_kind import StepKind

KIND = StepKind(
    "parallel", mermaid='[/"{}"\\]', dot="trapezium",
    no_way_on="step {id!r} has no `next`, so the run cannot go on after its branches: add `next:`")
