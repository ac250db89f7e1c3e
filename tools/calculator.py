"""The `calculator` tool: arithmetic and common functions, evaluated by simpleeval (the text is never eval'd)."""

from __future__ import annotations

import ast
import math
import re
from numbers import Real
from typing import Any

from simpleeval import DEFAULT_OPERATORS, InvalidExpression, SimpleEval


def _factorial(n: int) -> int:
    if not isinstance(n, int) or not 0 <= n <= 1000:
        raise ValueError("factorial takes a whole number from 0 to 1000")
    return math.factorial(n)


MAX_BITS = 4096  # of a power's result: over a thousand digits, and computed in no time


def _power(base: Any, exponent: Any) -> Any:
    """`base ** exponent`, refused before it is computed when the result would be huge (simpleeval bounds the
    operands only: 3999999 ** 3999999 would take half a minute)."""
    if isinstance(base, Real) and isinstance(exponent, Real) and abs(base) > 1 and exponent > 0 and \
            exponent * math.log2(abs(base)) > MAX_BITS:
        raise ValueError(f"the power is too large: its result would have more than {MAX_BITS} bits")
    return base ** exponent


OPERATORS = {**DEFAULT_OPERATORS, ast.Pow: _power}
FUNCTIONS = {
    **{name: getattr(math, name) for name in ("sqrt", "exp", "log", "log10", "log2", "sin", "cos", "tan", "asin",
                                              "acos", "atan", "floor", "ceil", "radians", "degrees", "hypot")},
    "factorial": _factorial,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
}
NAMES = {"pi": math.pi, "e": math.e, "tau": math.tau}


# A number followed by % and no operand after it is a percentage ("15% * 240"); "7 % 3" stays a remainder.
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%(?!\s*[\d.(a-z])")


def calculate(expression: str) -> dict[str, Any]:
    """The value of `expression` (`^` is read as a power and `15%` as 0.15, as people write them)."""
    evaluator = SimpleEval(operators=OPERATORS, functions=FUNCTIONS, names=NAMES)
    try:
        value = evaluator.eval(_PERCENT.sub(r"(\1 / 100)", expression).replace("^", "**"))
    except (InvalidExpression, SyntaxError, ArithmeticError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot evaluate {expression!r}: {exc}") from None
    if not isinstance(value, Real) or isinstance(value, bool):
        raise ValueError(f"{expression!r} is not arithmetic: it gives {value!r}")
    return {"expression": expression, "result": value}
