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
from engine.json_schema import compile_schema
from engine.resources import data_dir

_MAX_MESSAGE = 300
_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# The published schemas leave the JSON Schemas a file embeds (`$defs/jsonSchemaObject`: inputs, output_schema,
# parameters) open, so that editors need nothing outside the file. flowrun's own check binds them to this extension
# of the 2020-12 metaschema, which jsonschema-rs carries built in (nothing is fetched). Its `$dynamicAnchor` makes
# the metaschema apply it to every subschema, so no reference anywhere in an embedded schema leaves it.
_EMBEDDED: dict[str, Any] = {
    "$id": "urn:flowrun:embedded-schema",
    "$dynamicAnchor": "meta",
    "$ref": _DIALECT,
    "properties": {
        "$schema": {
            "const": _DIALECT,
            "x-flowrun": {"const": {"code": "FR003", "message": f"{{instance!r}} is not a dialect flowrun reads: "
                                                                f"remove `$schema` or write {_DIALECT}"}},
        },
        "$ref": {"$ref": "#/$defs/localReference"},
        "$dynamicRef": {"$ref": "#/$defs/localReference"},
    },
    "$defs": {
        "localReference": {
            "pattern": "^#",
            "x-flowrun": {"pattern": {"code": "FR006", "message": "{instance!r} refers outside this schema, which "
                                      "flowrun never fetches: copy what it names into `$defs` and write "
                                      "`$ref: '#/$defs/<name>'`"}},
        },
    },
}


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """The published schema `name` ("flow", "tool", "mcp", "flowtest" or "evalcase") from schemas/."""
    return json.loads((data_dir("schemas") / f"{name}.schema.json").read_text(encoding="utf-8"))


class _Compiles:
    """Keyword `compiles`: the embedded schema compiles as a run compiles it, e.g. each `#/...` it names exists.

    What the metaschema already rejects is left to it, so that each problem is reported once.
    """

    def __init__(self, parent_schema: Any, value: Any, schema_path: Any) -> None:
        pass

    def validate(self, instance: Any) -> None:
        if not isinstance(instance, dict):  # `type` says what is wrong with it
            return
        try:
            compile_schema(instance)
        except jsonschema_rs.ValidationError as exc:
            if _embedded_validator().is_valid(instance):
                raise ValueError(str(exc).partition("\n")[0]) from None


@functools.cache
def _embedded_validator() -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(_EMBEDDED, validate_formats=True, offline=True)


@functools.cache
def _validator(name: str) -> jsonschema_rs.Draft202012Validator:
    published = schema(name)
    defs = published.get("$defs", {})  # an MCP server manifest embeds no schema
    embedded = {**defs.get("jsonSchemaObject", {}), "$ref": _EMBEDDED["$id"], "compiles": True}
    checked = {**published, "$defs": {**defs, "jsonSchemaObject": embedded, "embedded": _EMBEDDED}}
    # Formats asserted so that an embedded `pattern` that is no regular expression fails here, not in a run.
    return jsonschema_rs.Draft202012Validator(checked, validate_formats=True, offline=True,
                                              keywords={"compiles": _Compiles})


def schema_diagnostics(doc: Document, name: str) -> list[Diagnostic]:
    """Every way `doc.data` breaks schema `name`, located in `doc`'s file."""
    found: list[Diagnostic] = []
    for error in _validator(name).iter_errors(doc.data):
        found.extend(_diagnostics(doc, error, schema(name)))
    return list(dict.fromkeys(found))  # each of the metaschema's vocabularies repeats its `type` error


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
    if kind == "format":
        return f"{instance!r} is not a valid {details['format']}"
    if kind in ("anyOf", "oneOfNotValid"):
        for branch in error.kind.context:
            if branch:
                return branch[0].message  # the first way it could have been right says most
    return error.message


def _subschema(root: dict[str, Any], error: jsonschema_rs.ValidationError) -> dict[str, Any]:
    """The (sub)schema holding the keyword that failed; {} when it lies in a schema not flowrun's (a metaschema)."""
    node: Any = root
    parts = list(error.schema_path)[:-1]
    if error.absolute_keyword_location is not None:
        resource, _, pointer = error.absolute_keyword_location.partition("#")
        node = {_EMBEDDED["$id"]: _EMBEDDED, root.get("$id"): root}.get(resource)  # reached through a `$ref`
        if node is None:
            return {}
        parts = pointer.split("/")[1:-1]  # their keys need no JSON Pointer escapes
    for part in parts:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return {}
    return node if isinstance(node, dict) else {}


def _annotation(root: dict[str, Any], error: jsonschema_rs.ValidationError) -> dict[str, str] | None:
    """The `x-flowrun` code and message our schema attaches to the failed keyword, if any."""
    keyword = list(error.schema_path)[-1] if error.schema_path else None
    return _subschema(root, error).get("x-flowrun", {}).get(keyword)
