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
    """A kind of problem: its stable code, a short name, its default severity, what it means and how to fix it."""

    code: str
    name: str
    severity: Severity
    summary: str
    fix: str  # what to do about it (SARIF's `help`)


_E, _W = Severity.ERROR, Severity.WARNING

RULES: dict[str, Rule] = {
    rule.code: rule
    for rule in (
        Rule("FR001", "yaml-syntax", _E, "The file is not well-formed YAML.",
             "Fix the YAML at the reported line: quote text holding `: ` or `#`, close brackets and quotes, indent "
             "consistently."),
        Rule("FR002", "duplicate-key", _E, "A mapping has the same key twice; YAML parsers silently keep the last.",
             "Remove or rename one of the two keys."),
        Rule("FR003", "schema", _E, "The file does not match its JSON Schema (schemas/*.schema.json).",
             "Change the value as the message says; the schema lists every field, and editors show it from the "
             "`# yaml-language-server: $schema=...` header."),
        Rule("FR004", "yaml-unsupported", _E, "A YAML feature flowrun does not accept: unknown tags, alias bombs.",
             "Write the value out in plain YAML: no `!tags`, no recursive or deeply repeated aliases."),
        Rule("FR005", "unsupported-format", _E, "The file's format version is not one this flowrun reads.",
             "Write `flowrun: 1`, or upgrade flowrun to one that reads this format."),
        Rule("FR006", "remote-ref", _E, "An embedded JSON Schema refers outside itself (a file or URL); flowrun never "
                                        "fetches schemas, so only local references (`#/...`) are allowed.",
             "Copy the schema it refers to into the embedded schema's `$defs` and write `$ref: '#/$defs/NAME'`."),
        Rule("FR101", "unknown-target", _E, "`next`, a branch or `start` names a step that does not exist.",
             "Name an existing step (the message suggests the closest one) or add the missing step."),
        Rule("FR102", "unreachable-step", _W, "No path from the start step leads to this step.",
             "Lead to the step from another step's `next` or a branch, or remove it."),
        Rule("FR103", "no-terminal", _E, "No terminal step can be reached from here: a dead end or a closed loop.",
             "Give the step a `next`, give the loop a branch out, or add a step with `kind: terminal`."),
        Rule("FR104", "too-few-branches", _E, "A decision needs at least two branches.",
             "Add a second branch, or make the step a process with `next`."),
        Rule("FR105", "repeated-label", _E, "Two branch labels of a decision differ only in case or spacing.",
             "Merge the two branches or rename one label."),
        Rule("FR106", "terminal-has-edges", _E, "A terminal step ends the run; it cannot have `next` or `branches`.",
             "Remove `next` or `branches`, or make the step a process or decision."),
        Rule("FR107", "output-with-tool-choice", _E, "A step has `output` and `tools` (a choice of tools): what its "
             "`output` would be built from depends on a choice the model may not make.",
             "Name the tool with `tool:` (its result is `result` in `output`), or drop `output`."),
        Rule("FR108", "example-answer", _E, "An example's answer is not one the step could give: not a branch label "
             "of the decision, not arguments the tool takes, or not matching the step's `output_schema`.",
             "Change the answer as the message says, so that the model learns the form it must give."),
        Rule("FR109", "unused-examples", _W, "A step has `examples` but asks the model nothing they could show "
             "(`output` without `tool`, a decision with `decide`), or chooses among `tools`, where they are not used.",
             "Remove the examples, or give them to a step that asks the model (with `tool:` for a tool call)."),
        Rule("FR110", "label-without-example", _E, "A decision chooses by its examples (`answer_by: examples`), "
             "but no example answers one of its labels, so the vote could never choose that label.",
             "Add examples of questions that label answers, or let the model choose (remove `answer_by`)."),
        Rule("FR111", "unused-recall", _W, "A step has `recall` but asks the model nothing (`decide`, `output` "
             "without `tool`, `arguments` whose result is kept), so the memories it recalls go in no prompt.",
             "Remove `recall`, or give it to a step that asks the model."),
        Rule("FR120", "unknown-flow", _E, "A step calls a flow (`flow:`) whose file is not found.",
             "Give the path relative to this file, or a name found as NAME.yaml beside it or in a folder of "
             "FLOWRUN_FLOWS."),
        Rule("FR121", "missing-input", _E, "A call leaves out an input the called flow requires (it has no default).",
             "Add the input to the step's `inputs`."),
        Rule("FR122", "unknown-input", _E, "A call gives an input the called flow does not have.",
             "Remove it, or fix its name (the message lists the called flow's inputs)."),
        Rule("FR123", "input-type", _E, "A constant input of a call does not match the called flow's schema for it.",
             "Give a value of the type the called flow declares, or a template."),
        Rule("FR124", "recursion", _E, "Flows call each other in a loop: a run would never end.",
             "Break the loop: a flow cannot call itself, directly or through others; loop with steps instead."),
        Rule("FR125", "sub-flow-without-terminal", _E, "A sub-flow (a parallel branch or a map's body) has no "
             "terminal step, so it never gives an answer.",
             "End the sub-flow with a step of `kind: terminal`: its output is the sub-flow's answer."),
        Rule("FR126", "items-not-a-list", _E, "A map's `items` is a constant that is not a list.",
             "Give a template that renders to a JSON array, or a JSON array."),
        Rule("FR127", "unknown-child-field", _E, "A template reads a field of an agent's or a parallel step's output "
             "that what it calls never gives (not in its terminals' output_schema).",
             "Read a field the called flow's terminal output_schema has, or add it there."),
        Rule("FR128", "agent-not-listed", _E, "A step calls a flow that the flow's `agents` does not list.",
             "Add it to `agents` (the access manager refuses calls of agents not listed)."),
        Rule("FR129", "invalid-child", _E, "A step calls a flow that has errors of its own.",
             "Run `flowrun validate` on the called flow and fix it."),
        Rule("FR130", "shadowed-step", _E, "A sub-flow's step has the id of a step around it; templates would see "
             "both as `steps.<id>`.",
             "Rename the sub-flow's step."),
        Rule("FR131", "remember-in-sub-flow", _E, "A step of a sub-flow has `remember`; sub-flows run at once, so "
             "what they keep would depend on which ends last.",
             "Remember from a step after the map or parallel step, from its output."),
        Rule("FR132", "unused-agent", _W, "The flow lists an agent in `agents` that no step calls.",
             "Call it from a step, or remove it from `agents`."),
        Rule("FR133", "unknown-error-kind", _E, "A `retry` rule's `on` or a `catch` key names no kind of error.",
             "Use a kind of the README's table of error kinds (`any` in `catch` for all the others)."),
        Rule("FR134", "retried-side-effect", _W, "A step with `retry` calls a tool that is not idempotent: a try "
             "that failed after the tool ran (it timed out, say) calls it again.",
             "Make the tool idempotent (its manifest's `idempotent: true`, with the call key), or retry only errors "
             "that come before the call (`on:`), or move the call to a step of its own without `retry`."),
        Rule("FR135", "over-budget", _E, "One run of the flow can make more model calls, or generate more tokens, "
             "than `flowrun validate --max-calls N --max-tokens T` allows, or how many cannot be bounded.",
             "Spend less in the costliest steps the message names (fewer tries, samples, visits or map items), or "
             "set `limits.max_model_calls` / `limits.max_tokens`, which bound every run."),
        Rule("FR201", "unknown-tool", _E, "No tool manifest defines this tool.",
             "Fix the name (see `flowrun tools list`) or add a `NAME.tool.yaml` manifest in the repository, or pass "
             "its directory with `--tools`."),
        Rule("FR202", "unused-tool", _W, "The flow declares a tool that no step can use.",
             "Name the tool in a step's `tool` or `tools`, or remove it from the flow's `tools`."),
        Rule("FR203", "undeclared-tool", _E, "A step uses a tool the flow does not list in `tools`.",
             "Add the tool to the flow's `tools` list."),
        Rule("FR204", "duplicate-tool", _E, "Two tool manifests define the same tool name.",
             "Rename one of the tools or remove one manifest."),
        Rule("FR205", "tool-code-missing", _E, "A manifest's entry names a .py file that is not beside it.",
             "Put the file beside the manifest or fix `entry` (`file.py:function` or `package.module:function`)."),
        Rule("FR206", "mcp-listing", _E, "An MCP server manifest has no listing of the server's tools beside it, "
             "one of another server, or names a tool the listing lacks or whose inputSchema cannot be used.",
             "Run `flowrun tools refresh MANIFEST` where the server can start and keep the listing with the manifest; "
             "or fix the tool's name in `tools`."),
        Rule("FR301", "template-syntax", _E, "A Jinja2 template does not parse.",
             "Fix the template at the reported field: close `{{ }}` and `{% %}`, use only known filters and tests."),
        Rule("FR302", "undefined-name", _E, "A template uses an input, step, field or name that does not exist.",
             "Use a declared input, an existing step id, or a field of that step's `output_schema`."),
        Rule("FR303", "decide-label", _E, "A `decide` template can render a value that is not a branch label.",
             "Make every value the template can render one of the decision's branch labels."),
        Rule("FR304", "template-limit", _E, "A template goes past a sandbox bound: a number, text or loop too large, "
             "or nesting too deep.",
             "Compute big values in a tool or give them as inputs; keep templates small and shallow (the bounds are "
             "in engine/flow/sandbox.py)."),
        Rule("FR305", "template-unsafe", _E, "A template reaches for what the sandbox refuses: Python internals, "
             "methods that change data.",
             "Read only inputs, step outputs and their fields; build new values with filters instead of changing "
             "data in place."),
        Rule("FR401", "unbounded-loop", _W, "The flow has a loop but no explicit `limits.max_steps`.",
             "Set `limits: {max_steps: N}` to the most steps a run should take."),
        Rule("FR501", "aios-format", _E, "A legacy AIOS agent config that `flowrun import-aios` cannot read.",
             "Fix the config as the message says, or write the flow in format 1 by hand."),
        Rule("FR502", "aios-unknown-tool", _W, "A legacy config names a tool with no manifest; the import drops it.",
             "Add a manifest for the tool and import again, or accept that the flow runs without it."),
        Rule("FR601", "test-unknown-step", _E, "A test case names a step or branch label its flow does not have.",
             "Name a step or branch label of the flow (the message suggests the closest one)."),
        Rule("FR602", "test-missing-file", _E,
             "A test file's flow, or a case's cassette, does not exist or is not one.",
             "Fix the path (relative to the test file) or add the missing file."),
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
