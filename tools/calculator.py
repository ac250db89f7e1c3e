"""The `calculator` tool: arithmetic, common functions and units, evaluated by simpleeval (the text is never
eval'd), with units from pint."""

from __future__ import annotations

import ast
import functools
import math
import operator
import re
from numbers import Real
from typing import TYPE_CHECKING, Any

from simpleeval import DEFAULT_OPERATORS, InvalidExpression, NameNotDefined, SimpleEval, safe_add, safe_mult

if TYPE_CHECKING:
    import pint


def _factorial(n: int) -> int:
    if not isinstance(n, int) or not 0 <= n <= 1000:
        raise ValueError("factorial takes a whole number from 0 to 1000")
    return math.factorial(n)


MAX_BITS = 4096  # of a power's result: over a thousand digits, and computed in no time
MAX_UNIT_POWER = 8  # of a quantity with units: a volume is m^3, and a greater one would only be made to be huge


def _power(base: Any, exponent: Any) -> Any:
    """`base ** exponent`, refused before it is computed when the result would be huge (simpleeval bounds the
    operands only: 3999999 ** 3999999 would take half a minute)."""
    if _quantity(base, exponent) and not (isinstance(exponent, Real) and abs(exponent) <= MAX_UNIT_POWER):
        raise ValueError(f"the power is too large: a quantity with units may be raised to at most {MAX_UNIT_POWER}")
    if isinstance(base, Real) and isinstance(exponent, Real) and abs(base) > 1 and exponent > 0 and \
            exponent * math.log2(abs(base)) > MAX_BITS:
        raise ValueError(f"the power is too large: its result would have more than {MAX_BITS} bits")
    return base ** exponent


# simpleeval's + and * bound a repeated string by its length, which a quantity has not: a quantity is added and
# multiplied plainly.
def _add(a: Any, b: Any) -> Any:
    return a + b if _quantity(a, b) else safe_add(a, b)


def _multiply(a: Any, b: Any) -> Any:
    return a * b if _quantity(a, b) else safe_mult(a, b)


def _quantity(*values: Any) -> bool:
    return any(hasattr(v, "dimensionality") for v in values)


def _number(value: Any) -> Any:
    """A quantity whose units cancel out, as the plain number it is (hours / s is 3600); else `value`."""
    return value.m_as("dimensionless") if _quantity(value) and value.dimensionless else value


def _reduced(operate: Any) -> Any:
    """`operate`, its result a plain number as soon as its units cancel out: else pint would round it, take a
    remainder of it or raise it to a power in its own units (round(90 * minutes / hours) would be 2 hours/minute,
    not 2), and the power check above would see 1 where hours / s is 3600."""
    return lambda a, b: _number(operate(a, b))


OPERATORS = {**DEFAULT_OPERATORS, **{node: _reduced(operate) for node, operate in (
    (ast.Add, _add), (ast.Sub, operator.sub), (ast.Mult, _multiply), (ast.Div, operator.truediv),
    (ast.FloorDiv, operator.floordiv), (ast.Mod, operator.mod), (ast.Pow, _power))}}
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


@functools.cache
def _units() -> pint.UnitRegistry:
    import pint  # most of a second with its registry: paid by the first expression with a unit only

    return pint.UnitRegistry()


def _name(node: ast.Name) -> Any:
    """A constant, or else a unit ("hours", "km"): one of it, so that "2.5 * hours / minutes" is 150."""
    if node.id in NAMES:
        return NAMES[node.id]
    try:
        return _units().Quantity(1, node.id)
    except Exception:  # pint's UndefinedUnitError, or a name pint cannot even read
        raise NameNotDefined(node.id, "") from None


# A number followed by % and no operand after it is a percentage ("15% * 240"); "7 % 3" stays a remainder.
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%(?!\s*[\d.(a-z])")


def calculate(expression: str) -> dict[str, Any]:
    """The value of `expression` (`^` is read as a power and `15%` as 0.15, as people write them). Units count
    what they follow and cancel out: "3.5 * minutes / seconds" is 210; the value must have none left."""
    evaluator = SimpleEval(operators=OPERATORS, functions=FUNCTIONS, names=_name)
    try:
        value = evaluator.eval(_PERCENT.sub(r"(\1 / 100)", expression).replace("^", "**"))
        if _quantity(value):  # one unit alone, say, or units that do not cancel out
            raise ValueError(f"it gives {value:~P}, not a number: its units do not cancel out (divide it by the "
                             "unit the answer is in, e.g. '/ (km / h)')")
    except (InvalidExpression, SyntaxError, ArithmeticError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot evaluate {expression!r}: {exc}") from None
    if not isinstance(value, Real) or isinstance(value, bool):
        raise ValueError(f"{expression!r} is not arithmetic: it gives {value!r}")
    return {"expression": expression, "result": value}
