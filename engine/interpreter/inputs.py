"""A run's inputs: given as `key=value` pairs, a JSON file or JSON Lines (one run each), completed with defaults,
checked against the JSON Schema each input declares in the flow."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engine.errors import FlowrunError
from engine.flow.model import Flow
from engine.flow.schema import shorten
from engine.json_schema import compile_schema
from engine.jsontext import parse_json


class InputError(FlowrunError):
    """The inputs do not fit the flow; the message says which and what to do."""


def parse_pairs(flow: Flow, pairs: Iterable[str]) -> dict[str, Any]:
    """`key=value` pairs as inputs: a value is text for a string input, else JSON (`-i files='["a.md"]'`)."""
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"-i {pair!r}: give an input as key=value")
        if flow.inputs.get(key, {}).get("type", "string") == "string":
            found[key] = value
            continue
        try:
            found[key] = parse_json(value)
        except ValueError as exc:
            raise InputError(f"-i {key}: {shorten(value)!r} is not JSON ({exc}); input {key!r} is of type "
                             f"{flow.inputs[key].get('type')}, e.g. -i {key}='{_example(flow.inputs[key])}'") from None
    return found


def resolve_inputs(flow: Flow, given: Mapping[str, Any], file: str, *, how: str = "") -> dict[str, Any]:
    """`given` completed with the flow's defaults; an InputError if one is missing, unknown or of the wrong shape.

    `how` says how to give a missing input, `{name}` standing for its name (the CLI's `-i {name}=...`)."""
    unknown = sorted(set(given) - set(flow.inputs))
    if unknown:
        raise InputError(f"{file}: {flow.name} has no input {', '.join(map(repr, unknown))}; "
                         f"its inputs: {', '.join(flow.inputs) or 'none'}")
    inputs = {k: spec["default"] for k, spec in flow.inputs.items() if "default" in spec} | dict(given)
    missing = [k for k in flow.inputs if k not in inputs]
    if missing:
        hints = f" with {' '.join(how.format(name=k) for k in missing)}" if how else ""
        raise InputError(f"{file}: input {', '.join(map(repr, missing))} is required: give it{hints}")
    for key, spec in flow.inputs.items():
        problems = [e.message for e in compile_schema(spec).iter_errors(inputs[key])]
        if problems:
            raise InputError(f"{file}: input {key!r}: {'; '.join(problems)}")
    return inputs


def _example(spec: dict[str, Any]) -> str:
    return {"array": '["a", "b"]', "object": '{"k": "v"}', "integer": "3", "number": "2.5",
            "boolean": "true"}.get(spec.get("type", ""), '"text"')


def _read(path: Path) -> str:
    """The UTF-8 text of the file at `path`; an InputError naming the line and column where it is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[:exc.start]
        line, column = before.count(b"\n") + 1, len(before) - before.rfind(b"\n")
        raise InputError(f"{path}:{line}:{column}: not UTF-8 text ({exc.reason}): save it as UTF-8") from None


def read_inputs(path: Path) -> dict[str, Any]:
    """The inputs in the JSON file at `path` (an object: name -> value)."""
    try:
        value = parse_json(_read(path))
    except ValueError as exc:
        raise InputError(f"{path}: cannot read a JSON object of inputs: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: inputs are a JSON object, {{\"name\": value, ...}}")
    return value


def read_input_lines(path: Path, what: str = "the inputs of one run") -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each line of the JSON Lines file at `path`, blank lines skipped; `what` says what
    each object is, for messages."""
    found = []
    for n, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = parse_json(line)
        except ValueError as exc:
            raise InputError(f"{path}:{n}: not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InputError(f"{path}:{n}: each line is a JSON object: {what}")
        found.append((n, value))
    if not found:
        raise InputError(f"{path}: nothing to run: write one JSON object per line, {what}")
    return found
