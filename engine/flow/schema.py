"""Checking a loaded document against a published JSON Schema, with every error at its YAML position.

Validation uses jsonschema-rs: it checks a 30-step flow in well under a millisecond, where the pure-Python validator
takes tens, too slow for validating a repository of flows in CI.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterable
from typing import Any

import jsonschema_rs

from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.loader import Document, KeyPath
from engine.resources import data_dir

_MAX_MESSAGE = 300


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """The published schema `name` ("flow" or "tool") from schemas/."""
    return json.loads((data_dir("schemas") / f"{name}.schema.json").read_text(encoding="utf-8"))


@functools.cache
def _validator(name: str) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(schema(name))


def schema_diagnostics(doc: Document, name: str) -> list[Diagnostic]:
    """Every way `doc.data` breaks schema `name`, located in `doc`'s file."""
    found: list[Diagnostic] = []
    for error in _validator(name).iter_errors(doc.data):
        found.extend(_diagnostics(doc, error, schema(name)))
    return found


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when `word` looks like a typo of one of `choices`, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def shorten(text: str) -> str:
    """`text` cut in the middle when it is too long for one line of a report."""
    if len(text) <= _MAX_MESSAGE:
        return text
    half = _MAX_MESSAGE // 2
    return f"{text[:half]} ... {text[-half:]}"


def _diagnostics(doc: Document, error: jsonschema_rs.ValidationError, root: dict[str, Any]) -> list[Diagnostic]:
    path: KeyPath = tuple(error.instance_path)
    where = ".".join(str(p) for p in path)
    kind = error.kind.name
    details = error.kind.as_dict()

    def located(code: str, message: str, position: tuple[int, int]) -> Diagnostic:
        text = f"{where}: {message}" if where else message
        return diagnostic(code, shorten(text), doc.file, position)

    if kind == "additionalProperties":
        allowed = _subschema(root, error).get("properties", {})
        listing = ", ".join(allowed)
        return [
            located("FR003", f"unknown key {k!r}{suggest(k, allowed)}; allowed here: {listing}",
                    doc.position((*path, k), key=True))
            for k in details["unexpected"]
        ]
    instance = error.instance
    if kind == "propertyNames":
        error = error.kind.error  # the failure of the key itself; it names the keyword and the schema
        instance = error.instance
        position = doc.position((*path, instance), key=True)
    elif isinstance(instance, dict | list):
        # A block mapping's value starts at its first child; the key naming it is where a reader looks.
        position = doc.position(path, key=True) if path else (1, 1)
    else:
        position = doc.position(path)

    annotation = _annotation(root, error)
    if annotation:
        return [located(annotation["code"], annotation["message"].format(instance=instance), position)]
    return [located("FR003", _message(error, instance), position)]


def _message(error: jsonschema_rs.ValidationError, instance: Any) -> str:
    kind, details = error.kind.name, error.kind.as_dict()
    if kind == "required":
        return f"missing required key {details['property']!r}"
    if kind == "enum" and isinstance(instance, str):
        options = [str(o) for o in details["options"]]
        return f"{instance!r} is not one of: {', '.join(options)}{suggest(instance, options)}"
    if kind in ("anyOf", "oneOfNotValid"):
        for branch in error.kind.context:
            if branch:
                return branch[0].message  # the first way it could have been right says most
    return error.message


def _subschema(root: dict[str, Any], error: jsonschema_rs.ValidationError) -> dict[str, Any]:
    """The (sub)schema holding the keyword that failed; {} when it lies in another schema (a metaschema)."""
    if error.absolute_keyword_location is not None:
        return {}
    node: Any = root
    for part in list(error.schema_path)[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return {}
    return node if isinstance(node, dict) else {}


def _annotation(root: dict[str, Any], error: jsonschema_rs.ValidationError) -> dict[str, str] | None:
    """The `x-flowrun` code and message our schema attaches to the failed keyword, if any."""
    keyword = list(error.schema_path)[-1] if error.schema_path else None
    return _subschema(root, error).get("x-flowrun", {}).get(keyword)
