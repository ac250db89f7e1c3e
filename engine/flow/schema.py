"""Checking a loaded document against a published JSON Schema, with every error at its YAML position."""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.loader import Document, KeyPath
from engine.resources import data_dir

_MAX_MESSAGE = 300


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """The published schema `name` ("flow" or "tool") from schemas/."""
    return json.loads((data_dir("schemas") / f"{name}.schema.json").read_text(encoding="utf-8"))


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name))


def schema_diagnostics(doc: Document, name: str) -> list[Diagnostic]:
    """Every way `doc.data` breaks schema `name`, located in `doc`'s file."""
    found: list[Diagnostic] = []
    for error in _validator(name).iter_errors(doc.data):
        found.extend(_diagnostics(doc, best_match([error])))
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


def _diagnostics(doc: Document, error: ValidationError) -> list[Diagnostic]:
    path: KeyPath = tuple(error.absolute_path)
    where = ".".join(str(p) for p in path)
    annotation = error.schema.get("x-flowrun", {}).get(error.validator) if isinstance(error.schema, dict) else None

    def located(code: str, message: str, position: tuple[int, int]) -> Diagnostic:
        text = f"{where}: {message}" if where else message
        return diagnostic(code, shorten(text), doc.file, position)

    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        extras = [k for k in error.instance if k not in allowed]
        listing = ", ".join(allowed)
        return [
            located("FR003", f"unknown key {k!r}{suggest(k, allowed)}; allowed here: {listing}",
                    doc.position((*path, k), key=True))
            for k in extras
        ]
    if _checks_a_key(error):
        position = doc.position((*path, error.instance), key=True)
    elif isinstance(error.instance, dict | list):
        # A block mapping's value starts at its first child; the key naming it is where a reader looks.
        position = doc.position(path, key=True) if path else (1, 1)
    else:
        position = doc.position(path)
    if annotation:
        return [located(annotation["code"], annotation["message"].format(instance=error.instance), position)]
    message = error.message
    if error.validator == "enum" and isinstance(error.instance, str):
        message = f"{error.instance!r} is not one of: {', '.join(map(str, error.validator_value))}"
        message += suggest(error.instance, map(str, error.validator_value))
    return [located("FR003", message, position)]


def _checks_a_key(error: ValidationError) -> bool:
    """True when the error is about a mapping key (a propertyNames failure), not a value."""
    schema_path = list(error.absolute_schema_path)
    return any(
        part == "propertyNames" and (i == 0 or schema_path[i - 1] != "properties") for i, part in enumerate(schema_path)
    )

