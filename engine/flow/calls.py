"""Calls of other flows (agent steps, and maps and parallel branches with `flow:`): finding the file a reference
names, and checking each call against the flow it calls: listed in `agents`, its inputs, what its answer holds."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from engine.flow.compiler import Callee
from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.kinds import ends_run
from engine.flow.loader import Document
from engine.flow.model import Body, Flow, Step, all_steps, body_keys
from engine.flow.templates import facts, is_template
from engine.json_schema import schema_problems
from engine.jsontext import parse_json

FLOWS_VARIABLE = "FLOWRUN_FLOWS"  # folders where a flow called by name is looked for, after its caller's own


def flow_path(reference: str, caller: str) -> Path | None:
    """The flow file `reference` names from the flow file `caller`: a path relative to the caller's folder, or a
    name found as NAME.yaml (or .yml) beside the caller or in a folder of FLOWRUN_FLOWS; None if there is none
    (an absolute path names none: a flow names the flows it calls from where it is, as a repository holds them)."""
    here = Path(caller).parent
    if Path(reference).is_absolute() or "\\" in reference:
        return None
    if "/" in reference or reference.endswith((".yaml", ".yml")):
        candidates = [here / reference]
    else:
        folders = [here, *(Path(p) for p in os.environ.get(FLOWS_VARIABLE, "").split(os.pathsep) if p)]
        candidates = [folder / f"{reference}{suffix}" for folder in folders for suffix in (".yaml", ".yml")]
    for path in candidates:
        try:
            if path.is_file():
                return path.resolve()
        except (OSError, ValueError):  # a name too long for the file system, a NUL character: no such file
            continue
    return None


def calls(flow: Flow) -> Iterator[tuple[Step, str, Body]]:
    """(step, branch, body) for each body of the flow's steps that calls another flow ("" for a step's own body)."""
    for step in flow.steps.values():
        for branch, body in step.bodies().items():
            if body.flow is not None:
                yield step, branch, body


def references(flow: Flow) -> list[str]:
    """Every flow the flow and its sub-flows call, and those its `agents` list, in the order written."""
    called = (body.flow for _, step in all_steps(flow) for body in step.bodies().values() if body.flow)
    return list(dict.fromkeys([*flow.agents, *called]))


def check_calls(flow: Flow, listed: tuple[str, ...], agents: Mapping[str, Callee],
                refused: Mapping[str, tuple[str, str]], doc: Document) -> Iterator[Diagnostic]:
    """The calls of the flow's steps: FR128 a flow its `agents` (`listed`) does not list, the `refused` (reference
    -> code and message: not found, recursion, errors of its own), FR121-FR123 inputs that do not fit the callee."""
    for step, branch, body in calls(flow):
        where = ("steps", step.id, *body_keys(branch))
        reference = body.flow or ""
        if reference not in listed:
            message = (f"step {step.id!r} calls {reference!r}, which the flow's `agents` does not list: add it to "
                       "`agents` (the access manager refuses a call of any agent not listed)")
            yield diagnostic("FR128", message, doc.file, doc.position((*where, "flow")))
        if reference in refused:
            code, message = refused[reference]
            yield diagnostic(code, f"step {step.id!r}: {message}", doc.file, doc.position((*where, "flow")))
        elif reference in agents:
            for code, path, message in _input_problems(step, body, agents[reference].compiled.flow):
                yield diagnostic(code, message, doc.file, doc.position((*where, *path)))


def _input_problems(step: Step, body: Body, callee: Flow) -> Iterator[tuple[str, tuple[str, ...], str]]:
    for name in callee.inputs:
        if name not in body.inputs and "default" not in callee.inputs[name]:
            yield "FR121", ("flow",), (f"step {step.id!r} calls {body.flow!r} without its input {name!r}, which "
                                       f"has no default: add it to the step's `inputs`")
    for name, value in body.inputs.items():
        if name not in callee.inputs:
            known = f" (its inputs: {', '.join(callee.inputs)})" if callee.inputs else " (it takes none)"
            yield "FR122", ("inputs", name), f"{body.flow!r} has no input {name!r}{known}"
            continue
        constant = _constant(value, callee.inputs[name])
        problems = [] if constant is _TEMPLATE else schema_problems(callee.inputs[name], constant, name)
        if problems:
            yield "FR123", ("inputs", name), f"input {name!r} of {body.flow!r}: {'; '.join(problems)}"


_TEMPLATE = object()  # a value only a run knows


def _constant(value: Any, schema: dict[str, Any]) -> Any:
    """The value a constant input has (text read as JSON for an input that is not a string, as a run reads it)."""
    if not isinstance(value, str):
        return value
    if is_template(value):
        return _TEMPLATE
    if schema.get("type", "string") == "string":
        return value
    try:
        return parse_json(value)
    except ValueError:
        return value


def answer_schema(callee: Flow) -> dict[str, Any] | None:
    """What the answer of a flow is, as a JSON Schema: text where its terminals all answer text; an object of
    their properties together where they all have an output_schema that has them; None where not known (an
    `output` that is one expression gives data of a shape not declared)."""
    terminals = [step for step in callee.steps.values() if ends_run(step.kind)]
    if terminals and all(s.output_schema is None and (s.output is None or not facts(s.output).expression)
                         for s in terminals):
        return {"type": "string"}
    properties: dict[str, Any] = {}
    for step in terminals:
        found = step.output_schema.get("properties") if step.output_schema else None
        if not isinstance(found, dict):
            return None
        properties.update(found)
    return {"type": "object", "properties": properties} if terminals else None
