"""A run's spans, after OpenTelemetry's GenAI semantic conventions (semconv 1.38, whose gen_ai attributes are still
"Development": the names they have there), built from what storage holds of the run and its child runs, and their
OTLP/JSON form (`flowrun runs trace`).

The tree: `invoke_agent {agent}` for a run; under it `step {id}` for each step it took (kind, visit, branch taken);
under a step `chat {model}` for each model call (output tokens; its queue wait and each preemption as events) and
`execute_tool {name}` for each tool call; a child run's `invoke_agent` under the step that started it. Span ids are
derived from what they stand for, so a run's trace is the same each time it is written.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine import __version__
from engine.interpreter.runs import RunRecord
from engine.kernel.syscall import to_first_token
from engine.kernel.tables import RunRow, StepRow, SyscallRow, ToolCallRow
from engine.llm.base import sampled

SEMCONV = "1.38.0"  # the version of the semantic conventions whose attribute names these are
MODEL_CALLS = ("generate", "choose", "call_tool")  # engine.kernel.syscall.SyscallKind's that ask the model
_KIND = {"INTERNAL": 1, "CLIENT": 3}  # OTLP's SpanKind numbers
_ERROR = 2  # OTLP's status code for an error (a span without one is left unset, as the spec asks)


@dataclass
class Span:
    """One span: times in seconds since the epoch, ids as hex."""

    name: str
    id: str
    parent: str | None
    start: float
    end: float
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    kind: str = "INTERNAL"


# W3C Trace Context: version, trace id, parent span id, flags (a later version may add fields after them)
TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def traceparent(header: str | None) -> str | None:
    """The W3C `traceparent` header as kept (version 00 fields, lowercase); None for one that is absent or
    malformed, which W3C says to ignore (version ff, all-zero ids, extra fields after version 00)."""
    found = TRACEPARENT.fullmatch((header or "").strip())
    if found is None or found[1] == "ff" or (found[1] == "00" and found[5]) or set(found[2]) == {"0"} or \
            set(found[3]) == {"0"}:
        return None
    return f"00-{found[2]}-{found[3]}-{found[4]}"


def caller(kept: str | None) -> tuple[str, str] | None:
    """The trace id and span id of a kept traceparent."""
    return (kept[3:35], kept[36:52]) if kept else None


def traced(kept: str | None) -> bool:
    """Whether a run with the kept traceparent (None: none) is to be traced: its caller's sampled flag says."""
    return kept is None or int(kept[-2:], 16) & 1 == 1


def trace_id(root: RunRow) -> str:
    """The trace id of the run `root` a user started (its child runs share it): its caller's, else its own."""
    given = caller(root.traceparent)
    return given[0] if given else hashlib.sha256(f"flowrun-trace/{root.id}".encode()).hexdigest()[:32]


def parent_of(run: RunRow) -> str | None:
    """The span the run's span is under: for a child run, that of the step of its parent that started it; for a
    run a user started, its caller's span, if it had one."""
    if run.parent:
        return _id(run.parent, "step", run.parent_step, run.parent_visit)
    given = caller(run.traceparent)
    return given[1] if given else None


def spans(found: RunRecord, *, content: bool = False) -> list[Span]:
    """The spans of the run `found` and its child runs; with `content`, the prompts and answers of model calls
    too."""
    return _tree(found, parent_of(found.run), content)


def _tree(found: RunRecord, parent: str | None, content: bool) -> list[Span]:
    made = run_spans(found, parent, content=content)
    known = {span.id for span in made}
    for child in found.children:  # under its step, or the run where that step was not stored (it failed)
        under = parent_of(child.run)
        made += _tree(child, under if under in known else made[0].id, content)
    return made


def run_spans(found: RunRecord, parent: str | None, *, content: bool = False) -> list[Span]:
    """The spans of the run `found` itself (not its child runs'), under span `parent`."""
    run = found.run
    ran = Span(f"invoke_agent {run.agent}", _id(run.id), parent, run.created,
               run.finished or max([run.created, *(s.finished for s in found.steps)]),
               {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": run.agent, "gen_ai.agent.id": run.id,
                "flowrun.flow": run.flow, "flowrun.run.status": run.status},
               error=run.error if run.status == "failed" else None)
    steps = {(s.step, s.visit): _step(run, s, ran.id) for s in found.steps}
    made = [ran, *steps.values()]
    model = _model(run)
    for call in found.syscalls:
        if call.kind in MODEL_CALLS and call.superseded is None:
            step = _within(found.steps, call.key, call.created)
            chat = _chat(call, model, steps[step.step, step.visit].id if step else ran.id)
            if content:
                chat.attributes.update(_content(call, step))
            made.append(chat)
    for tool in found.tools:
        if tool.superseded is None:
            step = _within(found.steps, None, tool.started)
            made.append(_tool(tool, steps[step.step, step.visit].id if step else ran.id))
    return made


def otlp_json(root: RunRow, made: list[Span]) -> dict[str, Any]:
    """`made`, the spans of the run `root` and its children, as an OTLP/JSON trace (ids hex, times in nanoseconds
    as strings, as OTLP/JSON writes them)."""
    trace = trace_id(root)
    return {"resourceSpans": [{
        "resource": {"attributes": _attributes({"service.name": "flowrun", "service.version": __version__})},
        "scopeSpans": [{"scope": {"name": "flowrun", "version": __version__},
                        "schemaUrl": f"https://opentelemetry.io/schemas/{SEMCONV}",
                        "spans": [_otlp(trace, span) for span in made]}]}]}


def _step(run: RunRow, step: StepRow, parent: str) -> Span:
    attributes = {"flowrun.step.id": step.step, "flowrun.step.kind": step.kind, "flowrun.step.visit": step.visit,
                  "gen_ai.usage.output_tokens": step.tokens}
    if step.branch is not None:
        attributes["flowrun.step.branch"] = step.branch
    error = step.error.get("message") if isinstance(step.error, dict) else None  # failed, caught by `catch`
    if error is not None:
        attributes["error.type"] = step.error.get("kind") or "_OTHER"
    return Span(f"step {step.step}", _id(run.id, "step", step.step, step.visit), parent, step.started, step.finished,
                attributes, error=error)


def _chat(call: SyscallRow, model: str | None, parent: str) -> Span:
    attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": call.tokens,
                                  "flowrun.syscall.id": call.id, "flowrun.syscall.kind": call.kind}
    if model:
        attributes["gen_ai.request.model"] = model
    if call.input_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = call.input_tokens
    first = to_first_token(call.first_token, call.slices or [])
    if first is not None:
        attributes["gen_ai.response.time_to_first_chunk"] = first
    if call.key:
        attributes["flowrun.request.key"] = call.key
    if call.error is not None:
        attributes["error.type"] = "_OTHER"  # the kernel keeps the message, not a kind
    events = [("flowrun.queued", call.created)]
    slices = call.slices or ([[call.started, call.finished]] if call.started and call.finished else [])
    for n, (start, end) in enumerate(slices):
        events.append(("flowrun.started" if n == 0 else "flowrun.resumed", start))
        if n < len(slices) - 1:
            events.append(("flowrun.preempted", end))
    if call.first_token is not None:
        events.append(("flowrun.first_token", call.first_token))
    events.sort(key=lambda event: event[1])
    return Span(f"chat {model}" if model else "chat", _id(call.id), parent, call.created,
                call.finished or call.started or call.created, attributes, events, call.error, "CLIENT")


def _tool(call: ToolCallRow, parent: str) -> Span:
    attributes: dict[str, Any] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call.tool,
                                  "gen_ai.tool.call.id": str(call.id)}
    if call.error is not None:
        attributes["error.type"] = call.error_kind or "tool_error"
    return Span(f"execute_tool {call.tool}", _id(call.run_id, "tool", call.id), parent, call.started,
                call.finished, attributes, error=call.error)


def _within(steps: list[StepRow], key: str | None, at: float) -> StepRow | None:
    """The step that was running at `at` (and, given a request key, whose id it names), if one was."""
    for step in steps:
        if step.started <= at <= step.finished and (key is None or _step_of(key) == step.step):
            return step
    return None


def _content(call: SyscallRow, step: StepRow | None) -> dict[str, str]:
    """What a model call was asked and answered, as the conventions' message lists (JSON text)."""
    said: dict[str, str] = {}
    if step is not None and isinstance(step.prompt, list):
        said["gen_ai.input.messages"] = json.dumps(
            [{"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content")}]}
             for m in step.prompt if isinstance(m, dict)], ensure_ascii=False)
    if call.text is not None:
        said["gen_ai.output.messages"] = json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": call.text}]}], ensure_ascii=False)
    return said


def _step_of(key: str) -> str:
    """The step id a request key names: after its scope, before a sample's number (`plan.each[2].pick#3`: pick)."""
    return (sampled(key) or key).rsplit(".", 1)[-1]


def _model(run: RunRow) -> str | None:
    """The model the run's flow names, if its file is still there to say (a run may have been given another)."""
    try:
        flow = yaml.safe_load(Path(run.flow).read_text(encoding="utf-8"))
        name = flow.get("model", {}).get("name") if isinstance(flow, dict) else None
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _id(*parts: Any) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:16]


def _otlp(trace: str, span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {"traceId": trace, "spanId": span.id, "name": span.name, "kind": _KIND[span.kind],
                           "startTimeUnixNano": _nanos(span.start), "endTimeUnixNano": _nanos(span.end),
                           "attributes": _attributes(span.attributes),
                           "events": [{"name": name, "timeUnixNano": _nanos(at)} for name, at in span.events],
                           "status": {"code": _ERROR, "message": span.error} if span.error else {}}
    if span.parent:
        out["parentSpanId"] = span.parent
    return out


def _attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}
        if isinstance(v, float):
            return {"doubleValue": v}
        return {"stringValue": str(v)}

    return [{"key": k, "value": value(v)} for k, v in values.items()]


def _nanos(seconds: float) -> str:
    return str(round(seconds * 1e9))
