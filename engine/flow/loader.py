"""YAML text -> plain Python data, with the line:column of every mapping key and value on request.

Plain scalars are read by the YAML 1.2 core schema (what editors' YAML servers use): only `true`/`false` are
booleans, so branch labels such as `yes`, `no`, `on` and `off` stay strings. Mapping keys are always strings, as in
JSON. `<<` merge keys are honoured. Problems are diagnostics, never exceptions.

Positions are looked up in the composed node tree when a diagnostic needs one, so a valid file pays nothing for them.
"""

from __future__ import annotations

import gc
import hashlib
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver

from engine.flow.diagnostics import Diagnostic, diagnostic

try:
    from yaml.cyaml import CParser as _Parser
except ImportError:  # PyYAML built without libyaml: same nodes, slower
    from yaml.composer import Composer
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser, Composer):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)


KeyPath = tuple[str | int, ...]
Position = tuple[int, int]

_STR, _SEQ, _MAP = "tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"
_PLAIN = "!plain"  # our tag for an untagged plain scalar, resolved below by the YAML 1.2 core schema
_MAX_NODES = 1_000_000  # what a document may expand to through aliases
_NESTING_LIMIT = "exceeded maximum nesting depth"  # libyaml's words when a document nests past its limit
_TOO_DEEP = "the document is nested too deeply to read: flatten it (a resource limit, not a syntax error)"

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_SPECIAL_START = frozenset("0123456789+-.~nNtTfF")  # a plain scalar starting otherwise is a string
_INT = re.compile(r"[-+]?[0-9]+\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_SPECIAL_FLOATS = {
    **{s + v: sign * math.inf for s, sign in (("", 1), ("+", 1), ("-", -1)) for v in (".inf", ".Inf", ".INF")},
    **{v: math.nan for v in (".nan", ".NaN", ".NAN")},
}


class _TooLarge(Exception):
    """Aliases expand the document past _MAX_NODES."""


class _Loader(_Parser, BaseResolver):
    """libyaml's composer with a resolver that only marks plain scalars (resolution happens in _Builder)."""

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        BaseResolver.__init__(self)
        # The composer calls these per node for path resolvers, which we do not use; C no-ops of the same arity
        # save a Python call each (an eighth of the time to compose).
        self.descend_resolver = {}.get
        self.ascend_resolver = [].clear

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            return _PLAIN if implicit[0] else _STR
        return _SEQ if kind is SequenceNode else _MAP


def resolve_plain(text: str) -> Any:
    """The value of an untagged plain scalar under the YAML 1.2 core schema; a ValueError for an integer too long
    to write back in decimal (over sys.get_int_max_str_digits() digits: JSON, storage and messages need that)."""
    if text and text[0] not in _SPECIAL_START:
        return text
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if _INT.match(text):
        return int(text)  # Python itself refuses a decimal integer past the limit
    if text[:2] in ("0o", "0x"):
        try:
            value = int(text, 0)
        except ValueError:
            return text
        str(value)  # other bases have no limit of their own: refused where their decimal form would be
        return value
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    if _FLOAT.match(text):
        return float(text)
    return text


@dataclass
class Document:
    """A loaded YAML file: its data, its composed nodes (for positions), and what went wrong reading it."""

    file: str
    data: Any = None
    root: Node | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    sha256: str = ""  # of the text, to tell later whether the file changed
    _keys: dict[int, dict[str, tuple[Node, Node]]] = field(default_factory=dict, repr=False)

    def position(self, path: KeyPath, *, key: bool = False) -> Position:
        """Where the value at `path` stands (with key=True: the mapping key leading to it).

        Where `path` leads nowhere, the position of the deepest part of it that exists.
        """
        node, key_node = self.root, None
        for part in path:
            pair = self._child(node, part)
            if pair is None:
                break
            if pair[0] is not None:
                key_node = pair[0]
            node = pair[1]
        target = key_node if key and key_node is not None else node
        if target is None:
            return (1, 1)
        return (target.start_mark.line + 1, target.start_mark.column + 1)

    def part(self, path: KeyPath) -> Document:
        """The part of this document at `path` (a sub-flow) as a document of its own: its data, its positions still
        those in this file."""
        node, data = self.root, self.data
        for key in path:
            pair = self._child(node, key)
            node = pair[1] if pair is not None else None
            data = data.get(key) if isinstance(data, dict) else None
        return Document(self.file, data, node, [], self.sha256, self._keys)

    def _child(self, node: Node | None, part: str | int) -> tuple[Node | None, Node] | None:
        if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            return None, node.value[part]
        if isinstance(node, MappingNode) and isinstance(part, str):
            if id(node) not in self._keys:
                self._keys[id(node)] = dict(reversed(list(_pairs(node))))  # the first of a key is the one kept
            return self._keys[id(node)].get(part)
        return None


def _pairs(node: MappingNode, seen: frozenset[int] = frozenset()) -> Iterator[tuple[str, tuple[Node, Node]]]:
    """(key, (key node, value node)) as the data has them: written keys first, then merged ones not overridden."""
    seen = seen | {id(node)}
    merged = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            continue
        if key_node.value == "<<" and key_node.tag == _PLAIN:
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            merged += [s for s in sources if isinstance(s, MappingNode) and id(s) not in seen]
        else:
            yield key_node.value, (key_node, value_node)
    for source in merged:
        yield from _pairs(source, seen)


def load_file(path: Path | str, file: str | None = None) -> Document:
    """Read the YAML file at `path`; `file` (default: the path as given) is the name diagnostics carry."""
    file = str(path) if file is None else file
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problem = diagnostic("FR001", f"not UTF-8 text ({exc.reason}): save it as UTF-8", file, (1, 1))
        return Document(file, diagnostics=[problem])
    except OSError as exc:
        problem = diagnostic("FR001", f"cannot read the file: {exc.strerror or exc}", file, (1, 1))
        return Document(file, diagnostics=[problem])
    return load_yaml(text, file)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (reference counting still frees what is dropped)."""
    # Loading and checking make many objects and no cycles; the collector would rescan the growing heap again and
    # again (it doubles the time to load a 10,000-step flow).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_yaml(text: str, file: str) -> Document:
    """Read one YAML document from `text`; `file` is the name diagnostics carry."""
    doc = Document(file, sha256=hashlib.sha256(text.encode()).hexdigest())
    with gc_paused():
        loader = _Loader(text)
        try:
            doc.root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            if exc.problem and _NESTING_LIMIT in exc.problem:  # libyaml >= 0.2.6 (PyYAML 6.0.4's wheels) stops here
                doc.diagnostics.append(diagnostic("FR004", _TOO_DEEP, file, where))
            else:
                doc.diagnostics.append(diagnostic("FR001", _syntax_message(exc), file, where))
            return doc
        except RecursionError:  # the pure-Python composer has no depth limit of its own
            mark = loader.get_mark()
            doc.diagnostics.append(diagnostic("FR004", _TOO_DEEP, file, (mark.line + 1, mark.column + 1)))
            return doc
        except yaml.YAMLError as exc:  # e.g. a control character the reader refuses
            doc.diagnostics.append(diagnostic("FR001", str(exc).splitlines()[0], file, (1, 1)))
            return doc
        finally:
            loader.dispose()
        if doc.root is None:
            return doc
        try:
            doc.data = _Builder(doc).build(doc.root)
        except RecursionError:  # libyaml before 0.2.6 composes any depth; building it is what overflows
            doc.diagnostics.append(diagnostic("FR004", _TOO_DEEP, file, _deepest(doc.root)))
        except _TooLarge:
            pass  # reported where the limit was crossed
    return doc


def _deepest(root: Node) -> Position:
    """Where the most deeply nested node of the tree starts (found without recursion)."""
    deepest, depth_max = root, 0
    stack, seen = [(root, 0)], set()
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:  # an alias, possibly of a node that contains it
            continue
        seen.add(id(node))
        if depth > depth_max:
            deepest, depth_max = node, depth
        if node.__class__ is SequenceNode:
            stack.extend((child, depth + 1) for child in node.value)
        elif node.__class__ is MappingNode:
            stack.extend((value, depth + 1) for _, value in node.value)
    return (deepest.start_mark.line + 1, deepest.start_mark.column + 1)


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    parts = [p for p in (exc.context, exc.problem) if p]
    text = "; ".join(parts) or "not valid YAML"
    return f"YAML syntax: {text} (check the indentation and quoting here)"


class _Builder:
    """Turns composed nodes into plain data, reporting what YAML allows but flow files do not."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.done: dict[int, Any] = {}  # node id -> value, so aliases share one value
        self.active: set[int] = set()  # containers being built: meeting one again means a recursive alias
        self.sizes: dict[int, int] = {}  # node id -> how many nodes it expands to (only for aliased nodes)
        self.total = 0

    def report(self, code: str, message: str, node: Node) -> None:
        mark = node.start_mark
        self.doc.diagnostics.append(diagnostic(code, message, self.doc.file, (mark.line + 1, mark.column + 1)))

    def build(self, node: Node) -> Any:
        if node.__class__ is ScalarNode:  # the common case first; a shared scalar may as well be built twice
            if node.tag == _PLAIN:
                return self.plain(node)
            if node.tag != _STR:
                self.report("FR004", f"unsupported YAML tag {node.tag!r}: use a plain value", node)
            return node.value
        key = id(node)
        if key in self.done:
            # An alias: the value is shared, but checking it costs its full size, which is what we bound.
            self.total += self.expanded_size(node)
            if self.total > _MAX_NODES:
                self.report("FR004", f"aliases expand this document past {_MAX_NODES:,} values", node)
                raise _TooLarge
            return self.done[key]
        if key in self.active:
            self.report("FR004", "an alias refers to a value that contains it (a recursive alias)", node)
            return None
        self.total += 1
        self.active.add(key)
        value = self.mapping(node) if node.__class__ is MappingNode else self.sequence(node)
        self.active.discard(key)
        self.done[key] = value
        return value

    def plain(self, node: ScalarNode) -> Any:
        try:
            return resolve_plain(node.value)
        except ValueError:
            self.report("FR004", f"an integer of more than {sys.get_int_max_str_digits():,} digits is more than "
                        "flowrun reads: quote it if it is text", node)
            return None

    def expanded_size(self, node: Node) -> int:
        key = id(node)
        if key not in self.sizes:
            self.sizes[key] = 0  # a recursive alias counts as nothing more (it is reported)
            children = [] if node.__class__ is ScalarNode else node.value
            if node.__class__ is MappingNode:
                children = [n for pair in children for n in pair]
            self.sizes[key] = 1 + sum(self.expanded_size(child) for child in children)
        return self.sizes[key]

    def sequence(self, node: SequenceNode) -> list[Any]:
        if node.tag != _SEQ:
            self.report("FR004", f"unsupported YAML tag {node.tag!r}: use a plain list", node)
        return [self.build(item) for item in node.value]

    def mapping(self, node: MappingNode) -> dict[str, Any]:
        if node.tag != _MAP:
            self.report("FR004", f"unsupported YAML tag {node.tag!r}: use a plain mapping", node)
        result: dict[str, Any] = {}
        merged: list[dict[str, Any]] = []
        for key_node, value_node in node.value:
            if key_node.__class__ is not ScalarNode:
                self.report("FR004", "a mapping key must be a plain value, not a list or mapping", key_node)
                continue
            name = key_node.value
            if name == "<<" and key_node.tag == _PLAIN:
                merged.extend(self.merge_sources(value_node))
                continue
            if name in result:
                first = next(k for k, _ in node.value if k.__class__ is ScalarNode and k.value == name)
                self.report("FR002", f"duplicate key {name!r} (first defined on line {first.start_mark.line + 1}): "
                            "YAML keeps only the last one; remove or rename one of them", key_node)
            if value_node.__class__ is ScalarNode and value_node.tag == _PLAIN:
                result[name] = self.plain(value_node)
            else:
                result[name] = self.build(value_node)
        for source in merged:  # keys written out in the mapping win over merged ones, earlier merges over later
            for name, value in source.items():
                result.setdefault(name, value)
        return result

    def merge_sources(self, node: Node) -> list[dict[str, Any]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        found = []
        for source in sources:
            value = self.build(source)
            if isinstance(value, dict):
                found.append(value)
            else:
                self.report("FR004", "a `<<` merge key needs a mapping (or a list of mappings) to merge", source)
        return found
