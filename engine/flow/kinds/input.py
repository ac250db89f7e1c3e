"""An input step: the run asks a person (its `prompt`) and waits, with nothing held in memory, until an answer
comes (`flowrun runs answer`, the HTTP API, a terminal) or its `timeout` passes. The answer is one of its
`branches` (the route it takes; `timeout` is where a timeout goes), or data matching its `answer_schema` (the
step's output), after which the run goes on at its `next`."""

from __future__ import annotations

from engine.flow.kinds.step_kind import StepKind

TIMED_OUT = "timeout"  # the branch an input step takes when nobody answered in time

KIND = StepKind(
    "input", waits=True, mermaid='[\\"{}"/]', dot="house",
    no_way_on="input {id!r} has no `next` and no branches, so the run cannot go on after the answer: add one")
