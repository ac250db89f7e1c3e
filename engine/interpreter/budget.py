"""The most model calls (and generated tokens) one run of a flow can make, proved from its graph: what each visit of
a step costs at most (its kind's cost of one try, engine.interpreter.steps.COSTS, times its tries under `retry`;
the runs of its sub-flows and called flows, each bounded the same way), and how often each step can run (once on a
loop-free path; on a loop, `limits.max_visits`, and no walk longer than `limits.max_steps`).

On a loop-free flow the bound is the costliest path (of at most max_steps steps): exact, some run makes that many
calls. With loops, it is the costliest path through the loops, each loop's steps run as often as the limits allow,
the costliest first: an upper bound. `limits.max_model_calls` and `limits.max_tokens` of the run a user starts
bound it too (its child runs share them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx

from engine.flow.compiler import CompiledFlow
from engine.flow.diagnostics import Diagnostic, diagnostic
from engine.flow.loader import Document
from engine.flow.model import Step
from engine.flow.validate import CheckedFlow
from engine.interpreter.cost import Cost, Prices
from engine.interpreter.steps import COSTS


class Unbounded(Exception):
    """No bound can be proved; the message says why."""


@dataclass
class Bound:
    """The most one run costs (`cost`), each step's cost per visit with its tries (`per_visit`) and how often it
    runs in the costliest run found (`visits`: a step missing runs in none)."""

    cost: Cost
    per_visit: dict[str, Cost] = field(default_factory=dict)
    visits: dict[str, int] = field(default_factory=dict)

    def share(self, step: str) -> Cost:
        """What the step spends of `cost` in the costliest run found."""
        return self.per_visit.get(step, Cost()) * self.visits.get(step, 0)


def worst_case(compiled: CompiledFlow) -> Bound:
    """The most one run of `compiled`, the flow a user starts, can cost; Unbounded where that cannot be proved."""
    bound = _bound(compiled, ())
    limits = compiled.flow.limits
    calls = bound.cost.calls if limits.max_model_calls is None else min(bound.cost.calls, limits.max_model_calls)
    tokens = bound.cost.tokens if limits.max_tokens is None else min(bound.cost.tokens, limits.max_tokens)
    return Bound(Cost(calls, tokens), bound.per_visit, bound.visits)


def budget_problems(checked: CheckedFlow, doc: Document, *, max_calls: int | None = None,
                    max_tokens: int | None = None) -> list[Diagnostic]:
    """FR135 where one run of the flow `checked` (read from `doc`) can cost more than `max_calls` model calls or
    `max_tokens` generated tokens, or cannot be bounded; located at its `name`."""
    where = doc.position(("name",), key=True)
    try:
        bound = worst_case(checked.compiled)
    except Unbounded as exc:
        return [diagnostic("FR135", f"how many model calls one run makes cannot be bounded: {exc}", doc.file, where)]
    found = []
    costliest = ", ".join(f"{step} {share.calls} calls ({bound.visits[step]} x {bound.per_visit[step].calls})"
                          for step, share in sorted(((s, bound.share(s)) for s in bound.visits),
                                                    key=lambda item: -item[1].calls)[:3] if share.calls)
    for name, most, worst, unit in (("--max-calls", max_calls, bound.cost.calls, "model calls"),
                                    ("--max-tokens", max_tokens, bound.cost.tokens, "generated tokens")):
        if most is not None and worst > most:
            found.append(diagnostic(
                "FR135", f"one run can cost up to {worst} {unit}, more than {name} {most} allows (the costliest "
                         f"steps: {costliest or 'none'}): spend less there, or set limits.max_model_calls and "
                         "limits.max_tokens, which bound every run", doc.file, where))
    return found


def shares(bound: Bound) -> tuple[dict[str, str], str]:
    """What `flowrun graph --budget` writes by each step of the costliest run (its share: visits x calls a visit),
    and as the drawing's title."""
    notes = {step: f"{bound.share(step).calls} calls ({visits} x {bound.per_visit[step].calls})"
             for step, visits in bound.visits.items() if bound.share(step).calls}
    return notes, f"one run: at most {bound.cost.calls} model calls, {bound.cost.tokens} generated tokens"


def tries(step: Step) -> int:
    """The most tries of the step: the first, and each rule's retries."""
    return 1 + sum(rule.max_attempts - 1 for rule in step.retry)


def _bound(compiled: CompiledFlow, calling: tuple[str, ...]) -> Bound:
    """The bound of one run of `compiled` (a flow, or a sub-flow), called through the flows `calling`."""
    prices = Prices.of(compiled.flow)
    per_visit = {}
    for step in compiled.flow.steps.values():
        if not step.kind:
            raise Unbounded(f"step {step.id} has no kind flowrun knows")
        per_visit[step.id] = COSTS[step.kind](step, prices, _bodies(compiled, step, calling)) * tries(step)
    graph = compiled.graph.subgraph(nx.descendants(compiled.graph, compiled.start) | {compiled.start}) \
        if compiled.start in compiled.graph else nx.MultiDiGraph()
    limits = compiled.flow.limits

    def costliest(key: Key) -> dict[str, int]:
        if not graph:
            return {}
        if nx.is_directed_acyclic_graph(graph):
            return _costliest_path(graph, compiled.start, per_visit, limits.max_steps, key)
        return _costliest_walk(graph, compiled.start, per_visit, limits.max_steps, limits.max_visits, key)

    # the run with the most calls may not be the one with the most tokens: each is bounded on its own
    walk, wordiest = costliest(_by_calls), costliest(_by_tokens)
    calls = sum(per_visit[s].calls * n for s, n in walk.items())
    return Bound(Cost(calls, sum(per_visit[s].tokens * n for s, n in wordiest.items())), per_visit, walk)


def _bodies(compiled: CompiledFlow, step: Step, calling: tuple[str, ...]) -> Callable[[str], Cost]:
    """The cost of a run of the step's body at a branch: its sub-flow's, or the flow it calls'."""
    def body(branch: str) -> Cost:
        found = step.bodies()[branch]
        if found.steps:
            return _bound(compiled.parts[(step.id, branch)], calling).cost
        callee = compiled.agents.get(found.flow or "")
        if callee is None:
            raise Unbounded(f"step {step.id} calls {found.flow}, which is not a flow flowrun could read")
        if callee.file in calling:
            raise Unbounded(f"step {step.id} calls {found.flow}, which calls back the flow that calls it")
        return _bound(callee.compiled, (*calling, callee.file)).cost
    return body


def _costliest_path(graph: nx.MultiDiGraph, start: str, cost: dict[str, Cost], most: int, key: Key
                    ) -> dict[str, int]:
    """The steps of the costliest path (by `key`) from `start` of at most `most` steps on a loop-free graph, each
    once."""
    most = min(most, len(graph))  # no path is longer
    best: dict[tuple[str, int], tuple[Cost, str | None]] = {(start, 1): (cost[start], None)}  # -> cost, before
    for node in nx.topological_sort(graph):
        for length in range(1, most):
            here = best.get((node, length))
            if here is None:
                continue
            for after in set(graph.successors(node)):
                found = here[0] + cost[after]
                known = best.get((after, length + 1))
                if known is None or key(found) > key(known[0]):
                    best[(after, length + 1)] = (found, node)
    end = max(best, key=lambda at: (key(best[at][0]), at[1]))  # of the costliest, the longest
    path: dict[str, int] = {}
    node, length = end
    while True:
        path[node] = 1
        before = best[(node, length)][1]
        if before is None:
            return path
        node, length = before, length - 1


def _costliest_walk(graph: nx.MultiDiGraph, start: str, cost: dict[str, Cost], most: int, visits: int | None,
                    key: Key) -> dict[str, int]:
    """How often each step runs in a walk from `start` that costs (by `key`) at least as much as any can: through
    the loops (strongly connected steps, each run as often as `visits` and the walk's `most` steps allow, the
    costliest first) on the costliest way through them; and never more than the `most` costliest visits of all."""
    condensed = nx.condensation(graph)
    members = {c: condensed.nodes[c]["members"] for c in condensed}

    def runs(step: str, loop: set[str]) -> int:
        looped = len(loop) > 1 or graph.has_edge(step, step)
        return min(visits or most, most) if looped else 1

    fill = {c: _fill({s: runs(s, members[c]) for s in members[c]}, cost, most, key) for c in condensed}
    total = {c: sum((cost[s] * n for s, n in fill[c].items()), Cost()) for c in condensed}
    best: dict[int, tuple[Cost, int | None]] = {}
    first = condensed.graph["mapping"][start]
    best[first] = (total[first], None)
    for c in nx.topological_sort(condensed):
        if c not in best:
            continue
        for after in condensed.successors(c):
            found = best[c][0] + total[after]
            if after not in best or key(found) > key(best[after][0]):
                best[after] = (found, c)
    end = max(best, key=lambda c: key(best[c][0]))
    walk: dict[str, int] = {}
    at: int | None = end
    while at is not None:
        walk.update(fill[at])
        at = best[at][1]
    anyhow = _fill({s: runs(s, members[condensed.graph["mapping"][s]]) for s in graph}, cost, most, key)
    if key(sum((cost[s] * n for s, n in anyhow.items()), Cost())) < key(best[end][0]):
        return anyhow
    return walk


def _fill(allowed: dict[str, int], cost: dict[str, Cost], most: int, key: Key) -> dict[str, int]:
    """Visits of the steps of `allowed` (each at most its number), `most` in all, the costliest (by `key`) first."""
    taken: dict[str, int] = {}
    for step in sorted(allowed, key=lambda s: key(cost[s]), reverse=True):
        if most <= 0:
            break
        taken[step] = min(allowed[step], most)
        most -= taken[step]
    return taken


Key = Callable[[Cost], tuple[int, int]]


def _by_calls(cost: Cost) -> tuple[int, int]:
    return cost.calls, cost.tokens


def _by_tokens(cost: Cost) -> tuple[int, int]:
    return cost.tokens, cost.calls
