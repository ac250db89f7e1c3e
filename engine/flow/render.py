"""Drawing a compiled flow's graph as Mermaid or Graphviz DOT text."""

from __future__ import annotations

from engine.flow.compiler import CompiledFlow
from engine.flow.kinds import KINDS, StepKind

FORMATS = ("mermaid", "dot")

# Words Mermaid reads as syntax when they stand as a node id.
_MERMAID_RESERVED = frozenset({"end", "graph", "subgraph", "flowchart", "style", "class", "classdef", "click",
                               "linkstyle", "direction"})


# Mermaid reads a quoted label as HTML with its own `#name;` entity codes: every character that would start markup
# or an entity is written as an entity, so a label shows as the text it is (one pass, so no code is escaped twice).
_MERMAID_TEXT = str.maketrans({"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;"})


def render_graph(compiled: CompiledFlow, fmt: str) -> str:
    """The graph in format `fmt` (one of FORMATS): processes as boxes, decisions as diamonds, terminals rounded."""
    return _mermaid(compiled) if fmt == "mermaid" else _dot(compiled)


def _mermaid(compiled: CompiledFlow) -> str:
    graph = compiled.graph
    def node_id(step_id: str) -> str:
        return f"step_{step_id}" if step_id.lower() in _MERMAID_RESERVED else step_id

    lines = ["flowchart TD"]
    for step_id, data in graph.nodes(data=True):
        label = step_id.translate(_MERMAID_TEXT)
        lines.append(f"    {node_id(step_id)}{_kind(data['step'].kind).mermaid.format(label)}")
    for source, target, label in graph.edges(keys=True):
        arrow = "-->" if label == "next" else f'-->|"{label.translate(_MERMAID_TEXT)}"|'
        lines.append(f"    {node_id(source)} {arrow} {node_id(target)}")
    if compiled.start in graph:
        lines.append(f"    style {node_id(compiled.start)} stroke-width:3px")
    return "\n".join(lines)


def _kind(name: str) -> StepKind:
    return KINDS.get(name, KINDS["process"])  # a step of no known kind (an invalid flow) is drawn as a box


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot(compiled: CompiledFlow) -> str:
    graph = compiled.graph
    lines = [f"digraph {_quote(compiled.flow.name or 'flow')} {{", "    rankdir=TB;"]
    for step_id, data in graph.nodes(data=True):
        width = ", penwidth=3" if step_id == compiled.start else ""
        lines.append(f"    {_quote(step_id)} [shape={_kind(data['step'].kind).dot}{width}];")
    for source, target, label in graph.edges(keys=True):
        attributes = "" if label == "next" else f" [label={_quote(label)}]"
        lines.append(f"    {_quote(source)} -> {_quote(target)}{attributes};")
    lines.append("}")
    return "\n".join(lines)
