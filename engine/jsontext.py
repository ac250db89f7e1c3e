"""JSON text from outside flowrun (inputs, model answers), read strictly: as the JSON Schema validator, PostgreSQL
and other programs will read what flowrun keeps of it."""

from __future__ import annotations

import json
import math
import sys
from typing import Any


def parse_json(text: str) -> Any:
    """The value the JSON `text` holds; a ValueError saying what is wrong for text that is not JSON, for numbers
    JSON does not have (NaN, Infinity, 1e999: Python's json reads them), integers too long for Python and nesting
    too deep to read."""
    try:
        value = json.loads(text, parse_constant=_not_finite, parse_float=_finite, parse_int=_whole)
    except RecursionError:  # 100,000 `[`: the text is at fault, not flowrun
        raise ValueError("it is nested too deeply to read") from None
    _all_text(value)
    return value


def json_or_text(text: str) -> Any:
    """The JSON value `text` holds, or `text` itself where it is not JSON."""
    try:
        return parse_json(text)
    except ValueError:
        return text


def _all_text(value: Any) -> None:
    """A ValueError where a string of `value` holds half of a surrogate pair: JSON can escape one, but it is not
    text (the schema validator, the model backends and the databases all refuse it)."""
    pending = [value]
    while pending:
        found = pending.pop()
        if isinstance(found, dict):
            pending.extend(found)
            pending.extend(found.values())
        elif isinstance(found, list):
            pending.extend(found)
        elif isinstance(found, str) and not is_text(found):
            half = next(c for c in found if "\ud800" <= c <= "\udfff")
            raise ValueError(f"a string holds \\u{ord(half):04x}, half of a surrogate pair, which is not text")


def is_text(text: str) -> bool:
    """Whether `text` is all characters, none of them half of a surrogate pair (which JSON can escape, and
    json.loads keeps, but which UTF-8 cannot encode)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _not_finite(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows: give a finite number")


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # past sys.get_int_max_str_digits(); Python's message would send the user to sys
        raise ValueError(f"an integer of more than {sys.get_int_max_str_digits():,} digits is more than flowrun "
                         "reads") from None


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text if len(text) <= 30 else text[:30] + '…'} is too large for a number")
    return value
