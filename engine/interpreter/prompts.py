"""The messages a step sends the model: the agent's description and the task's inputs (one system message, the
same for the whole run, never dropped), the progress so far (short-term memory, oldest first, which the context
manager may drop or summarize), the step's examples as turns of the conversation (`shots`), and last the step's own
instruction or question with the tools it may use.

Whatever changes from step to step comes last, so that the start of every prompt of a run is the same and a
backend's cached prompt prefix is reused instead of recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from engine.flow.model import Example
from engine.kernel.memory import Entry
from engine.kernel.tools import Tool

ENTRY_ROOM = 600  # characters of one progress entry; a long tool result fills the model's window in a few steps


def step_messages(description: str, inputs: dict[str, Any], tools: Iterable[Tool], progress: Iterable[Entry],
                  ask: str, examples: Iterable[dict[str, str]] = (), recalled: Iterable[str] = ()
                  ) -> list[dict[str, str]]:
    """The chat messages for one model call of a step; `ask` is the rendered instruction with what to answer,
    `examples` the step's turns from `shots`, `recalled` what the long-term memories it recalls say."""
    system = description.strip()
    if inputs:
        system += "\n\nThe task's inputs:\n" + "\n".join(f"- {k}: {_text(v)}" for k, v in inputs.items())
    remembered = [f"- {_cut(text)}" for text in recalled]
    if remembered:
        system += "\n\nWhat you remember from earlier tasks (the most relevant first):\n" + "\n".join(remembered)
    listed = [f"- {t.name}: {t.description}" for t in tools]
    if listed:
        ask = "Tools you can use:\n" + "\n".join(listed) + "\n\n" + ask
    history = [{"role": e.role, "content": e.content} for e in progress]
    return [{"role": "system", "content": system}, *history, *examples, {"role": "user", "content": ask}]


def shots(examples: Iterable[Example], schema: dict[str, Any] | None = None, labels: Iterable[str] = (),
          tool: str | None = None) -> list[dict[str, str]]:
    """Each example as a user turn asked as the step asks (`ask_for` with the same form of answer) and the
    assistant's answer in exactly the form the model must give: a label as the JSON string `choose` constrains
    it to, a call as `{"tool": ..., "arguments": ...}`, data as JSON, text as it is."""
    labels = list(labels)
    turns = []
    for example in examples:
        answer = {"tool": tool, "arguments": example.answer} if tool else example.answer
        free = not (labels or tool or schema is not None) and isinstance(answer, str)
        turns += [{"role": "user", "content": ask_for(example.input, schema, labels, [tool] if tool else ())},
                  {"role": "assistant", "content": answer if free else json.dumps(answer, ensure_ascii=False)}]
    return turns


def ask_for(instruction: str, schema: dict[str, Any] | None = None, labels: Iterable[str] = (),
            tools: Iterable[str] = ()) -> str:
    """The instruction or question, with the form of answer expected: one of `labels`, a call of one of `tools`,
    or data matching `schema`."""
    labels, tools = list(labels), list(tools)
    if labels:
        return f"{instruction}\nAnswer with exactly one of: {', '.join(labels)}."
    if tools:
        return (f"{instruction}\nCall {' or '.join(tools)}: answer with JSON, "
                '{"tool": "<its name>", "arguments": {...}}.')
    if schema is not None:
        return f"{instruction}\nAnswer with JSON like {json.dumps(example(schema))}"
    return instruction


def example(schema: Any) -> Any:
    """A value of the shape `schema` describes, with placeholders: what a small model copies best."""
    if not isinstance(schema, dict):
        return "..."
    if "enum" in schema or "const" in schema:
        return schema.get("enum", [schema.get("const")])[0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {k: example(v) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [example(schema.get("items", {}))]
    return {"integer": 0, "number": 0.0, "boolean": True, "null": None}.get(kind, "...")  # type: ignore[arg-type]


def progress_entries(ask: str, output: Any, tool_calls: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What a finished step adds to short-term memory: what it asked, and what came of it (long results cut to
    ENTRY_ROOM characters: the whole of them is in the step's record)."""
    lines = [f"Called {c['tool']}({_text(c['arguments'])}) -> {_text(c.get('result', c.get('error')))}"
             for c in tool_calls]
    if not tool_calls or output != tool_calls[-1].get("result"):  # not already said by the tool's result
        lines.append(_text(output))
    return [("user", _cut(ask)), ("assistant", _cut("\n".join(lines)))]


def _cut(text: str) -> str:
    return text if len(text) <= ENTRY_ROOM else text[: ENTRY_ROOM - 1] + "…"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
