"""Flow -> networkx graph: the structure the interpreter walks."""

from __future__ import annotations

import networkx as nx

from engine.flow.model import Flow


def compile_flow(flow: Flow) -> nx.MultiDiGraph:
    """The flow as a graph: one node per step (attribute `step`), one edge per way out, keyed by its label.

    A MultiDiGraph (a networkx DiGraph subclass) because two branches of a decision may lead to the same step.
    Edges to steps that do not exist are left out; the checks report them. `graph.graph` holds `flow` and `start`
    (and, from check_flow, the file's `sha256`; and on each node, `at`: the line and column of each of the step's
    templates).
    """
    graph = nx.MultiDiGraph(flow=flow, start=flow.start)
    graph.add_nodes_from((step.id, {"step": step}) for step in flow.steps.values())
    graph.add_edges_from(
        (step.id, target, label, {"label": label})
        for step in flow.steps.values()
        if step.kind != "terminal"  # a terminal's `next` or `branches` are a schema error (FR106), not a way on
        for label, target in step.edges()
        if target in flow.steps
    )
    return graph

