"""Compiling the JSON Schemas that flows, tool manifests and test files carry, with nothing ever fetched."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema_rs


def compile_schema(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """A validator for `schema` that never retrieves a `$ref` from a file or the network.

    `flowrun validate` rejects such references (FR006); this holds for schemas that never went through it.
    Raises jsonschema_rs.ValidationError when `schema` does not compile.
    """
    return jsonschema_rs.validator_for(schema, offline=True)


def schema_problems(schema: dict[str, Any], value: Any, whole: str = "the answer") -> list[str]:
    """What is wrong with `value` for `schema`, each at its path in `value` (`whole` where it is the value itself).
    Raises jsonschema_rs.ValidationError when `schema` does not compile."""
    return [f"{'.'.join(map(str, e.instance_path)) or whole}: {e.message}"
            for e in _validator(json.dumps(schema, sort_keys=True)).iter_errors(value)]


@functools.lru_cache(maxsize=256)
def _validator(schema: str) -> jsonschema_rs.Validator:
    return compile_schema(json.loads(schema))
