"""Jinja2 templates in flows: the one sandboxed environment, and static checks of what a template refers to.

A template sees three names: `inputs` (the run's inputs), `steps` (`steps.<id>.output`: a step's latest result,
data when it has an output_schema) and `visits` (`visits.<id>`: how often a step has run).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.flow.model import Flow, Step

NAMES = ("inputs", "steps", "visits")
_IMPLICIT = ("loop", "caller", "varargs", "kwargs")  # names Jinja2 defines inside loops and macros
STEP_ATTRIBUTES = ("output",)

environment = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def is_template(text: str) -> bool:
    """Whether `text` has any Jinja2 markup; text without it renders to itself."""
    return "{{" in text or "{%" in text or "{#" in text


@dataclass(frozen=True)
class Problem:
    """Something wrong with one template: a rule code and a message (the caller knows where the template is)."""

    code: str
    message: str


def template_problems(text: str, flow: Flow, step: Step, field: str) -> list[Problem]:
    """What is wrong with template `text`, the `field` of `step` in `flow`."""
    if not is_template(text):
        return []
    try:
        tree = environment.parse(text)
    except TemplateSyntaxError as exc:
        where = f" (template line {exc.lineno})" if exc.lineno and exc.lineno > 1 else ""
        return [Problem("FR301", f"template does not parse{where}: {exc.message}")]
    problems = [Problem("FR301", message) for message in _unsupported(tree)]
    for name in sorted(_free_names(tree) - set(NAMES)):
        problems.append(Problem("FR302", f"unknown name {name!r}: templates can use {', '.join(NAMES)}"))
    problems.extend(Problem("FR302", message) for message in _reference_errors(tree, flow))
    if field == "decide":
        problems.extend(Problem("FR303", message) for message in _decide_errors(tree, step))
    return problems


def _free_names(tree: nodes.Template) -> set[str]:
    """Names a template reads but neither sets nor gets from Jinja2 (a scope-blind, cheap find_undeclared_variables)."""
    loaded, stored = set(), set(_IMPLICIT)
    for node in tree.find_all(nodes.Name):
        (loaded if node.ctx == "load" else stored).add(node.name)
    return loaded - stored - set(environment.globals)


def _unsupported(tree: nodes.Template) -> Iterator[str]:
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        yield f"`{{% {type(node).__name__.lower()} %}}` is not available in flow templates"
    for node in tree.find_all(nodes.Filter):
        if node.name not in environment.filters:
            yield f"unknown filter {node.name!r}"
    for node in tree.find_all(nodes.Test):
        if node.name not in environment.tests:
            yield f"unknown test {node.name!r}"


def _reference_errors(tree: nodes.Template, flow: Flow) -> Iterator[str]:
    """Errors in dotted references such as `steps.parse.output.days` (the longest chain of each)."""
    inner = {id(node.node) for node in tree.find_all((nodes.Getattr, nodes.Getitem))}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if id(node) in inner:
            continue
        chain = _chain(node)
        if chain is None or chain[0] not in NAMES or len(chain) < 2:
            continue
        yield from _check_chain(chain, flow)


def _chain(node: nodes.Expr) -> list[str] | None:
    """`steps.a.output` -> ["steps", "a", "output"]; None when a part is not a constant name."""
    parts: list[str] = []
    while isinstance(node, nodes.Getattr | nodes.Getitem):
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            parts.append(node.arg.value)
        else:
            parts.clear()  # a computed key: only what lies before it is checkable
        node = node.node
    if not isinstance(node, nodes.Name):
        return None
    return [node.name, *reversed(parts)]


def _check_chain(chain: list[str], flow: Flow) -> Iterator[str]:
    root, first, rest = chain[0], chain[1], chain[2:]
    if root == "inputs":
        if first not in flow.inputs:
            yield f"inputs.{first}: the flow has no input {first!r}{_known(flow.inputs)}"
        return
    if first not in flow.steps:
        yield f"{root}.{first}: the flow has no step {first!r}"
        return
    if root == "visits" or not rest:
        return
    if rest[0] not in STEP_ATTRIBUTES:
        yield f"steps.{first}.{rest[0]}: a step offers only `output`"
        return
    if len(rest) > 1:
        yield from _check_field(flow.steps[first], rest[1])


def _check_field(step: Step, name: str) -> Iterator[str]:
    reference = f"steps.{step.id}.output.{name}"
    if step.output_schema is None:
        yield f"{reference}: step {step.id!r} has no output_schema, so its output is text with no fields"
        return
    properties = step.output_schema.get("properties")
    if isinstance(properties, dict) and name not in properties:
        yield f"{reference}: the output_schema of {step.id!r} has no property {name!r}{_known(properties)}"


def _known(names: dict[str, object]) -> str:
    return f" (known: {', '.join(names)})" if names else ""


def _decide_errors(tree: nodes.Template, step: Step) -> Iterator[str]:
    """Constant values a `decide` template can render that are not branch labels."""
    expressions = [e for output in tree.body if isinstance(output, nodes.Output) for e in output.nodes]
    expressions = [e for e in expressions if not (isinstance(e, nodes.TemplateData) and not e.data.strip())]
    if len(expressions) != 1 or len(tree.body) != 1:
        return
    values = _constant_values(expressions[0])
    for value in sorted(values or ()):
        if value.strip() not in step.branches:
            yield f"decide can render {value!r}, which is not a branch label ({', '.join(step.branches)})"


def _constant_values(expr: nodes.Node) -> set[str] | None:
    """All values `expr` can take when it is built from string constants and if-else; None when it isn't."""
    if isinstance(expr, nodes.Const) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, nodes.TemplateData):
        return {expr.data}
    if isinstance(expr, nodes.CondExpr):
        then = _constant_values(expr.expr1)
        otherwise = _constant_values(expr.expr2) if expr.expr2 is not None else {""}
        return then | otherwise if then is not None and otherwise is not None else None
    return None
