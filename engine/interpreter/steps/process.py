"""How a process step runs, and a terminal step (its output is the run's answer):

generate, constrained to the step's output_schema when it has one. With `tool: X` the model fills in X's
arguments (use_tool) and the tool's result is the step's output, unless an output_schema asks the model to state
it as data; with `tools: [..]` the model first chooses one of them or none. With `output:`, the template builds the
output instead, from data (and the tool's `result`), with no model call for it; the step's ask is its instruction,
or its id when it has none. With `arguments:` (and `tool: X`), X is called with arguments built from data, with no
model call. With `answer_by: examples`, the arguments, or the data, are those of the most alike example carried
over to the numbers of the instruction (engine.interpreter.alike), where an example's numbers pair with them.
A step's examples go into the prompt of its model call (engine.interpreter.prompts.shots); with `samples: N` each
model call is asked N times at once and the most common answer kept, the tool then called once with the winning
arguments (engine.interpreter.vote)."""

from __future__ import annotations

import json
from typing import Any

from engine.errors import ErrorKind
from engine.flow.model import Step
from engine.flow.templates import RESULT, facts
from engine.interpreter.alike import carried_answer
from engine.interpreter.cost import BodyCost, Cost, Prices
from engine.interpreter.prompts import ask_for
from engine.interpreter.state import RunError, RunState, StepDone
from engine.interpreter.steps.common import choose_label, prompt_for, shown_examples, voted
from engine.interpreter.vote import Unfit
from engine.json_schema import schema_problems
from engine.jsontext import parse_json
from engine.kernel.context import WindowPolicy
from engine.kernel.kernel import Kernel
from engine.kernel.tools import BadArguments, ToolCall, ToolError
from engine.llm.base import Request

NO_TOOL = "none"  # the choice of a `tools:` step that needs none of them


async def run_process(kernel: Kernel, run: RunState, step: Step) -> StepDone:
    """A process or terminal step: the model's answer, using a tool when the step has them."""
    text = run.render(step, "instruction", step.instruction or "")
    names = step.used_tools()
    if step.tools and not step.tool:
        ask = ask_for(f"{text}\nWhich tool should this step use, if any?", labels=[*names, NO_TOOL])
        chosen = await choose_label(kernel, run, step, await prompt_for(kernel, run, step, ask, names),
                                    [*names, NO_TOOL])
        names = () if chosen == NO_TOOL else (chosen,)
    if not names and step.output is not None:
        return StepDone(text or step.id, _output(run, step, {}))
    if not names:
        return await _answer(kernel, run, step, text)
    ask, messages, call = text or step.id, None, None
    if step.tool and step.answer_by == "examples":
        call = await _carried_call(kernel, run, step, text)
    if call is None and step.tool and step.arguments is not None:
        call = await kernel.call_tool(run.agent, run.id, step.tool, _arguments(run, step))
    if call is None:
        ask = ask_for(text, tools=names)
        messages = await prompt_for(kernel, run, step, ask, names,
                                    shown_examples(step, text, tool=step.tool) if step.tool else ())
        call = await (_voted_call(kernel, run, step, messages, names) if step.samples else
                      kernel.use_tool(run.agent, run.id, messages, list(names), options=run.options, key=run.key(step)))
    if step.output is not None:
        output = _output(run, step, {RESULT: call.result})
        return StepDone(ask, output, messages, tool_calls=[call], from_tool=output is call.result)
    if step.output_schema is None:
        return StepDone(ask, call.result, messages, tool_calls=[call], from_tool=True)
    shown = json.dumps(call.result, ensure_ascii=False)
    done = await _answer(kernel, run, step, f"{text}\n{call.tool} returned: {shown}")
    done.tool_calls, done.shown = [call], shown
    return done


async def _carried_call(kernel: Kernel, run: RunState, step: Step, text: str) -> ToolCall | None:
    """The call of the `tool:` step with its most alike example's arguments, carried over to `text`; None when no
    example pairs, the tool's parameters refuse what they carry over to, or the tool fails on it (units that do
    not cancel out, say): the model then fills them in."""
    arguments = carried_answer(step.examples, text, step.examples_shown)
    tool = kernel.tools.tools.get(step.tool or "")
    if arguments is None or tool is None or tool.problems(arguments):
        return None
    try:
        return await kernel.call_tool(run.agent, run.id, tool.name, arguments)
    except ToolError:
        return None


async def _voted_call(kernel: Kernel, run: RunState, step: Step, messages: list[dict[str, str]],
                      names: tuple[str, ...] | list[str]) -> ToolCall:
    """The call of the tool and arguments most of the step's samples picked (made once)."""
    async def pick(key: str, options: dict[str, Any]) -> Any:
        try:
            tool, arguments = await kernel.pick_tool(run.agent, run.id, messages, list(names), options=options,
                                                     key=key)
        except BadArguments as exc:
            return Unfit(str(exc))
        return {"tool": tool, "arguments": arguments}

    picked = await voted(run, step, pick)
    return await kernel.call_tool(run.agent, run.id, picked["tool"], picked["arguments"])


async def _answer(kernel: Kernel, run: RunState, step: Step, text: str) -> StepDone:
    """The model's answer to `text`: free text, or data matching the step's output_schema (asked for twice at
    most: a second time with what was wrong, for a backend that cannot constrain its output)."""
    schema = step.output_schema
    ask = ask_for(text, schema)
    if step.answer_by == "examples" and schema is not None and not step.used_tools():
        value = carried_answer(step.examples, text, step.examples_shown)
        if value is not None and not schema_problems(schema, value, "answer"):
            return StepDone(ask, value)
    # a tool step's examples are its calls (see _process), not what it states of their results
    messages = await prompt_for(kernel, run, step, ask,
                                examples=() if step.used_tools() else shown_examples(step, text, schema))
    window = WindowPolicy(run.flow.context_policy)
    if step.samples:  # one try each: a sample that does not fit is not counted
        async def sample(key: str, options: dict[str, Any]) -> Any:
            result = await kernel.generate(run.agent, run.id, Request(messages, schema=schema, options=options,
                                                                      key=key), window=window)
            if schema is None:
                return result.text.strip()
            value, problem = _data(result.text, schema)
            return Unfit(problem) if problem else value

        return StepDone(ask, await voted(run, step, sample), messages)
    asked, problem = messages, ""
    for _ in range(2 if schema is not None else 1):
        request = Request(asked, schema=schema, options=run.options, key=run.key(step))
        result = await kernel.generate(run.agent, run.id, request, window=window)
        if schema is None:
            return StepDone(ask, result.text.strip(), messages)
        value, problem = _data(result.text, schema)
        if not problem:
            return StepDone(ask, value, messages)
        asked = [*messages, {"role": "assistant", "content": result.text},
                 {"role": "user", "content": f"That answer is not valid: {problem}. Answer again, with JSON "
                                             "matching the schema."}]
    raise RunError(f"{run.file}: step {step.id}: the model's answer failed the step's output_schema twice "
                   f"(the second time: {problem}); a larger model may do better (--model)", kind=ErrorKind.BAD_OUTPUT)


def _arguments(run: RunState, step: Step) -> dict[str, Any]:
    """The tool arguments of a step with `arguments`: each string rendered as a template (its value where it is one
    `{{ expression }}`), anything else as written. The tool manager checks them against the tool's parameters."""
    return {name: run.value(step, f"arguments.{name}", value, {}) if isinstance(value, str) else value
            for name, value in (step.arguments or {}).items()}


def _output(run: RunState, step: Step, names: dict[str, Any]) -> Any:
    """What the step's `output` template builds with `names`: its value, or its text (read as JSON where the step
    has an output_schema), which must match the output_schema. A RunError at the `output` field where not."""
    text = step.output or ""
    value = run.value(step, "output", text, names)
    if step.output_schema is None:
        return value
    if facts(text).expression:
        problem = "; ".join(schema_problems(step.output_schema, value, "the output"))
    else:
        value, problem = _data(value, step.output_schema)
    if problem:
        raise RunError(f"{run.at(step, 'output')}: step {step.id}: its output does not fit its output_schema: "
                       f"{problem}", kind=ErrorKind.BAD_OUTPUT)
    return value


def _data(text: str, schema: dict[str, Any]) -> tuple[Any, str]:
    """The JSON value in `text` and "" when it matches `schema`; else None and what is wrong."""
    try:
        value = parse_json(text)
    except ValueError as exc:
        return None, f"it is not JSON ({exc})"
    problems = schema_problems(schema, value)
    return (None, "; ".join(problems)) if problems else (value, "")


def process_cost(step: Step, prices: Prices, body: BodyCost) -> Cost:
    """The most one try of a process or terminal step costs, as run_process goes: the choice of a tool, the tool's
    arguments (none from `arguments`; the examples' may fail and leave them to the model), the answer (none from
    `output`; with an output_schema, asked twice; one per sample)."""
    samples = step.samples or 1
    answer = Cost() if step.output is not None else prices.answer * (samples if step.samples else
                                                                     2 if step.output_schema is not None else 1)
    if not step.used_tools():
        return answer
    pick = Cost() if step.tool and step.arguments is not None else prices.pick * samples
    stated = Cost() if step.output is not None or step.output_schema is None else answer
    if step.tool:
        return pick + stated
    return prices.label * samples + answer.most(pick + stated)  # the model may choose no tool
