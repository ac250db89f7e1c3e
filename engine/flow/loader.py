"""YAML text -> plain Python data with a line:column for every mapping key and value.

Plain scalars are read by the YAML 1.2 core schema (what editors' YAML servers use): only `true`/`false` are
booleans, so branch labels such as `yes`, `no`, `on` and `off` stay strings. Mapping keys are always strings, as in
JSON. `<<` merge keys are honoured. Problems are diagnostics, never exceptions.
"""

from __future__ import annotations

import math
import re
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

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
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

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            return _PLAIN if implicit[0] else _STR
        return _SEQ if kind is SequenceNode else _MAP


def resolve_plain(text: str) -> Any:
    """The value of an untagged plain scalar under the YAML 1.2 core schema."""
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if _INT.match(text):
        return int(text)
    if text[:2] in ("0o", "0x"):
        try:
            return int(text, 0)
        except ValueError:
            return text
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    if _FLOAT.match(text):
        return float(text)
    return text


@dataclass
class Document:
    """A loaded YAML file: its data, where each part of it stands, and what went wrong reading it."""

    file: str
    data: Any = None
    values: dict[KeyPath, Position] = field(default_factory=dict)
    keys: dict[KeyPath, Position] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def position(self, path: KeyPath, *, key: bool = False) -> Position:
        """Where the value at `path` stands (or its key, with key=True); the nearest known ancestor otherwise."""
        table = self.keys if key else self.values
        for end in range(len(path), -1, -1):
            found = table.get(path[:end])
            if found is not None:
                return found
        return (1, 1)


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


def load_yaml(text: str, file: str) -> Document:
    """Read one YAML document from `text`; `file` is the name diagnostics carry."""
    doc = Document(file)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        doc.diagnostics.append(diagnostic("FR001", _syntax_message(exc), file, where))
        return doc
    except yaml.YAMLError as exc:  # e.g. a control character the reader refuses
        doc.diagnostics.append(diagnostic("FR001", str(exc).splitlines()[0], file, (1, 1)))
        return doc
    finally:
        loader.dispose()
    if node is None:
        return doc
    builder = _Builder(doc)
    try:
        doc.data = builder.build(node, ())
    except RecursionError:
        doc.diagnostics.append(diagnostic("FR004", "the document is nested too deeply to read", file, (1, 1)))
    except _TooLarge:
        pass  # reported where the limit was crossed
    return doc


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    parts = [p for p in (exc.context, exc.problem) if p]
    text = "; ".join(parts) or "not valid YAML"
    return f"YAML syntax: {text} (check the indentation and quoting here)"


class _Builder:
    """Turns composed nodes into plain data, recording positions and reporting what YAML allows but we don't."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.done: dict[int, Any] = {}  # node id -> value, so aliases share one value
        self.active: set[int] = set()  # nodes being built: meeting one again means a recursive alias
        self.size: dict[int, int] = {}  # node id -> how many nodes it expands to
        self.total = 0

    def report(self, code: str, message: str, node: Node) -> None:
        mark = node.start_mark
        self.doc.diagnostics.append(diagnostic(code, message, self.doc.file, (mark.line + 1, mark.column + 1)))

    def build(self, node: Node, path: KeyPath) -> Any:
        key = id(node)
        if key in self.done:
            # An alias: the value is shared, and so is the cost of validating it, which is what we bound.
            self.total += self.size[key]
            if self.total > _MAX_NODES:
                self.report("FR004", f"aliases expand this document past {_MAX_NODES:,} values", node)
                raise _TooLarge
            return self.done[key]
        if key in self.active:
            self.report("FR004", "an alias refers to a value that contains it (a recursive alias)", node)
            return None
        self.doc.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        before = self.total
        self.total += 1
        if isinstance(node, ScalarNode):
            value = self.scalar(node)
        else:
            self.active.add(key)
            value = self.mapping(node, path) if isinstance(node, MappingNode) else self.sequence(node, path)
            self.active.discard(key)
        self.done[key] = value
        self.size[key] = self.total - before
        return value

    def scalar(self, node: ScalarNode) -> Any:
        if node.tag == _PLAIN:
            return resolve_plain(node.value)
        if node.tag != _STR:
            self.report("FR004", f"unsupported YAML tag {node.tag!r}: use a plain value", node)
        return node.value

    def sequence(self, node: SequenceNode, path: KeyPath) -> list[Any]:
        if node.tag != _SEQ:
            self.report("FR004", f"unsupported YAML tag {node.tag!r}: use a plain list", node)
        return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]

    def mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        if node.tag != _MAP:
            self.report("FR004", f"unsupported YAML tag {node.tag!r}: use a plain mapping", node)
        result: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        merged: list[dict[str, Any]] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.report("FR004", "a mapping key must be a plain value, not a list or mapping", key_node)
                continue
            name = key_node.value
            if name == "<<" and key_node.tag == _PLAIN:
                merged.extend(self.merge_sources(value_node, path))
                continue
            line = key_node.start_mark.line + 1
            if name in first_seen:
                self.report("FR002", f"duplicate key {name!r} (first defined on line {first_seen[name]}): "
                            "YAML keeps only the last one; remove or rename one of them", key_node)
            first_seen.setdefault(name, line)
            child = (*path, name)
            self.doc.keys[child] = (line, key_node.start_mark.column + 1)
            result[name] = self.build(value_node, child)
        for source in merged:  # keys written out in the mapping win over merged ones, earlier merges over later
            for name, value in source.items():
                result.setdefault(name, value)
        return result

    def merge_sources(self, node: Node, path: KeyPath) -> list[dict[str, Any]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        found = []
        for source in sources:
            value = self.build(source, path)
            if isinstance(value, dict):
                found.append(value)
            else:
                self.report("FR004", "a `<<` merge key needs a mapping (or a list of mappings) to merge", source)
        return found
