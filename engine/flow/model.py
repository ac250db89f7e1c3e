"""The Flow model: plain data classes for a flow file, built from loaded YAML data.

`flow_from_data` is tolerant: a field of the wrong type is taken as absent (the schema check reports it), so that
graph checks still run on a file with schema errors and a user sees all problems in one pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from engine.flow.kinds import KINDS

DEFAULT_MAX_STEPS = 100
DEFAULT_MAX_ITEMS = 100  # a map's items, unless it sets max_items
DEFAULT_MAX_CHILD_RUNS = 1000  # child runs of one run, its children's included, unless its flow's limits say
CATCH = "catch:"  # before an error kind (or ANY_ERROR), the label of a step's way out when its `catch` catches it
ANY_ERROR = "any"  # in `catch`: an error of any kind the other keys do not name
# What a `retry` rule without `on` tries again: the errors another try may not meet (not a limit, a denial, or a
# person who did not answer)
RETRIED = ("model_unavailable", "bad_output", "tool_error", "tool_timeout", "step_timeout", "child_failed")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
LONGEST_WAIT = 3600.0  # seconds a retry's backoff may wait at most (the schema's `wait`)


@dataclass(frozen=True, slots=True)
class Example:
    """A worked example of a step: `input` stands for its instruction or question, `answer` for what it answers."""

    input: str
    answer: Any


@dataclass(frozen=True, slots=True)
class Recall:
    """Long-term memories a step puts in its prompt: those matching `query` (a template), `limit` at most, of the
    flow's agent and of the agents `owners`."""

    query: str
    limit: int = 5
    owners: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Retry:
    """One rule of a step's `retry`: an error of a kind in `on` is tried again, up to `max_attempts` tries in all
    (the first one counted), waiting min(`max`, `initial` * `factor`**(n-1)) seconds before retry n; with `jitter`,
    a random wait of up to that."""

    on: tuple[str, ...] = RETRIED
    max_attempts: int = 3
    initial: float = 1.0
    factor: float = 2.0
    max: float = 60.0
    jitter: bool = False


def seconds(value: Any) -> float | None:
    """The seconds of a duration: a number of seconds, or text such as "500ms", "30s", "5m", "2h", "1d", "2w" (the
    flow schema checks a flow's forms; `runs prune --older-than` takes these too); None for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", value.strip()) if isinstance(value, str) else None
    return float(found[1]) * _DURATION_UNITS[found[2]] if found else None


@dataclass(slots=True)
class Body:
    """What a step runs as child runs (an agent step once, a map step once per item, a parallel step once per
    branch): a sub-flow of `steps` from `start` (its own steps, ending at terminals), or the flow `flow` calls (a
    path relative to the flow file, or a name found in the flows directories) with `inputs` (name -> a template or
    a constant)."""

    steps: dict[str, Step] = field(default_factory=dict)
    start: str | None = None
    flow: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)


def body_keys(branch: str) -> tuple[str, ...]:
    """The keys from a step to its body of branch `branch` ("" for an agent's or a map's own) in the flow file."""
    return ("branches", branch) if branch else ()


@dataclass(slots=True)
class Step:
    """One step. `instruction` is set for process and terminal steps (optional with `output`), `question` for
    decisions."""

    id: str
    kind: str  # one of engine.flow.kinds.KINDS; "" when missing or unknown
    instruction: str | None = None
    question: str | None = None
    next: str | None = None
    branches: dict[str, str] = field(default_factory=dict)  # label -> step id
    decide: str | None = None
    answer_by: str = "model"  # "model", or "examples": the examples answer (engine.interpreter.alike)
    tool: str | None = None
    arguments: dict[str, Any] | None = None  # the tool's arguments from data: name -> value (a string: a template)
    tools: tuple[str, ...] = ()
    output_schema: dict[str, Any] | None = None
    output: str | None = None  # a template that builds the output from data
    examples: tuple[Example, ...] = ()
    examples_shown: int | None = None  # send only this many examples, those most like the question (None: all)
    samples: int | None = None  # draw each model call's answer this many times and keep the most common
    temperature: float | None = None  # the samples' temperature (None: engine.interpreter.vote's default)
    recall: Recall | None = None
    remember: dict[str, str] = field(default_factory=dict)  # key -> a template of the value kept under it
    body: Body | None = None  # what an agent or map step runs
    parallel: dict[str, Body] = field(default_factory=dict)  # a parallel step's branches, by name
    items: str | None = None  # a map's template of its JSON array of items
    max_items: int = DEFAULT_MAX_ITEMS
    max_concurrency: int | None = None  # of a map's items or a parallel's branches (None: all at once)
    tolerated_failures: int | str = 0  # a count, or a percentage of a map's items ("10%")
    retry: tuple[Retry, ...] = ()  # the first rule whose `on` has an error's kind applies
    catch: dict[str, str] = field(default_factory=dict)  # error kind (or ANY_ERROR) -> the step the run goes on at
    timeout: float | None = None  # seconds the whole step may take, each try (an input: how long it waits)
    prompt: str | None = None  # an input step's question to a person (a template)
    answer_schema: dict[str, Any] | None = None  # what an input step's answer must match (None: text, or a label)

    def edges(self) -> list[tuple[str, str]]:
        """(label, target) for each way out of this step; a process's single way out is labelled "next", the way
        out when `catch` catches an error CATCH + its key."""
        out = [("next", self.next)] if self.next is not None else []
        return out + list(self.branches.items()) + [(CATCH + key, target) for key, target in self.catch.items()]

    def templates(self) -> list[tuple[str, str]]:
        """(field, text) for each field of this step that is a template; an argument's field is `arguments.NAME`."""
        fields = (("instruction", self.instruction), ("question", self.question), ("prompt", self.prompt),
                  ("decide", self.decide),
                  ("output", self.output), ("recall.query", self.recall.query if self.recall else None),
                  ("items", self.items), *((f"remember.{key}", text) for key, text in self.remember.items()),
                  *((".".join((*body_keys(branch), "inputs", name)), text) for branch, body in self.bodies().items()
                    for name, text in body.inputs.items() if isinstance(text, str)))
        arguments = [(f"arguments.{name}", value) for name, value in (self.arguments or {}).items()
                     if isinstance(value, str)]
        return [(name, text) for name, text in fields if text is not None] + arguments

    def bodies(self) -> dict[str, Body]:
        """What the step runs as child runs, by branch name ("" for an agent's or a map's own body)."""
        return {"": self.body} if self.body is not None else dict(self.parallel)

    def used_tools(self) -> tuple[str, ...]:
        """The tools this step may call."""
        return tuple(dict.fromkeys((self.tool, *self.tools))) if self.tool else self.tools

    def unused_examples(self) -> str | None:
        """Why no model call of this step would send its examples (they would teach nothing), or None."""
        if self.tools and not self.tool:
            return "chooses among `tools` (examples teach a call of one `tool:`)"
        if (reason := self.asks_nothing()) is not None:
            return reason
        if self.arguments is not None:  # the model states the result as data: examples teach calls, not that
            return "calls its tool with `arguments`, asking the model nothing"
        return None

    def asks_nothing(self) -> str | None:
        """Why this step makes no model call at all (data builds its answer), or None."""
        if self.decide is not None:
            return "decides with `decide`, asking the model nothing"
        if self.output is not None and not self.tool:
            return "builds its output with `output`, asking the model nothing"
        if self.arguments is not None and (self.output is not None or self.output_schema is None):
            return "calls its tool with `arguments`, asking the model nothing"
        return None


@dataclass(slots=True)
class Limits:
    max_steps: int = DEFAULT_MAX_STEPS
    max_visits: int | None = None
    max_child_runs: int = DEFAULT_MAX_CHILD_RUNS
    max_model_calls: int | None = None  # of a run and its child runs together (None: no bound)
    max_tokens: int | None = None  # generated by a run and its child runs together (None: no bound)
    explicit_max_steps: bool = False  # whether the file set max_steps (a loop without it is warned about)


@dataclass(slots=True)
class Flow:
    """A flow file's content. `steps` keeps the file's order; `start` is resolved to the first step by default."""

    name: str
    description: str
    inputs: dict[str, dict[str, Any]]
    tools: tuple[str, ...]
    model: dict[str, Any]
    limits: Limits
    start: str | None
    steps: dict[str, Step]
    context_policy: str = "truncate"  # "truncate" or "summarize": see the schema's `context.policy`
    agents: tuple[str, ...] = ()  # the flows its steps may call, as their `flow:` names them

    def sub_flow(self, body: Body) -> Flow:
        """The sub-flow `body` of one of its steps, as a flow of its own: this flow's agent, with its steps."""
        return replace(self, steps=body.steps, start=body.start or next(iter(body.steps), None))

    @property
    def remembered(self) -> tuple[str, ...]:
        """The keys its steps remember (`memory.<key>` in its templates), in the order they first appear."""
        return tuple(dict.fromkeys(key for step in self.steps.values() for key in step.remember))


def all_steps(flow: Flow, within: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Step]]:
    """(keys to the step in the file, step) for each step of the flow and of its steps' sub-flows."""
    for step in flow.steps.values():
        yield (*within, "steps", step.id), step
        for branch, body in step.bodies().items():
            yield from all_steps(flow.sub_flow(body), (*within, "steps", step.id, *body_keys(branch)))


def flow_from_data(data: Any) -> Flow:
    """The Flow in loaded YAML `data`, taking whatever is well-typed."""
    data = data if isinstance(data, dict) else {}
    steps = {sid: _step(sid, raw) for sid, raw in _dict(data.get("steps")).items()}
    limits = _dict(data.get("limits"))
    max_steps = limits.get("max_steps")
    max_visits = limits.get("max_visits")
    start = data.get("start")
    return Flow(
        name=_str(data.get("name")) or "",
        description=_str(data.get("description")) or "",
        inputs={k: v for k, v in _dict(data.get("inputs")).items() if isinstance(v, dict)},
        tools=_names(data.get("tools")),
        model=_dict(data.get("model")),
        limits=Limits(
            max_steps=max_steps if _is_int(max_steps) else DEFAULT_MAX_STEPS,
            max_visits=max_visits if _is_int(max_visits) else None,
            max_child_runs=most if _is_int(most := limits.get("max_child_runs")) else DEFAULT_MAX_CHILD_RUNS,
            max_model_calls=calls if _is_int(calls := limits.get("max_model_calls")) else None,
            max_tokens=tokens if _is_int(tokens := limits.get("max_tokens")) else None,
            explicit_max_steps=_is_int(max_steps),
        ),
        start=start if isinstance(start, str) else next(iter(steps), None),
        steps=steps,
        context_policy=policy if (policy := _dict(data.get("context")).get("policy")) == "summarize" else "truncate",
        agents=_names(data.get("agents")),
    )


_TEXT_FIELDS = ("instruction", "question", "next", "decide", "tool", "output", "items", "prompt")


def _step(sid: str, raw: Any) -> Step:
    raw = _dict(raw)
    text = {name: value for name in _TEXT_FIELDS if isinstance(value := raw.get(name), str)}
    kind = raw.get("kind")
    schema = raw.get("output_schema")
    branches = raw.get("branches")
    arguments = raw.get("arguments")
    rules = retry if isinstance(retry := raw.get("retry"), list) else [retry]
    return Step(
        id=sid,
        kind=kind if isinstance(kind, str) and kind in KINDS else "",
        branches={k: v for k, v in branches.items() if isinstance(v, str)}
        if isinstance(branches, dict) and kind != "parallel" else {},
        tools=_names(raw.get("tools")),
        output_schema=schema if isinstance(schema, dict) else None,
        arguments=arguments if isinstance(arguments, dict) else None,
        examples=_examples(raw.get("examples")),
        answer_by="examples" if raw.get("answer_by") == "examples" else "model",
        examples_shown=shown if _is_int(shown := raw.get("examples_shown")) else None,
        samples=samples if _is_int(samples := raw.get("samples")) else None,
        temperature=heat if isinstance(heat := raw.get("temperature"), int | float) and not isinstance(heat, bool)
        else None,
        recall=_recall(raw.get("recall")),
        remember={k: v for k, v in remember.items() if isinstance(v, str)}
        if isinstance(remember := raw.get("remember"), dict) else {},
        body=_body(raw) if kind in ("agent", "map") else None,
        parallel={k: _body(v) for k, v in branches.items() if isinstance(v, dict)}
        if kind == "parallel" and isinstance(branches, dict) else {},
        max_items=most if _is_int(most := raw.get("max_items")) else DEFAULT_MAX_ITEMS,
        max_concurrency=width if _is_int(width := raw.get("max_concurrency")) else None,
        tolerated_failures=tolerated if _is_int(tolerated := raw.get("tolerated_failures")) or
        isinstance(tolerated, str) else 0,
        retry=tuple(_retry(rule) for rule in rules if isinstance(rule, dict)),
        catch={k: v for k, v in catch.items() if isinstance(v, str)}
        if isinstance(catch := raw.get("catch"), dict) else {},
        timeout=seconds(raw.get("timeout")),
        answer_schema=answer if isinstance(answer := raw.get("answer_schema"), dict) else None,
        **text,
    )


def _body(raw: dict[str, Any]) -> Body:
    steps = {sid: _step(sid, value) for sid, value in _dict(raw.get("steps")).items()}
    return Body(steps, _str(raw.get("start")), _str(raw.get("flow")), _dict(raw.get("inputs")))


def _retry(raw: dict[str, Any]) -> Retry:
    default = Retry()
    backoff = _dict(raw.get("backoff"))
    most = raw.get("max_attempts")
    factor = backoff.get("factor")
    return Retry(on=_names(raw.get("on")) or RETRIED, max_attempts=most if _is_int(most) else default.max_attempts,
                 initial=min(_or(seconds(backoff.get("initial")), default.initial), LONGEST_WAIT),
                 factor=float(factor) if isinstance(factor, int | float) and not isinstance(factor, bool)
                 else default.factor,
                 max=min(_or(seconds(backoff.get("max")), default.max), LONGEST_WAIT),
                 jitter=backoff.get("jitter") is True)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _recall(value: Any) -> Recall | None:
    if not isinstance(value, dict) or not isinstance(query := value.get("query"), str):
        return None
    limit = value.get("limit")
    return Recall(query, limit if _is_int(limit) else 5, _names(value.get("from")))


def _examples(value: Any) -> tuple[Example, ...]:
    """The examples in `value`, or none unless every one is well-formed (so that each keeps its index)."""
    items = value if isinstance(value, list) else []
    if not all(isinstance(item, dict) and isinstance(item.get("input"), str) and "answer" in item for item in items):
        return ()
    return tuple(Example(item["input"], item["answer"]) for item in items)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _names(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
