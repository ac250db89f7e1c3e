"""Validating flow files and tool manifests: the library behind `flowrun validate`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from engine.flow import calls, checks
from engine.flow.compiler import Callee, CompiledFlow, compile_flow
from engine.flow.diagnostics import Diagnostic, Severity, diagnostic, has_errors
from engine.flow.loader import Document, gc_paused, load_file, load_yaml
from engine.flow.manifest import SUFFIXES as MANIFEST_SUFFIXES
from engine.flow.manifest import ToolManifest, is_manifest, load_tools
from engine.flow.model import Body, Flow, Step, body_keys, flow_from_data
from engine.flow.schema import schema_diagnostics
from engine.flow.templates import Scope

YAML_SUFFIXES = (".yaml", ".yml")
# Files beside flows that are not flows: test cases (`flowrun test`) and cassettes of model answers.
NOT_FLOWS = tuple(f"{kind}{suffix}" for kind in (".test", ".cassette") for suffix in YAML_SUFFIXES)


@dataclass
class CheckedFlow:
    """A flow file after every check: its model, its graph and its diagnostics (usable when `ok`)."""

    compiled: CompiledFlow
    diagnostics: list[Diagnostic]
    tools: Mapping[str, ToolManifest]  # the tools it was checked against, by name

    @property
    def flow(self) -> Flow:
        return self.compiled.flow

    @property
    def graph(self) -> nx.MultiDiGraph:
        return self.compiled.graph

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)


def check_flow(doc: Document, tools: Mapping[str, ToolManifest], *, calling: tuple[Path, ...] = (),
               known: dict[Path, CheckedFlow] | None = None, follow: bool = True) -> CheckedFlow:
    """Every check of a loaded flow document, given the tools that exist (`calling`: the files of the flows that
    call it, to find recursion), with those of the flows it calls (`known`: flows checked already, by file, each
    checked once however many paths lead to it). Without `follow`, the flows it calls are not read (a text sent
    to a server names files of the server's): what needs them is not checked."""
    found = list(doc.diagnostics)
    if doc.data is not None:
        found.extend(schema_diagnostics(doc, "flow"))
    elif not found:
        message = "the file is empty: a flow needs at least `flowrun: 1`, `name` and `steps`"
        found.append(diagnostic("FR003", message, doc.file, (1, 1)))
    flow = flow_from_data(doc.data)
    agents, refused = _callees(flow, doc, tools, calling, {} if known is None else known) if follow else ({}, {})
    compiled = compile_flow(flow, doc.sha256, doc.position, agents)
    found.extend(checks.check_tools(flow, tools, doc))
    found.extend(_checks(compiled, doc, tools, Scope.of(flow), flow.agents, refused))
    for i, reference in enumerate(flow.agents):
        if reference not in calls.references(dataclasses.replace(flow, agents=())):
            message = f"agent {reference!r} is listed but no step calls it: call it with `kind: agent`, or remove it"
            found.append(diagnostic("FR132", message, doc.file, doc.position(("agents", i))))
    return CheckedFlow(compiled, sorted(found, key=lambda d: (d.line, d.column, d.code)), tools)


def _checks(compiled: CompiledFlow, doc: Document, tools: Mapping[str, ToolManifest], scope: Scope,
            listed: tuple[str, ...], refused: Mapping[str, tuple[str, str]], *, part: bool = False
            ) -> Iterator[Diagnostic]:
    """The checks of a flow, or of a sub-flow (`part`: `doc` is then its part of the file), and of its sub-flows;
    `scope`: what its templates see of the flows around it, `listed`: the agents its flow may call."""
    flow, graph = compiled.flow, compiled.graph
    outputs = dict(scope.outputs) | {step.id: _output_schema(step, compiled) for step in flow.steps.values()
                                     if step.bodies()}
    scope = dataclasses.replace(scope, outputs=outputs)
    yield from checks.check_targets(flow, doc)
    yield from checks.check_reachability(flow, graph, doc)
    yield from checks.check_termination(flow, graph, doc, part=part)
    yield from checks.check_kinds(flow, doc)
    yield from checks.check_loops(flow, graph, doc)
    yield from checks.check_step_data(flow, tools, doc)
    yield from checks.check_retries(compiled, tools, doc)
    yield from checks.check_templates(flow, doc, scope)
    yield from calls.check_calls(flow, listed, compiled.agents, refused, doc)
    for (step_id, branch), sub in compiled.parts.items():
        where = ("steps", step_id, *body_keys(branch))
        yield from checks.check_sub_steps(sub.flow, scope.steps, doc.part(where))
        names = ("item", "index") if compiled.step(step_id).kind == "map" else ()
        inner = Scope({**scope.steps, **sub.flow.steps}, scope.remembered, (*scope.names, *names), outputs)
        yield from _checks(sub, doc.part(where), tools, inner, listed, refused, part=True)


def _output_schema(step: Step, compiled: CompiledFlow) -> dict[str, Any] | None:
    """What the output of a step that runs child runs is, as a JSON Schema (None where not known)."""
    if step.kind == "map":
        return {"type": "array"}

    def answer(branch: str, body: Body) -> dict[str, Any] | None:
        if body.steps:
            return calls.answer_schema(compiled.parts[(step.id, branch)].flow)
        callee = compiled.agents.get(body.flow or "")
        return calls.answer_schema(callee.compiled.flow) if callee else None

    if step.kind == "parallel":
        return {"type": "object", "properties": {name: answer(name, body) or {}
                                                 for name, body in step.parallel.items()}}
    return answer("", step.body) if step.body else None


def _callees(flow: Flow, doc: Document, tools: Mapping[str, ToolManifest], calling: tuple[Path, ...],
             known: dict[Path, CheckedFlow]) -> tuple[dict[str, Callee], dict[str, tuple[str, str]]]:
    """The flows `flow` calls, checked, by reference; and those that cannot be called, with a code and why."""
    here = Path(doc.file).resolve()
    agents: dict[str, Callee] = {}
    refused: dict[str, tuple[str, str]] = {}
    for reference in calls.references(flow):
        path = calls.flow_path(reference, doc.file)
        if path is None:
            refused[reference] = ("FR120", f"no flow file {reference!r} is found beside {Path(doc.file).name} "
                                           f"or in {calls.FLOWS_VARIABLE}: give its path relative to this file")
            continue
        if path == here or path in calling:
            chain = " -> ".join(p.name for p in (*calling, here, path))
            refused[reference] = ("FR124", f"flows call each other in a loop ({chain}): a flow cannot call itself")
            continue
        if path not in known:  # a flow in a loop is found in it whichever way it is reached
            with gc_paused():
                known[path] = check_flow(load_file(path), tools, calling=(*calling, here), known=known)
        checked = known[path]
        if any(d.code == "FR124" for d in checked.diagnostics):
            refused[reference] = ("FR124", f"{reference!r} calls back into the flows that call it")
        elif not checked.ok:
            refused[reference] = ("FR129", f"{reference!r} has errors: see `flowrun validate {path}`")
        else:
            agents[reference] = Callee(str(path), checked.compiled)
    return agents, refused


def check_flow_text(text: str, file: str, tools: Mapping[str, ToolManifest], *, follow: bool = True
                    ) -> CheckedFlow:
    """`check_flow` of YAML text (for editors, tests and other tools that hold the text)."""
    return check_flow(load_yaml(text, file), tools, follow=follow)


def load_flow(path: Path, tool_paths: Iterable[Path] = ()) -> CheckedFlow:
    """Read and check the flow at `path` against the bundled tools and those at `tool_paths`."""
    tools = load_tools(tool_paths)
    checked = check_flow(load_file(path), tools.tools)
    checked.diagnostics[:0] = tools.diagnostics
    return checked


@dataclass
class Report:
    """What `validate_paths` found: the files it read and every diagnostic, in file order."""

    files: list[str] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def count(self, severity: Severity) -> int:
        return sum(1 for d in self.diagnostics if d.severity is severity)


def discover(paths: Iterable[Path]) -> list[Path]:
    """The files to validate: files as given, and the YAML files below directories (hidden ones, test cases and
    cassettes skipped)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in yaml_below(path) if not p.name.endswith(NOT_FLOWS))
        else:
            found.append(path)
    return found


def yaml_below(directory: Path) -> list[Path]:
    """The YAML files below `directory`, sorted, those in hidden folders (or hidden themselves) left out."""
    return sorted(p for p in directory.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def repository_root(path: Path) -> Path | None:
    """The top of the git working tree holding `path` (a folder with `.git`, a folder or a worktree's file), if any."""
    absolute = Path(os.path.abspath(path))
    for folder in [absolute, *absolute.parents]:
        if (folder / ".git").exists():
            return folder
    return None


def repository_manifests(paths: Iterable[Path]) -> list[Path]:
    """The tool manifests of the git repositories holding `paths`: tracked, or untracked and not ignored.

    A pre-commit hook passes only the files a commit changes; with these, a flow's tools defined in its repository
    are still known. Outside a repository, or without git, there are none.
    """
    found: list[Path] = []
    for root in sorted({root for path in paths if (root := repository_root(path))}):
        patterns = [f"*{suffix}" for suffix in MANIFEST_SUFFIXES]
        command = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                   *patterns]
        try:
            listed = subprocess.run(command, capture_output=True, check=True).stdout.decode()
        except (OSError, subprocess.CalledProcessError):
            continue
        found.extend(p for name in listed.split("\0") if name and (p := root / name).is_file())
    return found


def validate_paths(paths: Iterable[Path], tool_paths: Iterable[Path] = (), *, strict: bool = False,
                   also: Callable[[CheckedFlow, Document], Iterable[Diagnostic]] | None = None) -> Report:
    """Validate every flow and tool manifest at `paths` (files or directories) in one pass.

    Manifests among `paths` and at `tool_paths` are known tools for the flows, besides the bundled ones and those
    of the repositories holding `paths` (`repository_manifests`). `also` adds the diagnostics of a check of its
    own to each flow without errors (a model-call budget, say).
    With `strict`, warnings are reported as errors.
    """
    files = discover(paths)
    tools = load_tools([*tool_paths, *(f for f in files if is_manifest(f))], known=repository_manifests(files))
    report = Report(files=[str(f) for f in files], diagnostics=list(tools.diagnostics))
    known: dict[Path, CheckedFlow] = {}  # the flows others call, checked once for all the files
    for path in files:
        if not is_manifest(path):
            with gc_paused():  # resumed only once the file's objects are dropped, so it has little to scan
                doc = load_file(path)
                checked = check_flow(doc, tools.tools, known=known)
                report.diagnostics.extend(checked.diagnostics)
                if also is not None and checked.ok:
                    report.diagnostics.extend(also(checked, doc))
    if strict:
        report.diagnostics = [dataclasses.replace(d, severity=Severity.ERROR) for d in report.diagnostics]
    return report
