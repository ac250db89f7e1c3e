"""A `flowrun eval` data file: JSON Lines, one case a line (schemas/evalcase.schema.json), read and checked whole
before anything runs. Every problem of every line is reported at once, as FILE:LINE: what is wrong."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import FlowrunError
from engine.flow.kinds import chooses
from engine.flow.loader import Document
from engine.flow.schema import schema_diagnostics
from engine.flow.validate import CheckedFlow, load_flow
from engine.interpreter.inputs import InputError, read_input_lines, resolve_inputs
from engine.kernel.tool_code import load_entry
from engine.llm.scripted import CassetteError, ScriptedBackend
from engine.patterns import PatternError, compile_pattern

JUDGE_INPUTS = ("answer", "case")  # what a judge flow is given, both as text


class EvalError(FlowrunError):
    """Bad eval input: a data file, a scorer or judge it names, a --compare spec. The message says where and what
    to do."""


@dataclass
class EvalCase:
    """One line of a data file: `data` is the line's object as written (what scorers and judges are given)."""

    name: str
    line: int
    data: dict[str, Any]

    @property
    def inputs(self) -> dict[str, Any]:
        return self.data.get("inputs", {})

    @property
    def expect(self) -> dict[str, Any]:
        return self.data.get("expect", {})

    @property
    def routes(self) -> dict[str, str | list[str]]:
        return self.data.get("routes", {})

    @property
    def responses(self) -> list[Any] | None:
        return self.data.get("responses")

    @property
    def files(self) -> dict[str, str]:
        return self.data.get("files", {})

    @property
    def answers(self) -> dict[str, Any]:
        """What a person answers the run's input steps, by request key (a list: one a visit), as in flowrun test."""
        return self.data.get("answers", {})


@dataclass
class Dataset:
    """A data file's cases, with the judge flows they name (by path as written, relative to the file)."""

    path: Path
    cases: list[EvalCase]
    judges: dict[str, CheckedFlow] = field(default_factory=dict)

    def judge_path(self, case: EvalCase) -> Path:
        return self.path.parent / case.expect["judge"]


def read_dataset(path: Path, tool_paths: Iterable[Path] = ()) -> Dataset:
    """The cases of the data file at `path`; an EvalError listing each line's problems (an InputError when the
    file cannot be read or a line is not a JSON object)."""
    found = Dataset(path, [])
    problems: list[str] = []
    names: dict[str, int] = {}
    loaded: dict[str, str | None] = {}  # scorer entry -> why it cannot be loaded (None: it can)
    for n, data in read_input_lines(path, 'one case, {"name": ..., "inputs": {...}, "expect": {...}}'):
        said = [d.message for d in schema_diagnostics(Document(str(path), data), "evalcase")]
        if not said:
            case = EvalCase(data["name"], n, data)
            said = _case_problems(found, case, names, loaded, tool_paths)
            names.setdefault(case.name, n)
            found.cases.append(case)
        problems.extend(f"{path}:{n}: {message}" for message in said)
    if problems:
        raise EvalError("\n".join(problems))
    return found


def _case_problems(found: Dataset, case: EvalCase, names: dict[str, int], loaded: dict[str, str | None],
                   tool_paths: Iterable[Path]) -> list[str]:
    problems = []
    if case.name in names:
        problems.append(f"case {case.name!r}: the case on line {names[case.name]} has this name: give each its own")
    expect = case.expect
    if "matches" in expect:
        try:
            compile_pattern(expect["matches"])
        except PatternError as exc:
            problems.append(f"expect.matches is {exc}")
    if case.responses is not None:
        try:
            ScriptedBackend.from_responses(case.responses)
        except CassetteError as exc:
            problems.append(f"responses: {exc}")
    if "scorer" in expect:
        entry = expect["scorer"]
        if entry not in loaded:
            loaded[entry] = _unloadable(entry, found.path.parent)
        if loaded[entry]:
            problems.append(f"expect.scorer {entry!r} cannot be loaded: {loaded[entry]}")
    if "judge" in expect and expect["judge"] not in found.judges:
        problem = _judge_problem(found, case, tool_paths)
        if problem:
            problems.append(problem)
    return problems


def _unloadable(entry: str, base: Path) -> str | None:
    """Why the scorer `entry` cannot be loaded, or None. Loading it runs its module, like tool code."""
    try:
        load_entry(entry, base)
    except Exception as exc:  # an import error, a syntax error, anything a module may raise as it loads
        return str(exc) or type(exc).__name__
    return None


def _judge_problem(found: Dataset, case: EvalCase, tool_paths: Iterable[Path]) -> str | None:
    path = found.judge_path(case)
    if not path.is_file():
        return f"expect.judge: the flow {path} does not exist"
    checked = load_flow(path, tool_paths)
    if not checked.ok:
        return f"expect.judge: {path} is not a valid flow: fix it (`flowrun validate {path}`)"
    try:
        resolve_inputs(checked.flow, dict.fromkeys(JUDGE_INPUTS, ""), f"expect.judge: {path}")
    except InputError as exc:
        return f"{exc} (a judge is given the inputs answer and case, as text)"
    found.judges[case.expect["judge"]] = checked
    return None


def case_inputs(found: Dataset, checked: CheckedFlow) -> dict[str, dict[str, Any]]:
    """Each case's inputs for the flow `checked`, completed with its defaults (by case name); an EvalError where
    they do not fit it, or where a case's routes name a step that is not one of its decisions, or a label it lacks."""
    inputs, problems = {}, []
    flow = checked.flow
    for case in found.cases:
        try:
            inputs[case.name] = resolve_inputs(flow, case.inputs, f"{found.path}:{case.line}")
        except InputError as exc:
            problems.append(str(exc))
        for step, labels in case.routes.items():
            decision = flow.steps.get(step)
            if decision is None or not chooses(decision.kind):
                problems.append(f"{found.path}:{case.line}: routes: {flow.name} has no decision {step!r} (its "
                                f"decisions: {', '.join(s.id for s in flow.steps.values() if chooses(s.kind))})")
                continue
            for label in [labels] if isinstance(labels, str) else labels:
                if label not in decision.branches:
                    problems.append(f"{found.path}:{case.line}: routes: decision {step!r} has no label {label!r} "
                                    f"(its labels: {', '.join(decision.branches)})")
    if problems:
        raise EvalError("\n".join(problems))
    return inputs
