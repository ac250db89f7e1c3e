"""`flowrun import-aios`: a legacy AIOS agent config (JSON) -> a format-1 flow.

The legacy `flow` is a list of strings `"Step 2:::Decision:::Is it a state or a city?:::city::step 4:::state::step 3"`:
step name, kind, instruction, then one `label::target` field per way out (a process's label is `next`; a
terminal's field is empty). Step names are case-insensitive. What the import decides where the legacy form is silent:
- a process with no way out goes on to the entry after it;
- every process step may use all the agent's tools (AIOS offers every tool at every step);
- tools come from `tool_info` (strings, "Available tools: a, b" or "name: what it does") or AIOS's `tools`
  ("vendor/name"); tools without a manifest are left out with a warning;
- without `flow`, the AIOS `workflow` list (plain instructions) becomes a chain of process steps, and without
  either the agent is one process step driven by its description, then a terminal;
- `limits.max_steps` is the number of steps for a flow without loops, ten times that (at least 200) with loops.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from engine.flow.compiler import compile_flow
from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.loader import Document, KeyPath
from engine.flow.manifest import ToolManifest
from engine.flow.model import flow_from_data
from engine.flow.templates import is_template
from engine.resources import data_dir

_KINDS = ("process", "decision", "terminal")  # AIOS's own three, which map one to one onto ours
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass
class Imported:
    """The flow (None when the config could not be read) and what the import found."""

    data: dict[str, Any] | None
    diagnostics: list[Diagnostic] = field(default_factory=list)


def import_aios(doc: Document, tools: Mapping[str, ToolManifest]) -> Imported:
    """The format-1 flow for the legacy config in `doc`, with its tools checked against `tools`."""
    result = Imported(None, list(doc.diagnostics))
    if result.diagnostics:
        return result
    config = doc.data

    def problem(message: str, path: KeyPath = ()) -> Imported:
        result.diagnostics.append(diagnostic("FR501", message, doc.file, doc.position(path)))
        return result

    if not isinstance(config, dict):
        return problem("a legacy AIOS config is a JSON object with `name`, `description` and `flow`")
    name = config.get("name")
    if not isinstance(name, str) or not name.strip():
        return problem("`name` must be a non-empty string", ("name",))
    description = config.get("description", "")
    if isinstance(description, list) and all(isinstance(part, str) for part in description):
        description = " ".join(part.strip() for part in description)
    if not isinstance(description, str):
        return problem("`description` must be a string or a list of strings", ("description",))

    declared = _tool_names(config, doc, result.diagnostics)
    known = [t for t in declared if t in tools]
    for tool, path in declared.items():
        if tool not in tools:
            message = f"tool {tool!r} has no manifest in flowrun, so the imported flow leaves it out"
            result.diagnostics.append(diagnostic("FR502", message, doc.file, doc.position(path)))

    if "flow" in config:
        steps = _legacy_steps(config["flow"], doc, result.diagnostics, known)
    else:
        steps = _workflow_steps(config.get("workflow"), description, known)
    result.diagnostics.sort(key=lambda d: (d.line, d.column))
    if steps is None:
        return result
    data: dict[str, Any] = {"flowrun": 1, "name": name.strip()}
    if description:
        data["description"] = description.strip()
    data["inputs"] = {"query": {"type": "string", "description": "The task for the agent."}}
    if known:
        data["tools"] = known
    graph = compile_flow(flow_from_data({"steps": steps})).graph
    data["limits"] = {"max_steps": len(steps) if nx.is_directed_acyclic_graph(graph) else max(200, 10 * len(steps))}
    data["steps"] = steps
    result.data = data
    return result


def _tool_names(config: dict[str, Any], doc: Document, found: list[Diagnostic]) -> dict[str, KeyPath]:
    """Tool name -> where the config names it."""
    names: dict[str, KeyPath] = {}
    for key in ("tool_info", "tools"):
        entries = config.get(key, [])
        if not isinstance(entries, list):
            found.append(diagnostic("FR501", f"`{key}` must be a list of strings", doc.file, doc.position((key,))))
            continue
        for i, entry in enumerate(entries):
            if not isinstance(entry, str):
                continue
            head, colon, tail = entry.partition(":")
            # "Available tools: a, b" lists names after a prose prefix; "name: what it does" names one tool.
            text = tail if colon and " " in head.strip() else head
            for token in re.split(r"[,\s]+", text):
                tool = token.rsplit("/", 1)[-1].strip()
                if _IDENTIFIER.match(tool):
                    names.setdefault(tool, (key, i))
    return names


def _legacy_steps(
    entries: Any, doc: Document, found: list[Diagnostic], tools: list[str]
) -> dict[str, dict[str, Any]] | None:
    def problem(message: str, i: int | None = None) -> None:
        path: KeyPath = ("flow",) if i is None else ("flow", i)
        found.append(diagnostic("FR501", message, doc.file, doc.position(path)))

    if not isinstance(entries, list) or not entries:
        problem("`flow` must be a non-empty list of \"Step N:::Kind:::instruction:::label::target\" strings")
        return None
    parsed: list[tuple[int, str, str, str, list[tuple[str, str]]]] = []
    ids: dict[str, str] = {}  # every named step, even a malformed one, so references to it are not errors too
    for i, entry in enumerate(entries):
        fields = entry.split(":::") if isinstance(entry, str) else []
        if len(fields) < 3:
            problem("a flow entry is \"Step N:::Process|Decision|Terminal:::instruction:::label::target...\"", i)
            continue
        name, kind, instruction = fields[0].strip(), fields[1].strip().lower(), fields[2].strip()
        key = _name_key(name)
        if key in ids:
            problem(f"step {name!r} appears twice (names are case-insensitive)", i)
            continue
        ids[key] = _step_id(name, set(ids.values()))
        if kind not in _KINDS:
            problem(f"unknown step kind {fields[1].strip()!r}: use Process, Decision or Terminal", i)
            continue
        edges = []
        for edge in (f.strip() for f in fields[3:]):
            if not edge:
                continue
            label, sep, target = edge.partition("::")
            if not sep or not label.strip() or not target.strip():
                problem(f"way out {edge!r} is not \"label::target\"", i)
                continue
            edges.append((label.strip(), target.strip()))
        parsed.append((i, key, kind, instruction, edges))

    steps: dict[str, dict[str, Any]] = {}
    for position, (i, key, kind, instruction, edges) in enumerate(parsed):
        targets = []
        for label, target in edges:
            if _name_key(target) not in ids:
                problem(f"{label!r} leads to {target!r}, which is not a step of this flow", i)
            else:
                targets.append((label, ids[_name_key(target)]))
        step: dict[str, Any] = {"kind": kind}
        step["question" if kind == "decision" else "instruction"] = _literal(instruction or "Continue.")
        if kind == "process":
            if len(targets) > 1:
                problem("a process step has one way out", i)
            elif targets:
                step["next"] = targets[0][1]
            elif position + 1 < len(parsed):
                step["next"] = ids[parsed[position + 1][1]]
            if tools:
                step["tools"] = list(tools)
        elif kind == "decision":
            step["branches"] = dict(targets)
        elif targets:
            problem("a terminal step ends the run and has no way out", i)
        steps[ids[key]] = step
    if any(d.code == "FR501" for d in found):
        return None
    return steps


def _workflow_steps(workflow: Any, description: str, tools: list[str]) -> dict[str, dict[str, Any]]:
    """Steps for a config without `flow`: its `workflow` instructions in order (or one step), then a terminal."""
    entries = workflow if isinstance(workflow, list) else []
    instructions = [w.strip() for w in entries if isinstance(w, str) and w.strip()]
    instructions = instructions or ["Work on the task in the inputs as your description says."]
    steps: dict[str, dict[str, Any]] = {}
    for n, instruction in enumerate(instructions, 1):
        step: dict[str, Any] = {"kind": "process", "instruction": _literal(instruction)}
        step["next"] = f"step_{n + 1}" if n < len(instructions) else "answer"
        if tools:
            step["tools"] = list(tools)
        steps[f"step_{n}"] = step
    steps["answer"] = {"kind": "terminal", "instruction": "Give the final answer to the task."}
    return steps


def _name_key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _step_id(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", name.casefold()).strip("_") or "step"
    base = base if _IDENTIFIER.match(base) else f"step_{base}"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    return candidate


def _literal(text: str) -> str:
    """`text` as a template that renders to itself."""
    return f"{{% raw %}}{text}{{% endraw %}}" if is_template(text) else text


def to_yaml(data: dict[str, Any], out: Path | None, source: str) -> str:
    """The flow as YAML text with the schema header, for writing to `out` (None: standard output)."""
    schema_file = data_dir("schemas") / "flow.schema.json"
    base = out.resolve().parent if out else Path.cwd()
    schema_ref = Path(os.path.relpath(schema_file, base)).as_posix()
    header = f"# yaml-language-server: $schema={schema_ref}\n# Imported from {source} by `flowrun import-aios`.\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110, default_flow_style=None)
