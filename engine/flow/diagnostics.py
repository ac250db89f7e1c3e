"""Diagnostics: every problem flowrun finds in a file, with a stable code and a position."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Rule:
    """A kind of problem: its stable code, a short name, its default severity and what it means."""

    code: str
    name: str
    severity: Severity
    summary: str


_E, _W = Severity.ERROR, Severity.WARNING

RULES: dict[str, Rule] = {
    rule.code: rule
    for rule in (
        Rule("FR001", "yaml-syntax", _E, "The file is not well-formed YAML."),
        Rule("FR002", "duplicate-key", _E, "A mapping has the same key twice; YAML parsers silently keep the last."),
        Rule("FR003", "schema", _E, "The file does not match its JSON Schema (schemas/*.schema.json)."),
        Rule("FR004", "yaml-unsupported", _E, "A YAML feature flowrun does not accept: unknown tags, alias bombs."),
        Rule("FR005", "unsupported-format", _E, "The file's format version is not one this flowrun reads."),
        Rule("FR101", "unknown-target", _E, "`next`, a branch or `start` names a step that does not exist."),
        Rule("FR102", "unreachable-step", _W, "No path from the start step leads to this step."),
        Rule("FR103", "no-terminal", _E, "No terminal step can be reached from here: a dead end or a closed loop."),
        Rule("FR104", "too-few-branches", _E, "A decision needs at least two branches."),
        Rule("FR105", "repeated-label", _E, "Two branch labels of a decision differ only in case or spacing."),
        Rule("FR106", "terminal-has-edges", _E, "A terminal step ends the run; it cannot have `next` or `branches`."),
        Rule("FR201", "unknown-tool", _E, "No tool manifest defines this tool."),
        Rule("FR202", "unused-tool", _W, "The flow declares a tool that no step can use."),
        Rule("FR203", "undeclared-tool", _E, "A step uses a tool the flow does not list in `tools`."),
        Rule("FR204", "duplicate-tool", _E, "Two tool manifests define the same tool name."),
        Rule("FR205", "tool-code-missing", _E, "A manifest's entry names a .py file that is not beside it."),
        Rule("FR301", "template-syntax", _E, "A Jinja2 template does not parse."),
        Rule("FR302", "undefined-name", _E, "A template uses an input, step, field or name that does not exist."),
        Rule("FR303", "decide-label", _E, "A `decide` template can render a value that is not a branch label."),
        Rule("FR304", "template-limit", _E, "A template goes past a sandbox bound: a number, text or loop too large, "
             "or nesting too deep."),
        Rule("FR305", "template-unsafe", _E, "A template reaches for what the sandbox refuses: Python internals, "
             "methods that change data."),
        Rule("FR401", "unbounded-loop", _W, "The flow has a loop but no explicit `limits.max_steps`."),
        Rule("FR501", "aios-format", _E, "A legacy AIOS agent config that `flowrun import-aios` cannot read."),
        Rule("FR502", "aios-unknown-tool", _W, "A legacy config names a tool with no manifest; the import drops it."),
        Rule("FR601", "test-unknown-step", _E, "A test case names a step or branch label its flow does not have."),
        Rule("FR602", "test-missing-file", _E, "A test file's flow, or a case's cassette, does not exist."),
    )
}


@dataclass(frozen=True)
class Diagnostic:
    """One problem at one place. `line` and `column` count from 1."""

    code: str
    severity: Severity
    message: str
    file: str
    line: int
    column: int

    @property
    def name(self) -> str:
        return RULES[self.code].name


def diagnostic(code: str, message: str, file: str, position: tuple[int, int]) -> Diagnostic:
    """A diagnostic of rule `code` at `position` (line, column), with the rule's severity."""
    line, column = position
    return Diagnostic(code, RULES[code].severity, message, file, line, column)


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    """Whether any of `diagnostics` is an error."""
    return any(d.severity is Severity.ERROR for d in diagnostics)
