"""Checks on a flow beyond its schema: the graph, the tools, the templates. Each yields located diagnostics."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema_rs
import networkx as nx

from engine.errors import ErrorKind
from engine.flow.compiler import CompiledFlow
from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.kinds import KINDS, chooses, ends_run
from engine.flow.loader import Document
from engine.flow.manifest import ToolManifest
from engine.flow.model import CATCH, Flow, Step, all_steps
from engine.flow.schema import suggest
from engine.flow.templates import Scope, template_problems
from engine.json_schema import schema_problems


def check_targets(flow: Flow, doc: Document) -> Iterator[Diagnostic]:
    """FR101: `start`, `next`, branches and `catch` must name existing steps."""
    if "start" in _data(doc) and flow.start is not None and flow.start not in flow.steps:
        yield _unknown_step(doc, ("start",), flow.start, flow, "start")
    for step in flow.steps.values():
        if step.next is not None and step.next not in flow.steps:
            yield _unknown_step(doc, ("steps", step.id, "next"), step.next, flow, "next")
        for label, target in step.branches.items():
            if target not in flow.steps:
                yield _unknown_step(doc, ("steps", step.id, "branches", label), target, flow, f"branch {label!r}")
        for kind, target in step.catch.items():
            if target not in flow.steps:
                yield _unknown_step(doc, ("steps", step.id, "catch", kind), target, flow, f"catch of {kind}")


def _unknown_step(doc: Document, path: tuple[str, ...], target: str, flow: Flow, what: str) -> Diagnostic:
    message = f"{what} leads to {target!r}, which is not a step of this flow{suggest(target, flow.steps)}"
    return diagnostic("FR101", message, doc.file, doc.position(path))


def check_reachability(flow: Flow, graph: nx.MultiDiGraph, doc: Document) -> Iterator[Diagnostic]:
    """FR102: every step can be reached from the start step."""
    if flow.start not in flow.steps:
        return
    reached = nx.descendants(graph, flow.start) | {flow.start}
    for step_id in flow.steps:
        if step_id not in reached:
            message = f"step {step_id!r} is never reached from the start step {flow.start!r}: link to it or remove it"
            yield diagnostic("FR102", message, doc.file, doc.position(("steps", step_id), key=True))


def check_termination(flow: Flow, graph: nx.MultiDiGraph, doc: Document, *, part: bool = False
                      ) -> Iterator[Diagnostic]:
    """FR103: from every step some terminal can be reached. Reports where each problem starts, not its upstream.
    FR125: a sub-flow (`part`) with no terminal at all, which would never give its step an answer."""
    terminals = [s.id for s in flow.steps.values() if ends_run(s.kind)]
    if not terminals:
        if flow.steps and part:
            message = ("this sub-flow has no terminal step, so it never gives an answer: end it with a step of "
                       "`kind: terminal` (its output is the sub-flow's answer)")
            yield diagnostic("FR125", message, doc.file, doc.position(("steps",), key=True))
        elif flow.steps:
            message = "the flow has no terminal step, so no run can finish: add a step with `kind: terminal`"
            yield diagnostic("FR103", message, doc.file, doc.position(("steps",), key=True))
        return
    can_finish = set(terminals)
    frontier = list(terminals)
    while frontier:
        for before in graph.predecessors(frontier.pop()):
            if before not in can_finish:
                can_finish.add(before)
                frontier.append(before)
    if len(can_finish) == len(graph):
        return
    stuck = graph.subgraph(n for n in graph if n not in can_finish)
    # Steps that cannot finish form a region closed under "next"; its sink components are the causes.
    condensed = nx.condensation(stuck)
    order = {step_id: i for i, step_id in enumerate(flow.steps)}
    for component in condensed:
        if condensed.out_degree(component):
            continue
        members = sorted(condensed.nodes[component]["members"], key=order.__getitem__)
        first = flow.steps[members[0]]
        if len(members) == 1 and not graph.has_edge(first.id, first.id):
            message = _dead_end(first, flow)
            if message is None:
                continue
        else:
            loop = " -> ".join([*members, members[0]]) if len(members) <= 6 else f"{len(members)} steps"
            message = f"the loop {loop} has no way out to a terminal step: give one of its steps a way out"
        yield diagnostic("FR103", message, doc.file, doc.position(("steps", first.id), key=True))


def _dead_end(step: Step, flow: Flow) -> str | None:
    """Why `step` stops the run, or None when its unknown kind (FR003) or target (FR101) already explains it."""
    if not step.kind or any(target not in flow.steps for _, target in step.edges()):
        return None
    return KINDS[step.kind].no_way_on.format(id=step.id)


def check_kinds(flow: Flow, doc: Document) -> Iterator[Diagnostic]:
    """The checks of each step's kind (engine.flow.kinds): FR105 and FR110 of decisions, FR107 of processes."""
    for step in flow.steps.values():
        if step.kind:
            for check in KINDS[step.kind].checks:
                yield from check(step, doc)


def check_loops(flow: Flow, graph: nx.MultiDiGraph, doc: Document) -> Iterator[Diagnostic]:
    """FR401: a flow with a loop states its own step bound."""
    if flow.limits.explicit_max_steps:
        return
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    source, target, label = cycle[-1]
    field = ("next",) if label == "next" else ("catch", label.removeprefix(CATCH)) if label.startswith(CATCH) \
        else ("branches", label)
    message = (f"the flow loops ({source} -> {target}) but sets no `limits.max_steps`: runs stop after the default "
               f"{flow.limits.max_steps} steps; set `limits: {{max_steps: N}}` to the most a run should take")
    yield diagnostic("FR401", message, doc.file, doc.position(("steps", source, *field)))


def check_tools(flow: Flow, tools: Mapping[str, ToolManifest], doc: Document) -> Iterator[Diagnostic]:
    """FR201 unknown tool, FR203 a step's tool not declared by the flow, FR202 a declared tool no step uses."""
    for i, name in enumerate(flow.tools):
        if name not in tools:
            yield _unknown_tool(doc, ("tools", i), name, tools)
    used: set[str] = set()
    for within, step in all_steps(flow):
        for i, name in enumerate(step.used_tools()):
            used.add(name)
            path = (*within, "tool") if step.tool else (*within, "tools", i)
            if name not in tools:
                yield _unknown_tool(doc, path, name, tools)
            elif name not in flow.tools:
                message = f"step {step.id!r} uses tool {name!r}, which the flow does not list: add it to `tools`"
                yield diagnostic("FR203", message, doc.file, doc.position(path))
    for i, name in enumerate(flow.tools):
        if name in tools and name not in used:
            message = f"tool {name!r} is declared but no step can use it: name it in a step's `tool` or `tools`"
            yield diagnostic("FR202", message, doc.file, doc.position(("tools", i)))


def check_retries(compiled: CompiledFlow, tools: Mapping[str, ToolManifest], doc: Document) -> Iterator[Diagnostic]:
    """FR134: a step retries errors that can end a call of a tool that is not idempotent part-way: one of its own
    tools (a result that came stands, one that did not is called again), or one that its sub-flows or the flows it
    calls use (a retry runs the child runs that did not finish again, from their start)."""
    for step in compiled.flow.steps.values():
        retried = {kind for rule in step.retry for kind in rule.on}
        own = [k for k in (ErrorKind.TOOL_ERROR, ErrorKind.TOOL_TIMEOUT, ErrorKind.STEP_TIMEOUT) if k in retried]
        inner = [k for k in (ErrorKind.CHILD_FAILED, ErrorKind.STEP_TIMEOUT) if k in retried]
        used = [(name, own) for name in step.used_tools()]
        used += [(name, inner) for name in _child_tools(compiled, step)] if inner else []
        for name, kinds in used:
            if kinds and name in tools and not tools[name].idempotent:
                message = (f"step {step.id!r} retries {' and '.join(kinds)} around {name!r}, which is not "
                           "idempotent: a call that failed or was stopped part-way is made again; make the tool "
                           "idempotent, or retry only other kinds of error")
                yield diagnostic("FR134", message, doc.file, doc.position(("steps", step.id, "retry"), key=True))
                break


def _child_tools(compiled: CompiledFlow, step: Step) -> list[str]:
    """The tools the child runs of `step` may call: its sub-flows', the flows it calls', and theirs."""
    flows: list[CompiledFlow] = []
    for branch, body in step.bodies().items():
        found = compiled.parts.get((step.id, branch)) if body.steps else \
            (callee.compiled if (callee := compiled.agents.get(body.flow or "")) else None)
        if found is not None:
            flows.append(found)
    names: dict[str, None] = {}
    seen: set[int] = set()  # flows that call each other (FR124) are each read once
    while flows:
        inner = flows.pop()
        if id(inner) in seen:
            continue
        seen.add(id(inner))
        for _, each in all_steps(inner.flow):
            names.update(dict.fromkeys(each.used_tools()))
            flows.extend(callee.compiled for body in each.bodies().values() if body.flow
                         and (callee := inner.agents.get(body.flow)) is not None)
    return list(names)


def check_sub_steps(sub: Flow, around: Mapping[str, Step], doc: Document) -> Iterator[Diagnostic]:
    """FR130: a sub-flow's step ids are not those of the flows around it (its templates see both); FR131: no step
    of a sub-flow remembers (its runs would write the agent's memory at once, in no set order)."""
    for step in sub.steps.values():
        if step.id in around:
            message = (f"step id {step.id!r} is taken by a step around this sub-flow, whose templates see both as "
                       f"`steps.{step.id}`: rename it")
            yield diagnostic("FR130", message, doc.file, doc.position(("steps", step.id), key=True))
        if step.remember:
            message = (f"step {step.id!r} is in a sub-flow, whose runs may go at once: they cannot `remember`; "
                       "remember from a step after the map or parallel step, with its output")
            yield diagnostic("FR131", message, doc.file, doc.position(("steps", step.id, "remember"), key=True))


def _unknown_tool(doc: Document, path: tuple[str | int, ...], name: str, tools: Mapping[str, object]) -> Diagnostic:
    message = f"no tool manifest defines {name!r}{suggest(name, tools)}; see `flowrun tools list`"
    return diagnostic("FR201", message, doc.file, doc.position(path))


def check_step_data(flow: Flow, tools: Mapping[str, ToolManifest], doc: Document) -> Iterator[Diagnostic]:
    """FR108 an example answer the step could not give, FR109 examples that no model call of the step uses, FR111
    a `recall` with no model call to put its memories in."""
    for step in flow.steps.values():
        if step.recall is not None and (reason := step.asks_nothing()):
            message = f"step {step.id!r} {reason}, so the memories it recalls go in no prompt: remove `recall`"
            yield diagnostic("FR111", message, doc.file, doc.position(("steps", step.id, "recall"), key=True))
        if not step.examples:
            continue
        unused = step.unused_examples()
        if unused:
            message = f"step {step.id!r} {unused}, so its examples are never sent: remove them"
            yield diagnostic("FR109", message, doc.file, doc.position(("steps", step.id, "examples"), key=True))
            continue
        for i, example in enumerate(step.examples):
            problem = _answer_problem(step, example.answer, tools)
            if problem:
                where = doc.position(("steps", step.id, "examples", i, "answer"))
                yield diagnostic("FR108", f"example {i + 1} of step {step.id!r}: {problem}", doc.file, where)


def _answer_problem(step: Step, answer: Any, tools: Mapping[str, ToolManifest]) -> str | None:
    """What is wrong with `answer` as one `step` could give, or None (also where the step's schema or tool is
    itself wrong, which other diagnostics report)."""
    if chooses(step.kind):
        if isinstance(answer, str) and answer in step.branches:
            return None
        return f"the answer {answer!r} is not one of the branch labels ({', '.join(step.branches)})"
    if step.tool:
        manifest = tools.get(step.tool)
        schema, what = (manifest.parameters, f"the arguments of {step.tool}") if manifest else (None, "")
    else:
        schema, what = step.output_schema, "the output_schema"
    if schema is None:
        return None
    try:
        problems = schema_problems(schema, answer, "answer")
    except jsonschema_rs.ValidationError:
        return None
    return f"the answer does not match {what}: {'; '.join(problems)}" if problems else None


def check_templates(flow: Flow, doc: Document, scope: Scope | None = None) -> Iterator[Diagnostic]:
    """FR301-FR303 and FR127: every template parses, refers only to what exists (what a sub-flow sees: `scope`),
    and `decide` renders only labels."""
    for step in flow.steps.values():
        for field, text in step.templates():
            for problem in template_problems(text, flow, step, field, scope):
                yield diagnostic(problem.code, problem.message, doc.file,
                                 doc.position(("steps", step.id, *field.split("."))))


def _data(doc: Document) -> dict[str, object]:
    return doc.data if isinstance(doc.data, dict) else {}
