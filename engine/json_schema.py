"""Compiling the JSON Schemas that flows, tool manifests and test files carry, with nothing ever fetched."""

from __future__ import annotations

from typing import Any

import jsonschema_rs


def compile_schema(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """A validator for `schema` that never retrieves a `$ref` from a file or the network.

    `flowrun validate` rejects such references (FR006); this holds for schemas that never went through it.
    Raises jsonschema_rs.ValidationError when `schema` does not compile.
    """
    return jsonschema_rs.validator_for(schema, offline=True)
