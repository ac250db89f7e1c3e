"""Jinja2 templates in flows: rendering them in the sandbox (sandbox.py), and static checks of what they use.

A template sees four names: `inputs` (the run's inputs), `steps` (`steps.<id>.output`: a step's latest result,
data when it has an output_schema), `visits` (`visits.<id>`: how often a step has run) and `memory`
(`memory.<key>`: what the flow's steps remember, engine.interpreter.state); a step's `output`
template with a `tool` also sees `result`, the tool's result. Most templates render to text; `evaluate` gives the
value of one that is a single `{{ expression }}` (a step's `output`).

Checking happens in two parts: `facts` reads what a template text uses (context-free, so cached per text), and
`template_problems` checks those facts against a flow. Templates render in the bounded sandbox of sandbox.py;
validation reports what that sandbox would refuse wherever it can be seen before a run.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Template, TemplateSyntaxError, nodes
from jinja2.sandbox import modifies_known_mutable, safe_range

from engine.flow import sandbox
from engine.flow.model import Flow, Step, all_steps
from engine.flow.sandbox import TemplateLimit, environment

NAMES = ("inputs", "steps", "visits", "memory")
RESULT = "result"  # the tool's result, in the `output` template of a step with `tool`
CAUGHT = "error"  # the error a step's `catch` caught last: {kind, message, step}
STEP_ATTRIBUTES = ("output",)
_IMPLICIT = ("loop", "caller", "varargs", "kwargs")  # names Jinja2 defines inside loops and macros

_VALUES = ("", 0, 0.0, False, None, [], {})  # one of each kind of value a template sees
# Python internals of the values a template sees, and their methods that change data: the sandbox refuses both on
# every value that has them (on the others they are undefined).
_INTERNAL = frozenset(name for value in _VALUES for name in dir(value) if name.startswith("_"))
_CHANGES_DATA = frozenset(name for value in _VALUES for name in dir(value) if modifies_known_mutable(value, name))

# Jinja2 expression tokens of the subset `_Reader` understands (group 1), or a character outside it (group 2).
# Values never collide across kinds: strings keep their quotes, numbers start with a digit, names with a letter.
_HOLE = re.compile(r"\{\{(.*?)\}\}", re.S)
_TOKEN = re.compile(r"""\s*(?:(
    '[^'\\\n]*'|"[^"\\\n]*"
  | (?:[1-9][0-9]*|0)(?:\.[0-9]+)?(?![\w.])
  | [A-Za-z_][A-Za-z0-9_]*(?![^\W\d_])
  | ==|!=|<=|>=|[<>+\-|.\[\]()]
)|(\S))""", re.X)
_CONSTANTS = frozenset({"true", "false", "none", "True", "False", "None"})
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "if", "else"})
_COMPARE, _SUM = frozenset({"==", "!=", "<", "<=", ">", ">="}), frozenset({"+", "-"})
_OR, _AND, _ELSE = frozenset({"or"}), frozenset({"and"}), frozenset({"else"})
# Longer holes go to Jinja2, which checks how deep they nest; this keeps _Reader's recursion and the trees it
# stands for within the sandbox's MAX_NESTING and MAX_DEPTH.
_MAX_TOKENS = 2 * sandbox.MAX_NESTING


def is_template(text: str) -> bool:
    """Whether `text` has any Jinja2 markup; text without it renders to itself."""
    return "{{" in text or "{%" in text or "{#" in text


# A template whose every hole is a plain path (`{{ steps.plan.output.items[0] }}`) and that has no other markup.
_PLAIN_HOLE = re.compile(r"\{\{\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*)\s*\}\}")
_PLAIN_VALUE = re.compile(rf"\s*{_PLAIN_HOLE.pattern}\s*")
_PATH_PART = re.compile(r"\.([A-Za-z_]\w*)|\[(\d+)\]")
_DICT_ATTRIBUTES = frozenset(dir(dict))


def render(text: str, context: dict[str, Any]) -> str:
    """`text` rendered with `context` by the sandboxed environment.

    Texts whose holes are all plain paths into dicts and lists (most instructions) are rendered directly, with the
    result Jinja2 gives: compiling a template costs ~2 ms, which a long flow would pay once per step.
    """
    if not is_template(text):
        return text
    plain = _plain(text, context)
    return plain if plain is not None else sandbox.render(_compiled(text), context)


def _plain(text: str, context: dict[str, Any]) -> str | None:
    """`text` rendered directly, or None where Jinja2 semantics need Jinja2 (markup other than plain holes, a
    missing name, a key that is also a dict attribute, a value that is not plain data)."""
    rest = _PLAIN_HOLE.sub("", text)
    if "{" in rest or "}" in rest:  # other markup, or braces whose reading depends on Jinja2's lexer
        return None
    pieces, last = [], 0
    for hole in _PLAIN_HOLE.finditer(text):
        pieces.append(text[last:hole.start()])
        value = _lookup(hole.group(1), context)
        if not isinstance(value, str | int | float | bool | type(None)):  # _MISSING among them
            return None
        pieces.append(str(value))
        last = hole.end()
    pieces.append(text[last:])
    return "".join(pieces)


_MISSING = object()


def _lookup(path: str, context: dict[str, Any]) -> Any:
    """The value at the plain `path` in `context`, or _MISSING where Jinja2 semantics need Jinja2 (a missing name,
    a key that is also a dict attribute)."""
    name = path.split(".", 1)[0].split("[", 1)[0]
    if name not in context:
        return _MISSING
    value = context[name]
    for key, index in _PATH_PART.findall(path[len(name):]):
        if key and isinstance(value, dict) and key in value and key not in _DICT_ATTRIBUTES:
            value = value[key]
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            return _MISSING
    return value


def evaluate(text: str, context: dict[str, Any]) -> Any:
    """The value of template `text` with `context`: when it is one `{{ expression }}` (blank text around it
    aside), the expression's value as JSON data (a number stays a number, a tuple becomes a list); else its text.

    A plain path gives the very value it names (already data), with no template compiled.
    """
    if not facts(text).expression:
        return render(text, context)
    plain = _PLAIN_VALUE.fullmatch(text)
    found = _lookup(plain.group(1), context) if plain else _MISSING
    if found is not _MISSING:
        return found
    found = sandbox.value(_compiled_value(text), context)
    try:  # as storage will keep it and a resumed run read it back
        return json.loads(json.dumps(found, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"its value is not JSON data: {exc}") from None


@functools.lru_cache(maxsize=1024)
def _compiled(text: str) -> Template:
    return sandbox.compile_template(text)


@functools.lru_cache(maxsize=256)
def _compiled_value(text: str) -> Template:
    expression = _single(sandbox.parse(text))
    assert expression is not None  # evaluate asks only for templates whose facts say they are one expression
    return sandbox.compile_value(expression)


@dataclass(frozen=True)
class Facts:
    """What a template text uses, independent of any flow."""

    syntax_error: str | None = None
    free_names: frozenset[str] = frozenset()
    references: tuple[tuple[str, ...], ...] = ()  # the longest constant chain of each `a.b.c` / `a["b"]`
    unsupported: tuple[str, ...] = ()  # unknown filters and tests, include/import/extends
    outcomes: frozenset[str] | None = None  # every value the whole template can render, when only constants
    expression: bool = False  # the whole template is one `{{ expression }}` (blank text around it aside)
    limits: tuple[str, ...] = ()  # sandbox bounds it goes past whatever the data (sandbox.TemplateLimit)
    refused: tuple[str, ...] = ()  # attributes and methods the sandbox refuses


@functools.lru_cache(maxsize=4096)
def facts(text: str) -> Facts:
    """What template `text` uses."""
    if not is_template(text):
        return Facts(outcomes=frozenset({text}))
    fast = _Reader.facts(text)
    if fast is not None:
        return fast
    try:
        tree = sandbox.parse(text)
    except TemplateSyntaxError as exc:
        return Facts(syntax_error=f"template does not parse{_line(exc.lineno)}: {exc.message}")
    except TemplateLimit as exc:
        return Facts(limits=(f"{exc.message}{_line(exc.lineno)}",))
    return _walk(tree)


def _line(lineno: int | None) -> str:
    return f" (template line {lineno})" if lineno and lineno > 1 else ""


class _Reader:
    """Facts of a template made of text and `{{ expression }}` holes in a subset of Jinja2's expressions.

    Mirrors Jinja2's parser (parse_condexpr, parse_or, ... parse_unary) for: names and constants, `.name` and
    `[n]`/`['key']` lookups, `|filter` without arguments, + and -, comparisons, and/or/not, `a if b else c`, and
    parentheses. It gives up (None) on anything else, which then goes to Jinja2; tests check both agree.
    """

    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.at, self.end = tokens, 0, len(tokens)
        self.names: set[str] = set()
        self.references: list[tuple[str, ...]] = []
        self.unsupported: list[str] = []
        self.refused: list[str] = []

    @classmethod
    def facts(cls, text: str) -> Facts | None:
        last = text.rfind("}}")
        if "{{" in text[last + 2 if last >= 0 else 0:]:
            return None  # a hole that never closes (and _HOLE would search for its end from every `{{` in it)
        parts = _HOLE.split(text)
        if any(is_template(data) for data in parts[0::2]):
            return None
        holes = parts[1::2]
        readers, outcomes, expression = [], None, False
        for hole in holes:
            if hole[:1] in ("-", "+") or hole[-1:] in ("-", "+"):
                return None  # whitespace control
            pairs = _TOKEN.findall(hole)
            if any(bad for _, bad in pairs) or len(pairs) > _MAX_TOKENS:
                return None
            reader = cls([token for token, _ in pairs])
            try:
                values = reader.condexpr()
            except _GiveUp:
                return None
            if reader.at != reader.end:
                return None
            readers.append(reader)
            if len(holes) == 1 and not "".join(parts[0::2]).strip():
                outcomes, expression = values, True
        return Facts(
            free_names=frozenset(n for r in readers for n in r.names) - set(_IMPLICIT) - set(environment.globals),
            references=tuple(ref for r in readers for ref in r.references),
            unsupported=tuple(msg for r in readers for msg in r.unsupported),
            outcomes=outcomes,
            expression=expression,
            refused=tuple(msg for r in readers for msg in r.refused),
        )

    def next_in(self, values: frozenset[str]) -> bool:
        return self.at < self.end and self.tokens[self.at] in values

    def next_is(self, value: str) -> bool:
        return self.at < self.end and self.tokens[self.at] == value

    def take(self) -> str:
        if self.at >= self.end:
            raise _GiveUp
        self.at += 1
        return self.tokens[self.at - 1]

    def condexpr(self) -> frozenset[str] | None:
        values = self.binary(self.and_expr, _OR)
        while self.next_is("if"):
            self.take()
            self.binary(self.and_expr, _OR)
            otherwise = frozenset({""})
            if self.next_in(_ELSE):
                self.take()
                otherwise = self.condexpr()
            values = values | otherwise if values is not None and otherwise is not None else None
        return values

    def and_expr(self) -> frozenset[str] | None:
        return self.binary(self.not_expr, _AND)

    def not_expr(self) -> frozenset[str] | None:
        if self.next_is("not"):
            self.take()
            self.not_expr()
            return None
        return self.binary(self.sum_expr, _COMPARE)

    def sum_expr(self) -> frozenset[str] | None:
        return self.binary(self.unary, _SUM)

    def binary(self, operand: Callable[[], frozenset[str] | None], operators: frozenset[str]) -> frozenset[str] | None:
        values = operand()
        while self.next_in(operators):
            self.take()
            operand()
            values = None
        return values

    def unary(self) -> frozenset[str] | None:
        token = self.take()
        first = token[0]
        values: frozenset[str] | None = None
        if first in "'\"":
            if self.at < self.end and self.tokens[self.at][0] in "'\"":
                raise _GiveUp  # Jinja2 joins adjacent strings
            values = frozenset({token[1:-1]})
        elif first.isdigit() or token in _CONSTANTS:
            pass
        elif token == "(":
            values = self.condexpr()
            if not self.next_is(")"):
                raise _GiveUp
            self.take()
        elif (first.isalpha() or first == "_") and token not in _KEYWORDS:
            self.names.add(token)
            chain = [token]
            while self.next_is(".") or self.next_is("["):
                chain.append(self.lookup())
            if len(chain) > 1:
                self.references.append(tuple(chain))
        else:
            raise _GiveUp
        if self.next_is(".") or self.next_is("[") or self.next_is("("):
            raise _GiveUp  # lookups on constants and parentheses, calls
        while self.next_is("|"):
            self.take()
            name = self.take()
            if not (name[0].isalpha() or name[0] == "_") or self.next_is(".") or self.next_is("("):
                raise _GiveUp  # not a name, a dotted filter name, filter arguments
            if name not in environment.filters:
                self.unsupported.append(f"unknown filter {name!r}")
            values = None
        return values

    def lookup(self) -> str:
        if self.take() == ".":
            name = self.take()
            if not (name[0].isalpha() or name[0] == "_"):
                raise _GiveUp
        else:
            key = self.take()
            if not (key[0].isdigit() or key[0] in "'\"") or "." in key or not self.next_is("]"):
                raise _GiveUp
            self.take()
            name = key[1:-1] if key[0] in "'\"" else key
        if name in _INTERNAL:
            self.refused.append(_internal(name))
        return name


class _GiveUp(Exception):
    """The template leaves the subset _Reader understands."""


def _walk(tree: nodes.Template) -> Facts:
    loaded: set[str] = set()
    stored: set[str] = set(_IMPLICIT)
    unsupported: list[str] = []
    references: list[tuple[str, ...]] = []
    refused: list[str] = []
    inner: set[int] = set()  # attribute nodes that are part of a longer chain
    for node in _nodes(tree):
        if isinstance(node, nodes.Name):
            (loaded if node.ctx == "load" else stored).add(node.name)
        elif isinstance(node, nodes.Macro):  # its name is a plain string, not a Name node
            stored.add(node.name)
        elif isinstance(node, nodes.Getattr | nodes.Getitem):
            inner.add(id(node.node))
            if id(node) not in inner:
                chain = _chain(node)
                if chain is not None and len(chain) > 1:
                    references.append(chain)
            name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
            if isinstance(name, str) and name in _INTERNAL:
                refused.append(_internal(name))
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr) and node.node.attr in _CHANGES_DATA:
            refused.append(f"`.{node.node.attr}(...)` changes data, which the template sandbox refuses: templates "
                           "only read their values")
        elif isinstance(node, nodes.Filter) and node.name not in environment.filters:
            unsupported.append(f"unknown filter {node.name!r}")
        elif isinstance(node, nodes.Test) and node.name not in environment.tests:
            unsupported.append(f"unknown test {node.name!r}")
        elif isinstance(node, nodes.Extends | nodes.Include | nodes.Import | nodes.FromImport):
            unsupported.append(f"`{{% {type(node).__name__.lower()} %}}` is not available in flow templates")
    single = _single(tree)
    return Facts(
        free_names=frozenset(loaded - stored - set(environment.globals)),
        references=tuple(references),
        unsupported=tuple(unsupported),
        outcomes=None if single is None else _constant_values(single),
        expression=single is not None and not isinstance(single, nodes.TemplateData),
        limits=_Limits(tree).found,
        refused=tuple(refused),
    )


def _internal(name: str) -> str:
    return f"{name!r} is a Python internal, which the template sandbox refuses: use the data's own fields"


_NOT_CONSTANT = object()


def _range(*args: Any) -> range:
    try:
        return safe_range(*args)
    except OverflowError as exc:  # past the sandbox's MAX_RANGE
        raise TemplateLimit(str(exc)) from None


class _Limits:
    """Where a template goes past the sandbox's bounds with values known before a run: constant expressions
    (`10 ** 10 ** 9`, `'x' * 10 ** 10`, computed with the sandbox's own checks), and loops over constants nested past
    a render's MAX_STEPS or writing more than its MAX_SIZE of text. Recursive, which parse's MAX_DEPTH keeps within
    the stack."""

    def __init__(self, tree: nodes.Template) -> None:
        self.found: tuple[str, ...] = ()
        self.value(tree, 1)

    def value(self, node: nodes.Node, runs: int) -> Any:
        """`node`'s value when it is a constant, else _NOT_CONSTANT; `runs`: how often the loops around it run."""
        if isinstance(node, nodes.For):
            self.loop(node, runs)
            return _NOT_CONSTANT
        values = [self.value(child, runs) for child in node.iter_child_nodes()]
        try:
            if isinstance(node, nodes.Const):
                return node.value
            if isinstance(node, nodes.TemplateData):
                return node.data
            if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "range" \
                    and len(values) == 1 + len(node.args) and all(v is not _NOT_CONSTANT for v in values[1:]):
                return _range(*values[1:])
            if any(v is _NOT_CONSTANT for v in values):
                return _NOT_CONSTANT
            if isinstance(node, nodes.List | nodes.Tuple):
                return sandbox.environment.built(values)
            if isinstance(node, nodes.Output):
                return "".join(map(str, values))
            if isinstance(node, nodes.BinExpr) and node.operator in sandbox.OPERATORS:
                return sandbox.binop(node.operator, *values)
            if isinstance(node, nodes.Concat):
                return sandbox.environment.joined("".join(map(str, values)))
        except TemplateLimit as exc:
            self.found += (f"{exc.message}{_line(node.lineno)}",)
        except (ArithmeticError, TypeError, ValueError):
            pass  # an error of the run, not a bound
        return _NOT_CONSTANT

    def loop(self, node: nodes.For, runs: int) -> int:
        """Check the loop `node`, run `runs` times, and what it holds; the characters of constant text it writes
        each time it runs, at least (0 once reported, so that the loops around it do not report it again)."""
        items = self.value(node.iter, runs)
        times = len(items) if isinstance(items, range | list | str) else 1
        if runs <= sandbox.MAX_STEPS < runs * times:
            self.found += (f"loops nested here run {runs * times:,} times; a render may run at most "
                           f"{sandbox.MAX_STEPS:,} loop iterations and calls{_line(node.lineno)}",)
        written = 0
        for child in node.body:
            if isinstance(child, nodes.For):
                written += self.loop(child, runs * times)
                continue
            text = self.value(child, runs * times)
            if isinstance(child, nodes.Output) and isinstance(text, str):
                written += len(text)
        if node.test:
            self.value(node.test, runs * times)
            written = 0  # the body may run for none of the items
        for child in node.else_:
            self.value(child, runs)
        if runs * times * written > sandbox.MAX_SIZE:
            self.found += (f"this loop writes {runs * times * written:,} characters; a render may make at most "
                           f"{sandbox.MAX_SIZE:,}{_line(node.lineno)}",)
            return 0
        return times * written


def _nodes(tree: nodes.Node) -> Iterator[nodes.Node]:
    """Every node, parents before children (so a chain's outermost node comes before its inner ones)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(list(node.iter_child_nodes())))


def _chain(node: nodes.Expr) -> tuple[str, ...] | None:
    """`steps.a.output` -> ("steps", "a", "output"); None when it does not start at a name."""
    parts: list[str] = []
    while isinstance(node, nodes.Getattr | nodes.Getitem):
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str | int):
            parts.append(str(node.arg.value))
        else:
            parts.clear()  # a computed key: only what lies before it is checkable
        node = node.node
    if not isinstance(node, nodes.Name):
        return None
    return (node.name, *reversed(parts))


def _single(tree: nodes.Template) -> nodes.Expr | None:
    """The one expression or text a template outputs, blank text around it aside; None when it has more."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    found = [e for e in tree.body[0].nodes if not (isinstance(e, nodes.TemplateData) and not e.data.strip())]
    return found[0] if len(found) == 1 else None


def _constant_values(expr: nodes.Node) -> frozenset[str] | None:
    """Every value `expr` gives, when it is made of string constants and if-else."""
    if isinstance(expr, nodes.Const) and isinstance(expr.value, str):
        return frozenset({expr.value})
    if isinstance(expr, nodes.TemplateData):
        return frozenset({expr.data})
    if isinstance(expr, nodes.CondExpr):
        then = _constant_values(expr.expr1)
        otherwise = _constant_values(expr.expr2) if expr.expr2 is not None else frozenset({""})
        return then | otherwise if then is not None and otherwise is not None else None
    return None


@dataclass(frozen=True)
class Problem:
    """Something wrong with one template: a rule code and a message (the caller knows where the template is)."""

    code: str
    message: str


@dataclass(frozen=True)
class Scope:
    """What the templates of a flow, or of a sub-flow of one of its steps, can refer to: the `steps` it sees (its
    own, and in a sub-flow those of the flows around it), the `remembered` keys of its flow, the names of its own
    (`item` and `index` in a map's sub-flow) and the `outputs` of steps whose output has a shape other than their
    output_schema (agent, map and parallel steps): a JSON Schema, or None where not known."""

    steps: Mapping[str, Step]
    remembered: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    outputs: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)

    @classmethod
    def of(cls, flow: Flow) -> Scope:
        """The scope of a flow's own steps: with `error` (what the last error a `catch` caught was) where one
        of its steps catches."""
        return cls(flow.steps, flow.remembered, (CAUGHT,) if any(step.catch for _, step in all_steps(flow)) else ())


def template_problems(text: str, flow: Flow, step: Step, field: str, scope: Scope | None = None) -> list[Problem]:
    """What is wrong with template `text`, the `field` of `step` in `flow` (a sub-flow sees `scope`)."""
    if field != "decide" and not is_template(text):
        return []
    scope = scope or Scope.of(flow)
    found = facts(text)
    if found.syntax_error:
        return [Problem("FR301", found.syntax_error)]
    problems = [Problem("FR301", message) for message in found.unsupported]
    problems += [Problem("FR304", message) for message in found.limits]
    problems += [Problem("FR305", message) for message in found.refused]
    own = ("item", "index") if step.kind == "map" and field.startswith("inputs.") else ()  # a map's call
    names = (*NAMES, *scope.names, *own, *((RESULT,) if field == "output" and step.tool else ()))
    for name in sorted(found.free_names - set(names)):
        hint = f" (`{RESULT}` is the tool's result, in the `output` of a step with `tool`)" if name == RESULT else ""
        problems.append(Problem("FR302", f"unknown name {name!r}: templates can use {', '.join(names)}{hint}"))
    for chain in found.references:
        if chain[0] in NAMES:
            problems.extend(_check_chain(chain, flow, scope))
    if field == "decide" and found.outcomes is not None:
        for value in sorted(found.outcomes):
            if value.strip() not in step.branches:
                message = f"decide can render {value!r}, which is not a branch label ({', '.join(step.branches)})"
                problems.append(Problem("FR303", message))
    return problems


def _check_chain(chain: tuple[str, ...], flow: Flow, scope: Scope) -> Iterator[Problem]:
    root, first, rest = chain[0], chain[1], chain[2:]
    if root == "inputs":
        if first not in flow.inputs:
            yield Problem("FR302", f"inputs.{first}: the flow has no input {first!r}{_known(flow.inputs)}")
        return
    if root == "memory":
        if first not in scope.remembered:
            known = _known(dict.fromkeys(scope.remembered))
            yield Problem("FR302", f"memory.{first}: no step of the flow remembers {first!r}{known}; add it to a "
                                   "step's `remember`")
        return
    if first not in scope.steps:
        yield Problem("FR302", f"{root}.{first}: the flow has no step {first!r}")
        return
    if root == "visits" or not rest:
        return
    if rest[0] not in STEP_ATTRIBUTES:
        yield Problem("FR302", f"steps.{first}.{rest[0]}: a step offers only `output`")
        return
    if len(rest) > 1:
        yield from _check_field(scope.steps[first], rest[1], scope)


def _check_field(step: Step, name: str, scope: Scope) -> Iterator[Problem]:
    reference = f"steps.{step.id}.output.{name}"
    if step.id in scope.outputs:  # what another flow, a map or branches give
        schema = scope.outputs[step.id]
        if schema is None:
            return
        if schema.get("type") == "array":
            yield Problem("FR302", f"{reference}: step {step.id!r} is a map: its output is a list, with no fields")
        elif not isinstance(properties := schema.get("properties"), dict):
            yield Problem("FR127", f"{reference}: what step {step.id!r} calls ends with no output_schema, so its "
                                   "output is text with no fields")
        elif name not in properties:
            yield Problem("FR127", f"{reference}: what step {step.id!r} calls never gives a field {name!r}"
                                   f"{_known(properties)}")
        return
    declared = step.output_schema if step.output_schema is not None else step.answer_schema  # an input's answer
    if declared is None:
        # data of a shape not declared: a tool's result, or the value of an `output` that is one expression
        data = facts(step.output).expression if step.output is not None else step.tool is not None
        if not data:
            yield Problem("FR302", f"{reference}: step {step.id!r} has no output_schema, so its output is text "
                                   "with no fields")
        return
    properties = declared.get("properties")
    if isinstance(properties, dict) and name not in properties:
        yield Problem("FR302", f"{reference}: the output_schema of {step.id!r} has no property {name!r}"
                               f"{_known(properties)}")


def _known(names: dict[str, object]) -> str:
    return f" (known: {', '.join(names)})" if names else ""
