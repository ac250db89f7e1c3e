"""Drawing a compiled flow's graph as Mermaid or Graphviz DOT text."""

from __future__ import annotations

from engine.flow.compiler import CompiledFlow
from engine.flow.kinds import KINDS, StepKind
from engine.flow.model import Step

FORMATS = ("mermaid", "dot")

# Words Mermaid reads as syntax when they stand as a node id.
_MERMAID_RESERVED = frozenset({"end", "graph", "subgraph", "flowchart", "style", "class", "classdef", "click",
                               "linkstyle", "direction"})


# Mermaid reads a quoted label as HTML with its own `#name;` entity codes: every character that would start markup
# or an entity is written as an entity, so a label shows as the text it is (one pass, so no code is escaped twice).
_MERMAID_TEXT = str.maketrans({"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;"})


def render_graph(compiled: CompiledFlow, fmt: str) -> str:
    """The graph in format `fmt` (one of FORMATS): processes as boxes, decisions as diamonds, terminals rounded;
    the sub-flows of map and parallel steps inside Mermaid subgraphs or DOT clusters, a dashed arrow from their
    step to their start, and a step that calls another flow labelled with it."""
    return _mermaid(compiled) if fmt == "mermaid" else _dot(compiled)


def _parts(compiled: CompiledFlow, prefix: str = "") -> list[tuple[str, str, str, CompiledFlow]]:
    """(step node, its sub-flow's title, the sub-flow's node prefix, the sub-flow) for each sub-flow, nested ones
    after theirs."""
    found = []
    for (step_id, branch), part in compiled.parts.items():
        kind = compiled.step(step_id).kind
        title = f"{step_id}: each item" if kind == "map" else f"{step_id}: branch {branch}"
        inner = f"{prefix}{step_id}.{branch or 'item'}."
        found.append((prefix + step_id, title, inner, part))
    return found


def _label(step: Step) -> str:
    """What a step's node says: its id, and the flows it calls."""
    called = [body.flow for body in step.bodies().values() if body.flow]
    return f"{step.id} → {', '.join(called)}" if called else step.id


def _mermaid(compiled: CompiledFlow) -> str:
    ids: dict[str, str] = {}

    def node_id(name: str) -> str:  # Mermaid ids: letters, digits and _, not a reserved word, each name its own
        if name not in ids:  # a step's id as it is; a sub-flow's steps and subgraphs numbered, so none collide
            found = f"step_{name}" if name.lower() in _MERMAID_RESERVED else name
            n = len(ids)
            while "." in found or found in ids.values():
                found, n = f"sub{n}_{name.rsplit('.', 1)[-1] or 'flow'}", n + 1
            ids[name] = found
        return ids[name]

    lines = ["flowchart TD"]

    def draw(flow: CompiledFlow, prefix: str, indent: str) -> None:
        graph = flow.graph
        for step_id, data in graph.nodes(data=True):
            label = _label(data["step"]).translate(_MERMAID_TEXT)
            lines.append(f"{indent}{node_id(prefix + step_id)}{_kind(data['step'].kind).mermaid.format(label)}")
        for source, target, label in graph.edges(keys=True):
            arrow = "-->" if label == "next" else f'-->|"{label.translate(_MERMAID_TEXT)}"|'
            lines.append(f"{indent}{node_id(prefix + source)} {arrow} {node_id(prefix + target)}")
        for step_node, title, inner, part in _parts(flow, prefix):
            lines.append(f'{indent}subgraph {node_id(inner + "sub")} ["{title.translate(_MERMAID_TEXT)}"]')
            draw(part, inner, indent + "    ")
            lines.append(f"{indent}end")
            if part.start in part.graph:
                lines.append(f"{indent}{node_id(step_node)} -.-> {node_id(inner + part.start)}")

    draw(compiled, "", "    ")
    if compiled.start in compiled.graph:
        lines.append(f"    style {node_id(compiled.start)} stroke-width:3px")
    return "\n".join(lines)


def _kind(name: str) -> StepKind:
    return KINDS.get(name, KINDS["process"])  # a step of no known kind (an invalid flow) is drawn as a box


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot(compiled: CompiledFlow) -> str:
    lines = [f"digraph {_quote(compiled.flow.name or 'flow')} {{", "    rankdir=TB;"]

    def draw(flow: CompiledFlow, prefix: str, indent: str) -> None:
        graph = flow.graph
        for step_id, data in graph.nodes(data=True):
            width = ", penwidth=3" if step_id == flow.start and not prefix else ""
            label = f", label={_quote(_label(data['step']))}" if prefix or data["step"].bodies() else ""
            lines.append(f"{indent}{_quote(prefix + step_id)} [shape={_kind(data['step'].kind).dot}{width}{label}];")
        for source, target, label in graph.edges(keys=True):
            attributes = "" if label == "next" else f" [label={_quote(label)}]"
            lines.append(f"{indent}{_quote(prefix + source)} -> {_quote(prefix + target)}{attributes};")
        for step_node, title, inner, part in _parts(flow, prefix):
            lines.append(f"{indent}subgraph {_quote('cluster_' + inner)} {{")
            lines.append(f"{indent}    label={_quote(title)}; style=dashed;")
            draw(part, inner, indent + "    ")
            lines.append(f"{indent}}}")
            if part.start in part.graph:
                lines.append(f"{indent}{_quote(step_node)} -> {_quote(inner + part.start)} [style=dashed];")

    draw(compiled, "", "    ")
    lines.append("}")
    return "\n".join(lines)
