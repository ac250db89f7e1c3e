"""Flow -> CompiledFlow: the flow with the networkx graph the interpreter walks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import networkx as nx

from engine.flow.kinds import ends_run
from engine.flow.model import CATCH, Flow, Step, body_keys

Position = tuple[int, int]  # line and column in the flow file, from 1
Where = Callable[[tuple[str, ...]], Position]  # the position of a path of keys in the flow file


@dataclass(frozen=True)
class CompiledFlow:
    """A flow ready to run: its model, its graph, the sha256 of the file it was read from, and where each step's
    templates stand in that file (step id -> field name -> position), for the messages of a template that fails.

    `graph` has one node per step (attribute `step`) and one edge per way out, keyed by its label: a MultiDiGraph
    (a networkx DiGraph subclass) because two branches of a decision may lead to the same step. Edges to steps that
    do not exist are left out; the checks report them.

    `parts` are the sub-flows of its map and parallel steps, compiled, by (step id, branch name; "" for a map's);
    `agents` the flows its steps call, by reference (shared with its parts, whose references are the same file's).
    """

    flow: Flow
    graph: nx.MultiDiGraph
    sha256: str | None = None
    at: Mapping[str, Mapping[str, Position]] = field(default_factory=dict)
    parts: Mapping[tuple[str, str], CompiledFlow] = field(default_factory=dict)
    agents: Mapping[str, Callee] = field(default_factory=dict)

    @property
    def start(self) -> str | None:
        """The first step (None only in a flow with no steps, which does not validate)."""
        return self.flow.start

    def step(self, step_id: str) -> Step:
        return self.flow.steps[step_id]

    def callees(self) -> list[Callee]:
        """The flows it calls, those they call, and so on (each once, by file)."""
        found: dict[str, Callee] = {}
        todo = [self]
        while todo:
            for callee in todo.pop().agents.values():
                if callee.file not in found:
                    found[callee.file] = callee
                    todo.append(callee.compiled)
        return list(found.values())

    def flows(self) -> list[Flow]:
        """This flow and those it calls (callees), each once."""
        return [self.flow, *(callee.compiled.flow for callee in self.callees())]

    def next(self, step_id: str, label: str) -> str | None:
        """The step that `step_id`'s way out labelled `label` ("next" for a process) leads to; None if none."""
        return next((target for _, target, key in self.graph.out_edges(step_id, keys=True) if key == label), None)


@dataclass(frozen=True)
class Callee:
    """A flow another calls: its file (as run records name it) and the flow compiled."""

    file: str
    compiled: CompiledFlow


def compile_flow(flow: Flow, sha256: str | None = None, where: Where | None = None,
                 agents: Mapping[str, Callee] | None = None, *, within: tuple[str, ...] = ()) -> CompiledFlow:
    """The flow compiled, with its file's `sha256`, the positions of its steps' templates (`where` gives them, where
    known) and the flows it calls (`agents`); `within`: the path of keys to a sub-flow's steps."""
    at = {sid: {name: where((*within, "steps", sid, *name.split("."))) for name, _ in step.templates()}
          for sid, step in flow.steps.items()} if where else {}
    parts = {(step.id, branch): compile_flow(flow.sub_flow(body), sha256, where, agents,
                                             within=(*within, "steps", step.id, *body_keys(branch)))
             for step in flow.steps.values() for branch, body in step.bodies().items() if body.steps}
    graph = nx.MultiDiGraph()
    graph.add_nodes_from((step.id, {"step": step}) for step in flow.steps.values())
    graph.add_edges_from(
        (step.id, target, label, {"label": label})
        for step in flow.steps.values()
        for label, target in step.edges()
        if target in flow.steps and (not ends_run(step.kind) or label.startswith(CATCH))  # a terminal may fail
    )
    return CompiledFlow(flow, graph, sha256, at, parts, agents if agents is not None else {})
