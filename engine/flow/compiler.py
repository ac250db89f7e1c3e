"""Flow -> CompiledFlow: the flow with the networkx graph the interpreter walks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import networkx as nx

from engine.flow.kinds import ends_run
from engine.flow.model import Flow, Step

Position = tuple[int, int]  # line and column in the flow file, from 1


@dataclass(frozen=True)
class CompiledFlow:
    """A flow ready to run: its model, its graph, the sha256 of the file it was read from, and where each step's
    templates stand in that file (step id -> field name -> position), for the messages of a template that fails.

    `graph` has one node per step (attribute `step`) and one edge per way out, keyed by its label: a MultiDiGraph
    (a networkx DiGraph subclass) because two branches of a decision may lead to the same step. Edges to steps that
    do not exist are left out; the checks report them.
    """

    flow: Flow
    graph: nx.MultiDiGraph
    sha256: str | None = None
    at: Mapping[str, Mapping[str, Position]] = field(default_factory=dict)

    @property
    def start(self) -> str | None:
        """The first step (None only in a flow with no steps, which does not validate)."""
        return self.flow.start

    def step(self, step_id: str) -> Step:
        return self.flow.steps[step_id]

    def next(self, step_id: str, label: str) -> str | None:
        """The step that `step_id`'s way out labelled `label` ("next" for a process) leads to; None if none."""
        return next((target for _, target, key in self.graph.out_edges(step_id, keys=True) if key == label), None)


def compile_flow(flow: Flow, sha256: str | None = None, at: Mapping[str, Mapping[str, Position]] | None = None
                 ) -> CompiledFlow:
    """The flow compiled, with its file's `sha256` and the positions `at` of its steps' templates, where known."""
    graph = nx.MultiDiGraph()
    graph.add_nodes_from((step.id, {"step": step}) for step in flow.steps.values())
    graph.add_edges_from(
        (step.id, target, label, {"label": label})
        for step in flow.steps.values()
        if not ends_run(step.kind)
        for label, target in step.edges()
        if target in flow.steps
    )
    return CompiledFlow(flow, graph, sha256, at or {})
