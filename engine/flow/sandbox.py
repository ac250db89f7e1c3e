"""The sandbox flow templates render in: Jinja2's immutable sandbox, bounded so that no template can hang a run.

Jinja2's sandbox keeps a template away from Python's internals, not from endless work: `10 ** 10 ** 9` and
`'x' * 10 ** 10` are single C calls that no signal interrupts, and `range(100000)` loops nest. Here:

- a value's size is what it would spell out: the characters of a string or bytes, the digits of a number, and for
  a list, tuple, dict, set or namespace its items plus the sizes of what they hold, each time it is held (`size`);
- an operation that can make a result far larger than its operands is checked before it runs: `**` (at most
  MAX_INT_BITS bits), and repeating (`*`), adding (`+`), formatting widths (`%`, `format`), padding, replacing,
  joining, translating, batching and slicing (at most MAX_SIZE in size), on bytes as on str;
- the result of every other operator, filter, call and `~`, and each list, tuple and dict the template writes, is
  checked after it is made, so no loop or nesting can grow a value past those bounds;
- one render runs at most MAX_STEPS loop iterations and calls, for at most MAX_SECONDS, and makes at most MAX_SIZE
  characters of text (its output, and each `{% set %}` or macro body), counted as it is made;
- a template nests at most MAX_NESTING brackets and MAX_DEPTH levels of syntax: deeper ones would overflow the
  Python stack in Jinja2's recursive parser and compiler.

Going past a bound raises TemplateLimit, naming the bound. `templates.py` applies the same bounds at validation to
what it can compute before a run.
"""

from __future__ import annotations

import copy
import math
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, MappingView, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.ext import Extension
from jinja2.lexer import TokenStream
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

MAX_SIZE = 1_000_000  # characters of a string, items of a list (see `size`)
MAX_INT_BITS = 100_000  # about 30,000 decimal digits
MAX_STEPS = 1_000_000  # loop iterations and calls in one render
MAX_SECONDS = 5.0  # one render
MAX_NESTING = 30  # brackets within brackets
MAX_DEPTH = 100  # levels of the syntax tree


class TemplateLimit(SecurityError):
    """A template went past one of the sandbox's bounds; `lineno` is the template line, where known."""

    def __init__(self, message: str, lineno: int | None = None) -> None:
        super().__init__(message)
        self.lineno = lineno


def expect(length: int, what: str) -> None:
    """Refuse an operation that would make `length` characters or items."""
    if length > MAX_SIZE:
        raise TemplateLimit(f"{what} would make at least {length:,} characters or items; a template may make at "
                            f"most {MAX_SIZE:,}")


# Bytes come only from `str.encode`, and are bounded like str rather than refused: counting a text's bytes
# (`s.encode()|length`) is a fair use, and every check that takes str takes bytes the same way.
_TEXT = (str, bytes, bytearray)


def size(value: Any, limit: int = MAX_SIZE) -> int:
    """About what `value` spells out when printed, joined or dumped to JSON, in characters or items: a string's or
    bytes' length, an int's decimal digits, and for a container its items plus the size of each, counted each time
    it is held (`[s] * 1000` spells `s` 1000 times). The walk stops as soon as the count passes `limit`, so it costs
    at most about `limit` steps whatever the value; a namespace that holds itself counts as past it."""
    if isinstance(value, _TEXT):
        return len(value)
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _TEXT):
            total += len(item)
        elif isinstance(item, list | tuple):
            total += len(item)
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, dict):
            total += len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, int):
            total += item.bit_length() // 3  # at least its decimal digits, for all but the smallest
        elif isinstance(item, float | None):
            pass  # the commonest leaves, before the slower checks below
        elif isinstance(item, set | frozenset | MappingView):  # MappingView: `d.items()` spells out `d`
            total += len(item)
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, Namespace):
            stack.append(item._Namespace__attrs)  # its attributes, which its repr spells out; no public way in
        if total > limit:
            break
    return total


def checked(value: Any, what: str) -> Any:
    """`value`, the result of `what`, refused when it is past the bounds."""
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TemplateLimit(f"{what} gives a number of {value.bit_length():,} bits; a template may make at most "
                            f"{MAX_INT_BITS:,}")
    expect(size(value), what)
    return value


OPERATORS = ImmutableSandboxedEnvironment.default_binop_table


def binop(operator: str, left: Any, right: Any) -> Any:
    """`left <operator> right` (an operator of OPERATORS), refused past the bounds."""
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        bits = right * math.log2(abs(left))
        if bits > MAX_INT_BITS:
            raise TemplateLimit(f"`{left} ** {right}` would be a number of about {bits:,.0f} bits; a template may "
                                f"make at most {MAX_INT_BITS:,}")
    # Repeating and adding sequences: their result's size is known before it is made, so it needs no check after.
    if operator == "*":
        for sequence, times in ((left, right), (right, left)):
            if isinstance(sequence, _SEQUENCES) and isinstance(times, int):
                unit = "text" if isinstance(sequence, _TEXT) else "list"
                expect(size(sequence) * max(times, 0), f"repeating a {unit} of length {len(sequence):,} "
                                                       f"{times:,} times")
                return OPERATORS[operator](left, right)
    if operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        expect(size(left) + size(right), "`+`")
        return OPERATORS[operator](left, right)
    if operator == "%" and isinstance(left, _TEXT):
        expect(printf_width(left, right), "a `%` format width")
    return checked(OPERATORS[operator](left, right), f"`{operator}`")


_SEQUENCES = (*_TEXT, list, tuple)


_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def printf_width(fmt: str | bytes | bytearray, args: Any) -> int:
    """The widest field (width or precision) `fmt % args` pads to."""
    if not isinstance(fmt, str):
        fmt = fmt.decode("latin-1")  # bytes take the same `%` fields
    widths = [n for match in _PRINTF.finditer(fmt) for n in match.groups() if n]
    numbers = [int(n) for n in widths if n != "*"]
    if "*" in widths:
        numbers += [a for a in (args if isinstance(args, tuple) else (args,)) if isinstance(a, int)]
    return max(numbers, default=0)


def format_width(fmt: str, *args: Any, **kwargs: Any) -> int:
    """The widest field `fmt.format(*args, **kwargs)` pads to."""
    try:
        specs = [spec for _, _, spec, _ in string.Formatter().parse(fmt) if spec]
    except ValueError:  # the call itself reports it
        return 0
    numbers = [int(n) for spec in specs for n in _DIGITS.findall(spec)]
    if any("{" in spec for spec in specs):  # a width taken from the arguments
        numbers += [a for a in (*args, *kwargs.values()) if isinstance(a, int)]
    return max(numbers, default=0)


def _replaced(text: Any, old: Any, new: Any, count: Any = -1) -> int:
    if not (isinstance(text, _TEXT) and isinstance(old, _TEXT) and isinstance(new, _TEXT)):
        return 0
    found = len(text) + 1 if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * len(new)


def _joined(separator: Any, items: Any) -> int:
    if not isinstance(items, Sized):  # `_sized` has read iterators into lists
        return 0
    return size(separator) * len(items) + size(items)


def _translated(text: Any, table: Any) -> int:
    replacements = table.values() if isinstance(table, dict) else table if isinstance(table, list | tuple) else ()
    return len(text) * max((size(r) for r in replacements if isinstance(r, str)), default=1)


def _summed(items: Any) -> int:
    # A sum of sequences copies the growing result at each item: its work is quadratic in the items, not its size.
    if not isinstance(items, list | tuple):
        return 0
    return sum(len(item) for item in items if isinstance(item, str | list | tuple)) * max(1, len(items) // 2)


def _wrapped(text: Any, width: Any = 79, breaking: Any = True, wrapstring: Any = None, *args: Any) -> int:
    if not isinstance(text, str) or not isinstance(width, int):
        return 0
    lines = 2 * len(text) // max(width, 1) + text.count("\n") + 2  # a long word can leave a short line before it
    return len(text) + lines * len(str(wrapstring or "\n"))


def _width(_: Any, width: Any = 0, *args: Any, **kwargs: Any) -> int:
    return width if isinstance(width, int) else 0


def _count(_: Any, count: Any = 0, *args: Any, **kwargs: Any) -> int:
    return count if isinstance(count, int) else 0


def _indented(text: Any, width: Any = 4, *args: Any, **kwargs: Any) -> int:
    pad = width if isinstance(width, int) else len(str(width))
    return len(str(text)) + (str(text).count("\n") + 1) * pad


# What a string method or a filter with these names would make, in characters or items, from its arguments (filters
# get the arguments Jinja2 passes them, eval context first where they take one). Every other method and filter
# makes at most about as much as it is given.
_METHODS: dict[str, Callable[..., int]] = {
    "center": _width, "ljust": _width, "rjust": _width, "zfill": _width,
    "expandtabs": lambda text, tabsize=8: len(text) + text.count("\t" if isinstance(text, str) else b"\t") * tabsize,
    "replace": _replaced,
    "join": lambda separator, items: _joined(separator, items),
    "translate": _translated,
    "format": lambda fmt, *args, **kwargs: format_width(fmt, *args, **kwargs),
    "format_map": lambda fmt, mapping: format_width(fmt, **mapping),
}
_FILTERS: dict[str, Callable[..., int]] = {
    "center": _width, "indent": _indented, "batch": _count, "slice": _count,
    "format": lambda fmt, *args, **kwargs: printf_width(str(fmt), kwargs or args),
    "replace": lambda _, text, old, new, count=None: _replaced(text, old, new, -1 if count is None else count),
    "join": lambda _, items, separator="", attribute=None: _joined(separator, items),
    "tojson": lambda _, value, indent=None: _width(value, indent) * len(str(value)),
    "wordwrap": lambda _, *args, **kwargs: _wrapped(*args, **kwargs),
    "urlize": lambda _, text, limit=None, nofollow=False, target=None, rel=None, *args:
        len(str(text)) // 2 * (len(str(target or "")) + len(str(rel or ""))),  # per link
    "sum": lambda _, items, attribute=None, start=0: _summed(items),
}


def _sized(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """`args` with iterators (`map`, `select`, ... give them) read into lists, so that an estimate can count them."""
    return tuple(_read(arg) if isinstance(arg, Iterator) else arg for arg in args)


def _read(items: Iterator[Any]) -> list[Any]:
    """The rest of `items`, refused as soon as they pass MAX_SIZE in all: each may be large, and no count says how
    many there are."""
    read: list[Any] = []
    total = 0
    for item in items:
        total += 1 + size(item, MAX_SIZE - total)
        expect(total, "the items read for a filter or call")
        read.append(item)
    return read


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    estimate = _FILTERS.get(name)

    def bounded(*args: Any, **kwargs: Any) -> Any:
        tick()
        if estimate is not None:
            args = _sized(args)
            expect(estimate(*args, **kwargs), f"the filter `{name}`")
        return checked(function(*args, **kwargs), f"the filter `{name}`")

    bounded.__dict__.update(getattr(function, "__dict__", {}))  # Jinja2's mark of what context the filter takes
    return bounded


@dataclass
class _Budget:
    steps: int
    deadline: float


_budget: ContextVar[_Budget | None] = ContextVar("flowrun_template_budget", default=None)


def tick() -> None:
    """Count one loop iteration or call of the render in progress against its budget."""
    budget = _budget.get()
    if budget is None:
        return
    budget.steps -= 1
    if budget.steps < 0:
        raise TemplateLimit(f"the template ran more than {MAX_STEPS:,} loop iterations and calls in one render")
    if time.monotonic() > budget.deadline:
        raise TemplateLimit(f"the template took more than {MAX_SECONDS:g} s to render")


class _Code(CodeGenerator):
    """Jinja2's code generator, with each loop's items counted and each `~` result checked."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        node = copy.copy(node)
        node.iter = nodes.Call(nodes.EnvironmentAttribute("loop_items"), [node.iter], [], None, None,
                               lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.joined(")
        super().visit_Concat(node, frame)
        self.write(")")

    # A literal holding a value many times (`[a, a, a]`) is far larger than its parts; tuples that are assignment
    # targets (`{% for a, b in ... %}`) are not values.
    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._built(super().visit_List, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._built(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx == "load":
            self._built(super().visit_Tuple, node, frame)
        else:
            super().visit_Tuple(node, frame)

    def _built(self, visit: Callable[[Any, Frame], None], node: nodes.Node, frame: Frame) -> None:
        self.write("environment.built(")
        visit(node, frame)
        self.write(")")

    def buffer(self, frame: Frame) -> None:
        """Text that a block (`{% set %}`, a macro, `{% filter %}`) makes goes to a _Text, which counts it as it
        grows: Jinja2 would join it only at the block's end."""
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.text()")


class _Text(list):
    """Text that a render makes, refused as soon as it passes MAX_SIZE characters."""

    length = 0

    def append(self, part: str) -> None:
        self.length += len(part)
        if self.length > MAX_SIZE:
            expect(self.length, "the template's text")
        super().append(part)

    def extend(self, parts: Iterable[str]) -> None:
        for part in parts:
            self.append(part)


class _Nesting(Extension):
    """Refuses brackets nested past MAX_NESTING as the template is read, before Jinja2's parser recurses into them."""

    def filter_stream(self, stream: TokenStream) -> Iterator[Any]:
        depth = 0
        for token in stream:
            if token.type in ("lparen", "lbracket", "lbrace"):
                depth += 1
                if depth > MAX_NESTING:
                    raise TemplateLimit(f"brackets are nested more than {MAX_NESTING} deep", token.lineno)
            elif token.type in ("rparen", "rbracket", "rbrace"):
                depth -= 1
            yield token


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with the bounds above."""

    code_generator_class = _Code
    intercepted_binops = frozenset({"**", "*", "+", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True,
                         extensions=[_Nesting])
        del self.globals["lipsum"]  # makes any number of paragraphs; a flow has no use for it
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        tick()
        return binop(operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        tick()
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox hands out str.format wrapped
        name = getattr(method, "__name__", "")
        if isinstance(getattr(method, "__self__", None), _TEXT) and name in _METHODS:
            args = _sized(args)
            expect(_METHODS[name](method.__self__, *args, **kwargs), f"{type(method.__self__).__name__}.{name}")
        return checked(super().call(__context, __obj, *args, **kwargs), f"calling {name or 'a function'}")

    text = _Text

    @staticmethod
    def concat(parts: Iterable[str]) -> str:
        """Text made of `parts` (a render's output, a `{% set %}` block, a macro's body), within MAX_SIZE: a render's
        output comes as it is made, and is refused once past it."""
        if isinstance(parts, _Text):
            return "".join(parts)
        text, length = [], 0
        for part in parts:  # inline rather than _Text.append: the output of every render comes this way
            length += len(part)
            if length > MAX_SIZE:
                expect(length, "the template's text")
            text.append(part)
        return "".join(text)

    @staticmethod
    def built(value: Any) -> Any:
        """A list, tuple or dict the template writes (the code generator's hook), within MAX_SIZE."""
        return checked(value, "a list, tuple or dict of the template")

    @staticmethod
    def joined(value: str) -> str:
        """The result of a `~` (the code generator's hook), within MAX_SIZE."""
        return checked(value, "`~`")

    @staticmethod
    def loop_items(items: Iterable[Any]) -> Iterator[Any]:
        """A loop's `items` (the code generator's hook), each counted against the render's budget."""
        for item in items:
            tick()
            yield item


environment = Sandbox()


def parse(text: str) -> nodes.Template:
    """The syntax tree of template `text`: TemplateSyntaxError where it does not parse, TemplateLimit where it nests
    too deeply."""
    try:
        tree = environment.parse(text)
    except RecursionError:  # nesting other than brackets: `not not ...`, `a if b else c if ...`, blocks in blocks
        raise TemplateLimit(f"the template nests too deeply to read (at most {MAX_DEPTH} levels)") from None
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise TemplateLimit(f"the template nests more than {MAX_DEPTH} levels deep", node.lineno)
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())
    return tree


def compile_template(text: str) -> Template:
    """Template `text`, checked by `parse`, compiled for `render`."""
    return environment.from_string(parse(text))


def render(template: Template, context: dict[str, Any]) -> str:
    """`template` rendered with `context` within one render's budget."""
    with _bounded():
        return template.render(context)


_VALUE = "value"  # where a template of compile_value leaves its value


def compile_value(expression: nodes.Expr) -> Template:
    """A template that computes `expression` (a node of a tree `parse` gave) for `value`, as Jinja2's
    compile_expression does, in this environment."""
    tree = nodes.Template([nodes.Assign(nodes.Name(_VALUE, "store"), expression, lineno=1)], lineno=1)
    tree.set_environment(environment)
    return environment.from_string(tree)


def value(template: Template, context: dict[str, Any]) -> Any:
    """The value `template` (from compile_value) computes with `context` within one render's budget. An iterator
    (what `map` or `select` give) or a range is read into a list, within the bounds."""
    with _bounded():
        run = template.new_context(context)
        for _ in template.root_render_func(run):
            pass
        found = run.vars[_VALUE]
        if isinstance(found, Undefined):
            str(found)  # StrictUndefined raises here, naming what is undefined
        return _read(iter(found)) if isinstance(found, Iterator | range) else found


@contextmanager
def _bounded() -> Iterator[None]:
    """One render's budget, for the render in its block."""
    token = _budget.set(_Budget(MAX_STEPS, time.monotonic() + MAX_SECONDS))
    try:
        yield
    except MemoryError:  # bounds make this rare (a large value from the data); its own message is empty
        raise TemplateLimit("the template needs more memory than it may use") from None
    finally:
        _budget.reset(token)
