"""How much of a tool result or model answer is kept: FLOWRUN_MAX_RESULT bytes (default 1,000,000) of its JSON.

What is longer is cut where it is made, before it is stored or sent on, and says so itself. Imports nothing heavy:
tool workers use it too, so that a huge result never crosses to the parent process whole.
"""

from __future__ import annotations

import json
from typing import Any

from engine.settings import number

DEFAULT_MAX_RESULT = 1_000_000
MAX_MESSAGE = 4_000  # bytes of an error message: it is for a person to read, on a terminal and in the records


def max_result() -> int:
    """The number of bytes FLOWRUN_MAX_RESULT allows (a setting error when it is not a whole number)."""
    return int(number("FLOWRUN_MAX_RESULT", DEFAULT_MAX_RESULT, whole=True))


def cut(value: Any, limit: int) -> Any:
    """`value` when its JSON (text: itself) takes at most `limit` bytes in UTF-8; else the start of that text with a
    note of the whole size, `limit` bytes in all. A value JSON cannot hold is taken as its repr."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        value = text = repr(value)
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes: short enough without encoding it
        return value
    encoded = text.encode("utf-8", errors="replace")
    size = len(encoded)
    if size <= limit:
        return value
    note = f"… [cut by flowrun: {size} bytes, more than FLOWRUN_MAX_RESULT ({limit})]"
    room = max(0, limit - len(note.encode("utf-8")))  # the cut value fits too, so cutting it again keeps it
    return encoded[:room].decode("utf-8", errors="ignore") + note
