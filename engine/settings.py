"""Numbers read from the environment (FLOWRUN_*): a value that is not one is a clear error, not a traceback."""

from __future__ import annotations

import math
import os

from engine.errors import FlowrunError


class SettingError(FlowrunError, ValueError):
    """An environment variable holds something other than what it needs; the message says which and what."""


def number(name: str, default: float, *, whole: bool = False) -> float:
    """The finite non-negative number in environment variable `name` (a whole number if `whole`), else
    `default`."""
    given = os.environ.get(name)
    if not given:
        return default
    try:
        value = int(given) if whole else float(given)
    except ValueError:
        value = -1
    if not 0 <= value < math.inf:  # nan fails the comparison too
        kind = "a whole number" if whole else "a finite number of seconds"
        raise SettingError(f"{name} is {given!r}: it must be {kind}, 0 or more (or unset, for {default:g})")
    return value
