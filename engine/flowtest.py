"""Flow test cases (`flowrun test`): FLOW.test.yaml beside FLOW.yaml holds cases, each inputs, the model's answers
(a cassette file, or `responses` written in the case; a real backend needs neither) and what to expect: the path,
a decision's labels, visits, how the run ends and checks on its answer. Each case runs in scratch storage; what
no case covered is reported.

The format is published as schemas/flowtest.schema.json.
"""

from __future__ import annotations

import asyncio
import difflib
import re
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import answers
from engine.errors import ErrorKind, FlowrunError, RunStatus
from engine.flow.compiler import CompiledFlow
from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.kinds import ends_run
from engine.flow.loader import Document, load_file
from engine.flow.model import all_steps
from engine.flow.schema import schema_diagnostics
from engine.flow.validate import NOT_FLOWS, CheckedFlow, load_flow, yaml_below
from engine.interpreter.inputs import InputError, resolve_inputs
from engine.interpreter.runs import RunRecord, record, steps_of
from engine.interpreter.setup import kernel_for, open_backend_for, read_cassette
from engine.interpreter.walk import RunOutcome, new_run_id, run_flow
from engine.kernel.asking import Answer, Given, Question
from engine.kernel.confine import write_files
from engine.kernel.journal import Journal, RecordedTool
from engine.kernel.kernel import at_once
from engine.kernel.storage import Storage
from engine.kernel.tables import StepRow
from engine.llm.base import Backend
from engine.llm.models import DEFAULT_MODEL
from engine.llm.scripted import CassetteError, ScriptedBackend
from engine.patterns import PatternError, compile_pattern

SUFFIX = ".test.yaml"


@dataclass
class Case:
    """One test case, as its test file gives it."""

    name: str
    inputs: dict[str, Any] = field(default_factory=dict)
    cassette: Path | None = None
    responses: list[Any] | None = None  # a cassette's responses, written in the case
    files: dict[str, str] = field(default_factory=dict)
    expect: dict[str, Any] = field(default_factory=dict)
    tools: list[RecordedTool] = field(default_factory=list)  # tool calls answered instead of made, in order
    child_tools: dict[str, list[RecordedTool]] = field(default_factory=dict)  # the same for child runs, by scope
    answers: dict[str, Any] = field(default_factory=dict)  # input steps' answers, by request key
    timeouts: list[str] = field(default_factory=list)  # input steps nobody answers in time, by request key


@dataclass
class TestFile:
    """A test file: its flow (checked) and its cases, or what is wrong with it."""

    path: Path
    flow_path: Path
    flow: CheckedFlow | None = None
    cases: list[Case] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


@dataclass
class CaseResult:
    """How a case went: `problems` is empty when it passed."""

    case: Case
    outcome: RunOutcome | None
    steps: list[StepRow]
    problems: list[str]
    seconds: float
    inner: list[tuple[str, StepRow]] = field(default_factory=list)  # the steps of its sub-flows' runs, by prefix

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class Coverage:
    """What no case of a flow took: steps, and ways out (step, label, target)."""

    flow: str
    steps: list[str]
    edges: list[tuple[str, str, str]]


def discover(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """The test files at `paths` (test files; flows, for the test file beside each; directories, searched), and
    the flows found in directories that have none."""
    tests: list[Path] = []
    untested: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = yaml_below(path)
            tests.extend(p for p in found if p.name.endswith(SUFFIX))
            untested.extend(p for p in found if not p.name.endswith(NOT_FLOWS) and not _beside(p).is_file()
                            and _is_flow(p))
        elif path.name.endswith(SUFFIX):
            tests.append(path)
        else:
            tests.append(_beside(path))
    return list(dict.fromkeys(tests)), untested


def _beside(flow: Path) -> Path:
    return flow.with_name(flow.name.removesuffix(flow.suffix) + SUFFIX)


def _is_flow(path: Path) -> bool:
    doc = load_file(path)
    return isinstance(doc.data, dict) and "flowrun" in doc.data


def load_tests(path: Path, tool_paths: Iterable[Path] = ()) -> TestFile:
    """The test file at `path` with its flow, checked against the schema and against the flow's steps."""
    found = TestFile(path, path.with_name(path.name.removesuffix(SUFFIX) + ".yaml"))
    if not path.is_file():
        found.diagnostics.append(diagnostic("FR602", f"no test cases: write them in {path.name} beside the flow",
                                            str(path), (1, 1)))
        return found
    doc = load_file(path)
    found.diagnostics = doc.diagnostics
    if doc.data is None and not found.diagnostics:
        found.diagnostics.append(diagnostic("FR003", "the file is empty: it needs `cases`", str(path), (1, 1)))
    if not found.diagnostics:
        found.diagnostics = schema_diagnostics(doc, "flowtest")
    if found.diagnostics:
        return found
    if "flow" in doc.data:
        found.flow_path = path.parent / doc.data["flow"]
    if not found.flow_path.is_file():
        where = doc.position(("flow",)) if "flow" in doc.data else (1, 1)
        found.diagnostics.append(diagnostic("FR602", f"the flow {found.flow_path} does not exist", str(path), where))
        return found
    found.flow = load_flow(found.flow_path, tool_paths)
    if not found.flow.ok:
        if _is_flow(found.flow_path):
            found.diagnostics.extend(found.flow.diagnostics)
        else:  # its problems would quote what it holds (schema errors show values): of a `flow: ../.env`, secrets
            where = doc.position(("flow",)) if "flow" in doc.data else (1, 1)
            found.diagnostics.append(diagnostic("FR602", f"{found.flow_path} is not a flow (a YAML mapping with "
                                                "`flowrun: 1`): `flowrun validate` it if it should be one",
                                                str(path), where))
        return found
    for n, item in enumerate(doc.data["cases"]):
        found.cases.append(_case(doc, n, item, found.flow, found.diagnostics))
    return found


def _case(doc: Document, n: int, item: dict[str, Any], checked: CheckedFlow, problems: list[Diagnostic]) -> Case:
    at = ("cases", n)
    path = Path(doc.file)
    case = Case(item["name"], item.get("inputs", {}), responses=item.get("responses"),
                files=item.get("files", {}), expect=item.get("expect", {}),
                answers=item.get("answers", {}), timeouts=item.get("timeouts", []))
    for call in item.get("tools", []):
        recorded = RecordedTool(call["tool"], call["arguments"], call.get("result"), call.get("error"),
                                kind=call.get("kind", ErrorKind.TOOL_ERROR) if "error" in call else None)
        if "run" in call:
            case.child_tools.setdefault(call["run"] + ".", []).append(recorded)
        else:
            case.tools.append(recorded)
    if "cassette" in item:
        case.cassette = path.parent / item["cassette"]
        if not case.cassette.is_file():
            problems.append(diagnostic("FR602", f"case {case.name!r}: the cassette {case.cassette} does not exist",
                                       doc.file, doc.position((*at, "cassette"))))
    answer = case.expect.get("answer", {})
    if "matches" in answer:
        try:
            compile_pattern(answer["matches"])
        except PatternError as exc:
            problems.append(diagnostic("FR003", f"case {case.name!r}: `matches` is {exc}", doc.file,
                                       doc.position((*at, "expect", "answer", "matches"))))
    if case.responses is not None:
        try:
            ScriptedBackend.from_responses(case.responses)
        except CassetteError as exc:
            problems.append(diagnostic("FR003", f"case {case.name!r}: {exc}", doc.file,
                                       doc.position((*at, "responses", *exc.at))))
    flow = checked.flow
    asking = _input_keys(checked.compiled)
    for key, where in [*((k, ("answers", k)) for k in case.answers), *((k, ("timeouts", i))
                                                                      for i, k in enumerate(case.timeouts))]:
        if _unkeyed(key) not in asking:  # a typo would leave the run waiting, or the step answered by nobody
            problems.append(diagnostic("FR601", f"case {case.name!r}: no input step is asked as {key!r} (input "
                                                f"steps: {', '.join(sorted(asking)) or 'none'})", doc.file,
                                       doc.position((*at, *where), key=where[0] == "answers")))
    starting, branches, tools = _children(checked.compiled)
    for i, call in enumerate(item.get("tools", [])):
        names = re.findall(r"[A-Za-z_]\w*", call.get("run", ""))
        if any(name not in starting and name not in branches for name in names):
            problems.append(diagnostic("FR601", f"case {case.name!r}: no child run stands at {call['run']!r} (steps "
                                                f"that start child runs: {', '.join(sorted(starting)) or 'none'})",
                                       doc.file, doc.position((*at, "tools", i, "run"))))
        elif call["tool"] not in tools:  # a typo would make the call for real
            problems.append(diagnostic("FR601", f"case {case.name!r}: the flow and the flows it calls have no tool "
                                                f"{call['tool']!r}", doc.file, doc.position((*at, "tools", i, "tool"))))
    named = [(("expect", "path", i), s) for i, s in enumerate(case.expect.get("path", []))]
    named += [(("expect", key, s), s) for key in ("visits", "branches") for s in case.expect.get(key, {})]
    for where, step in named:
        if step not in flow.steps:
            problems.append(diagnostic("FR601", f"case {case.name!r}: the flow has no step {step!r}", doc.file,
                                       doc.position((*at, *where), key=where[1] == step)))
    for step, labels in case.expect.get("branches", {}).items():
        known = [label for label, _ in flow.steps[step].edges() if label != "next"] if step in flow.steps else []
        for label in [labels] if isinstance(labels, str) else labels:
            if step in flow.steps and label not in known:
                problems.append(diagnostic(
                    "FR601", f"case {case.name!r}: step {step!r} has no branch {label!r} (its labels: "
                             f"{', '.join(known) or 'none, it is not a decision'})", doc.file,
                    doc.position((*at, "expect", "branches", step))))
    return case


BackendFor = Callable[[CheckedFlow, Case], Backend]


def backends(kind: str, model: str | None, say: Callable[[str], None] = lambda _: None) -> BackendFor:
    """What each case runs on: with kind "cassette" its own cassette; else a model backend (auto, ollama,
    embedded) for `model` or the flow's model, opened once and shared by every case that uses that model."""
    opened: dict[str, Backend] = {}

    def backend_for(checked: CheckedFlow, case: Case) -> Backend:
        if kind == "cassette":
            if case.responses is not None:
                return ScriptedBackend.from_responses(case.responses)
            if case.cassette is None:
                raise CassetteError(f"case {case.name!r} has no cassette: run it on a model with --backend")
            return read_cassette(case.cassette)
        name = model or checked.flow.model.get("name") or DEFAULT_MODEL
        if name not in opened:
            opened[name] = open_backend_for(kind, name, None, say=say)
        return opened[name]

    return backend_for


async def run_case(checked: CheckedFlow, case: Case, backend: Backend, scratch: Path, *, file: str) -> CaseResult:
    """Run `case` of the flow `checked` (from `file`) on `backend`, in scratch storage and a workspace under
    `scratch`, and check what it expects."""
    started = time.monotonic()
    try:
        inputs = resolve_inputs(checked.flow, case.inputs, f"case {case.name!r}")
    except InputError as exc:
        return CaseResult(case, None, [], [str(exc)], time.monotonic() - started)
    run_id = new_run_id()
    try:  # the case's files go where its run's write_file would put them, and nowhere else
        write_files(scratch / "workspaces" / run_id, case.files)
    except (ValueError, OSError) as exc:
        return CaseResult(case, None, [], [f"files: {exc}"], time.monotonic() - started)
    storage = Storage(f"sqlite:///{scratch / 'runs.db'}")
    try:
        kernel = kernel_for([checked], backend, storage, workspaces=scratch / "workspaces")
        kernel.sleep = at_once  # a retry's backoff would only slow the tests down
        given = Given.of(case.answers, case.timeouts)

        async def answer(run: str, question: Question) -> Answer | None:
            return given.next(question)

        kernel.answerer = answer
        # the case's tool calls are given back as a resumed run's journal gives them (its child runs', to each)
        children = {scope: deque(calls) for scope, calls in case.child_tools.items()}  # each answer used once
        journal = Journal(tools=deque(case.tools), given=children) if case.tools or children else None
        outcome = await run_flow(kernel, checked.compiled, inputs, file=file, run_id=run_id, journal=journal)
        steps = steps_of(storage, outcome.run_id)
        inner = list(_inner_steps(checked.compiled, record(storage, outcome.run_id)))
    finally:
        storage.close()
    return CaseResult(case, outcome, steps, check(case.expect, outcome, steps), time.monotonic() - started, inner)


def _input_keys(compiled: CompiledFlow) -> set[str]:
    """The ids of the input steps of the flow `compiled`, its sub-flows and the flows it calls."""
    return {step.id for flow in compiled.flows() for _, step in all_steps(flow) if step.kind == "input"}


def _children(compiled: CompiledFlow) -> tuple[set[str], set[str], set[str]]:
    """Of the flow `compiled`, its sub-flows and the flows it calls: the ids of the steps that start child runs, the
    names of parallel branches, and the tools."""
    flows = compiled.flows()
    steps = [step for flow in flows for _, step in all_steps(flow)]
    return ({s.id for s in steps if s.kind in ("agent", "map", "parallel")},
            {name for s in steps for name in s.parallel}, {tool for flow in flows for tool in flow.tools})


def _unkeyed(key: str) -> str:
    """The step id a request key ends with (`each[2].ask`: ask)."""
    return re.split(r"[.\]]", key)[-1]


def _inner_steps(compiled: CompiledFlow, found: RunRecord, prefix: str = "") -> Iterator[tuple[str, StepRow]]:
    """(prefix, step) for each step of the runs of the sub-flows in the run `found` of `compiled`, nested ones
    too: the prefix names the sub-flow as _nodes does."""
    for child in found.children:
        run = child.run
        kind = compiled.step(run.parent_step).kind if run.parent_step in compiled.flow.steps else ""
        part = compiled.parts.get((run.parent_step or "", (run.branch or "") if kind == "parallel" else ""))
        if part is None:  # another flow's run: its own tests cover it
            continue
        inner = _part_prefix(prefix, run.parent_step or "", run.branch if kind == "parallel" else "")
        yield from ((inner, step) for step in child.steps)
        yield from _inner_steps(part, child, inner)


def _part_prefix(prefix: str, step: str, branch: str | None) -> str:
    return f"{prefix}{step}.{branch}." if branch else f"{prefix}{step}."


def _nodes(compiled: CompiledFlow, prefix: str = "") -> Iterator[tuple[str, CompiledFlow]]:
    """(prefix, flow) for the flow and each of its sub-flows, nested ones too: a sub-flow's steps are named
    `step.branch.id` (a map's: `step.id`) in coverage."""
    yield prefix, compiled
    for (step, branch), part in compiled.parts.items():
        yield from _nodes(part, _part_prefix(prefix, step, branch))


def check(expect: dict[str, Any], outcome: RunOutcome, steps: list[StepRow]) -> list[str]:
    """What about the run breaks `expect`, each as a readable difference (empty: nothing)."""
    problems = []
    status = expect.get("status", RunStatus.FINISHED)
    if outcome.status != status:
        problems.append(f"the run should have {status}, but it {outcome.status}"
                        + (f": {outcome.error}" if outcome.error else ""))
    if "error" in expect and expect["error"] not in (outcome.error or ""):
        problems.append(f"the run's error should contain {expect['error']!r}, but it is: {outcome.error}")
    path = [s.step for s in steps]
    if "path" in expect and path != expect["path"]:
        diff = difflib.unified_diff(expect["path"], path, "expected path", "path taken", lineterm="", n=1)
        problems.append("the path differs:\n" + "\n".join(f"  {line}" for line in diff))
    for step, count in expect.get("visits", {}).items():
        if path.count(step) != count:
            problems.append(f"step {step} should run {count} times, but ran {path.count(step)}")
    for step, labels in expect.get("branches", {}).items():
        taken = [s.branch for s in steps if s.step == step]
        wanted = [labels] * max(1, len(taken)) if isinstance(labels, str) else labels
        if taken != wanted:
            problems.append(f"decision {step} should take {_labels(wanted)}, but took {_labels(taken)}")
    if "answer" in expect and outcome.status == RunStatus.FINISHED:
        problems.extend(answers.problems(expect["answer"], outcome.answer))
    return problems


def _labels(labels: list[Any]) -> str:
    return "nothing (it did not run)" if not labels else ", then ".join(repr(label) for label in labels)


def run_tests(found: TestFile, backend_for: BackendFor) -> list[CaseResult]:
    """Run every case of `found` (a test file without diagnostics), each on the backend `backend_for` gives."""
    assert found.flow is not None
    results = []
    for case in found.cases:
        try:
            backend = backend_for(found.flow, case)
        except FlowrunError as exc:  # no backend for the case (a bad cassette, a model not there): it fails
            results.append(CaseResult(case, None, [], [str(exc)], 0.0))
            continue
        with tempfile.TemporaryDirectory(prefix="flowrun-test-") as scratch:
            results.append(asyncio.run(run_case(found.flow, case, backend, Path(scratch),
                                                file=str(found.flow_path))))
    return results


def coverage(compiled: CompiledFlow, name: str, results: Iterable[CaseResult]) -> Coverage:
    """The steps and ways out of the flow `compiled` and its sub-flows that none of `results` took."""
    seen: set[str] = set()
    taken: set[tuple[str, str]] = set()
    for result in results:
        for prefix, step in [("", s) for s in result.steps] + result.inner:
            seen.add(prefix + step.step)
            if not ends_run(step.kind) or step.error is not None:  # a terminal's caught error takes a way out
                taken.add((prefix + step.step, step.branch or "next"))
    nodes = [(prefix, flow.graph) for prefix, flow in _nodes(compiled)]
    return Coverage(name, [prefix + s for prefix, graph in nodes for s in graph.nodes if prefix + s not in seen],
                    [(prefix + u, label, prefix + v) for prefix, graph in nodes
                     for u, v, label in graph.edges(keys=True) if (prefix + u, label) not in taken])
