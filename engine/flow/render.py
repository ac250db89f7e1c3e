"""Drawing a compiled flow's graph as Mermaid or Graphviz DOT text."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from engine.flow.compiler import CompiledFlow
from engine.flow.kinds import KINDS, StepKind
from engine.flow.model import CATCH, Step

FORMATS = ("mermaid", "dot")

# Words Mermaid reads as syntax when they stand as a node id.
_MERMAID_RESERVED = frozenset({"end", "graph", "subgraph", "flowchart", "style", "class", "classdef", "click",
                               "linkstyle", "direction"})


# Mermaid reads a quoted label as HTML with its own `#name;` entity codes: every character that would start markup
# or an entity is written as an entity, so a label shows as the text it is (one pass, so no code is escaped twice).
_MERMAID_TEXT = str.maketrans({"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;"})


def render_graph(compiled: CompiledFlow, fmt: str, notes: Mapping[str, str] | None = None, title: str = "") -> str:
    """The graph in format `fmt` (one of FORMATS): processes as boxes, decisions as diamonds, terminals rounded,
    the ways out a `catch` takes dotted;
    the sub-flows of map and parallel steps inside Mermaid subgraphs or DOT clusters, a dashed arrow from their
    step to their start, and a step that calls another flow labelled with it; `notes` after the labels of the
    flow's own steps, by id, and the drawing's `title`."""
    notes = notes or {}
    return _mermaid(compiled, notes, title) if fmt == "mermaid" else _dot(compiled, notes, title)


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


def _drawn(compiled: CompiledFlow, prefix: str = "", depth: int = 0) -> Iterator[tuple[Any, ...]]:
    """What a drawing shows, in order, whatever its format: ("node", name, step, depth), ("edge", source,
    target, label, depth), ("open", name, title, depth) ... ("close", depth) around a sub-flow, and ("link",
    step node, the sub-flow's start node, depth)."""
    graph = compiled.graph
    for step_id, data in graph.nodes(data=True):
        yield "node", prefix + step_id, data["step"], depth
    for source, target, label in graph.edges(keys=True):
        yield "edge", prefix + source, prefix + target, label, depth
    for step_node, title, inner, part in _parts(compiled, prefix):
        yield "open", inner, title, depth
        yield from _drawn(part, inner, depth + 1)
        yield "close", depth
        if part.start in part.graph:
            yield "link", step_node, inner + part.start, depth


def _label(step: Step, note: str | None) -> str:
    """What a step's node says: its id, the flows it calls, and its note."""
    called = [body.flow for body in step.bodies().values() if body.flow]
    label = f"{step.id} → {', '.join(called)}" if called else step.id
    return f"{label} · {note}" if note else label


def _mermaid(compiled: CompiledFlow, notes: Mapping[str, str], title: str) -> str:
    ids: dict[str, str] = {}

    def node_id(name: str) -> str:  # Mermaid ids: letters, digits and _, not a reserved word, each name its own
        if name not in ids:  # a step's id as it is; a sub-flow's steps and subgraphs numbered, so none collide
            found = f"step_{name}" if name.lower() in _MERMAID_RESERVED else name
            n = len(ids)
            while "." in found or found in ids.values():
                found, n = f"sub{n}_{name.rsplit('.', 1)[-1] or 'flow'}", n + 1
            ids[name] = found
        return ids[name]

    lines = [*([f"%% {title}"] if title else []), "flowchart TD"]
    for kind, *what, depth in _drawn(compiled):
        indent = "    " * (depth + 1)
        if kind == "node":
            name, step = what
            label = _label(step, None if depth else notes.get(name)).translate(_MERMAID_TEXT)
            lines.append(f"{indent}{node_id(name)}{_kind(step.kind).mermaid.format(label)}")
        elif kind == "edge":
            source, target, label = what
            arrow = "-->" if label == "next" else f'{"-.->" if label.startswith(CATCH) else "-->"}|' \
                f'"{label.translate(_MERMAID_TEXT)}"|'
            lines.append(f"{indent}{node_id(source)} {arrow} {node_id(target)}")
        elif kind == "open":
            lines.append(f'{indent}subgraph {node_id(what[0] + "sub")} ["{what[1].translate(_MERMAID_TEXT)}"]')
        elif kind == "close":
            lines.append(f"{indent}end")
        else:
            lines.append(f"{indent}{node_id(what[0])} -.-> {node_id(what[1])}")
    if compiled.start in compiled.graph:
        lines.append(f"    style {node_id(compiled.start)} stroke-width:3px")
    return "\n".join(lines)


def _kind(name: str) -> StepKind:
    return KINDS.get(name, KINDS["process"])  # a step of no known kind (an invalid flow) is drawn as a box


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot(compiled: CompiledFlow, notes: Mapping[str, str], title: str) -> str:
    lines = [f"digraph {_quote(compiled.flow.name or 'flow')} {{", "    rankdir=TB;",
             *([f"    label={_quote(title)}; labelloc=t;"] if title else [])]
    for kind, *what, depth in _drawn(compiled):
        indent = "    " * (depth + 1)
        if kind == "node":
            name, step = what
            width = ", penwidth=3" if name == compiled.start else ""
            note = None if depth else notes.get(name)
            label = f", label={_quote(_label(step, note))}" if depth or step.bodies() or note else ""
            lines.append(f"{indent}{_quote(name)} [shape={_kind(step.kind).dot}{width}{label}];")
        elif kind == "edge":
            source, target, label = what
            dotted = ", style=dotted" if label.startswith(CATCH) else ""
            attributes = "" if label == "next" else f" [label={_quote(label)}{dotted}]"
            lines.append(f"{indent}{_quote(source)} -> {_quote(target)}{attributes};")
        elif kind == "open":
            lines.append(f"{indent}subgraph {_quote('cluster_' + what[0])} {{")
            lines.append(f"{indent}    label={_quote(what[1])}; style=dashed;")
        elif kind == "close":
            lines.append(f"{indent}}}")
        else:
            lines.append(f"{indent}{_quote(what[0])} -> {_quote(what[1])} [style=dashed];")
    lines.append("}")
    return "\n".join(lines)
