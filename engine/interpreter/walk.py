"""Walking one run of a compiled flow: every step becomes kernel syscalls, and is stored when it ends.

    process   generate, constrained to the step's output_schema when it has one. With `tool: X` the model fills
              in X's arguments (use_tool) and the tool's result is the step's output, unless an output_schema asks
              the model to state it as data; with `tools: [..]` the model first chooses one of them or none.
              With `output:`, the template builds the output instead, from data (and the tool's `result`), with
              no model call for it; the step's ask is its instruction, or its id when it has none. With
              `arguments:` (and `tool: X`), X is called with arguments built from data, with no model call.
    decision  `decide:` renders a label from data, with no model call; with `answer_by: examples` the examples
              most like the question vote (engine.interpreter.alike), with no model call unless the vote is tied;
              otherwise choose: one label, constrained.
With `answer_by: examples`, a `tool:` step's arguments, or a process's data, are the answer of its most alike
example carried over to the numbers of the instruction, with no model call, where an example's numbers pair.
    terminal  generate, as a process without tools; its output is the run's answer.
A step's `examples` go into the prompt of its model call (engine.interpreter.prompts.shots): the decision's choice,
the tool call of a `tool:` step, else its answer.
With `samples: N` each model call of a step is asked N times at once and the most common answer kept (the tool is
then called once, with the winning arguments): engine.interpreter.vote.

A run's record (storage.start_run) is made before its first step and each step's (storage.record_step) is
committed before the next one starts, so a run that fails or is interrupted keeps every step it finished.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from engine.errors import FlowrunError, RunFailure, RunStatus
from engine.events import RunEnded, RunStarted, StepEnded, StepStarted, short
from engine.flow.compiler import CompiledFlow
from engine.flow.kinds import ends_run
from engine.flow.model import Flow, Step
from engine.flow.templates import RESULT, evaluate, facts, render
from engine.interpreter.alike import carried_answer, nearest, voted_label
from engine.interpreter.prompts import ask_for, progress_entries, shots, step_messages
from engine.interpreter.runs import result_mark
from engine.interpreter.vote import Unfit, majority, sample_options
from engine.json_schema import schema_problems
from engine.jsontext import parse_json
from engine.kernel.context import WindowPolicy
from engine.kernel.journal import Journal
from engine.kernel.kernel import Kernel, KernelError
from engine.kernel.storage import StorageError, through
from engine.kernel.tables import RunRow, StepRecord, StepRow
from engine.kernel.tools import BadArguments, ToolCall
from engine.llm.base import Request, sample_key

DEFAULT_MAX_TOKENS = 512  # per model call, unless the flow's model.options set max_tokens
CHOICE_MAX_TOKENS = 32  # a label, quoted
NO_TOOL = "none"  # the choice of a `tools:` step that needs none of them

class RunError(RunFailure):
    """The run cannot go on: a limit reached, a template that cannot be rendered, a model answer that does not fit."""


def new_run_id() -> str:
    """A new run's id, unique across processes sharing a database (given before a run starts, a caller knows it
    while the run goes on: to watch its events, say)."""
    return uuid.uuid4().hex


@dataclass
class RunOutcome:
    """How a run ended: `status` finished (with `answer`), failed or paused (with `error`) or interrupted."""

    run_id: str
    status: RunStatus
    answer: Any = None
    error: str | None = None
    path: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """The state of one walk: what templates see (`inputs`, `steps`, `visits`) and the path so far."""

    compiled: CompiledFlow
    file: str
    inputs: dict[str, Any]
    id: str
    options: dict[str, Any]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # step id -> {"output": latest output}
    visits: dict[str, int] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    votes: list[dict[str, Any]] = field(default_factory=list)  # how the current step's sampled calls were voted

    @classmethod
    def new(cls, compiled: CompiledFlow, file: str, inputs: dict[str, Any], run_id: str) -> _Run:
        flow = compiled.flow
        run = cls(compiled, file, inputs, run_id, {"max_tokens": DEFAULT_MAX_TOKENS, **flow.model.get("options", {})})
        run.visits.update(dict.fromkeys(flow.steps, 0))
        return run

    @property
    def flow(self) -> Flow:
        return self.compiled.flow

    # What templates see of the run (visits, outputs) and its path change only through enter and apply, live and
    # when a resumed run's stored steps are read back, so that both build the same state.
    def enter(self, step_id: str, visit: int) -> None:
        """Step `step_id` begins its `visit`: its templates see it counted, and it is on the path."""
        self.visits[step_id] = visit
        self.path.append(step_id)

    def apply(self, step_id: str, output: Any) -> None:
        """Step `step_id` ended with `output`, which later templates see."""
        self.steps[step_id] = {"output": output}

    @property
    def agent(self) -> str:
        return self.flow.name

    def render(self, step: Step, name: str, text: str) -> str:
        """Template `text` (field `name` of `step`) rendered with the run's inputs, step outputs and visits."""
        return self._template(render, step, name, text, {})

    def value(self, step: Step, name: str, text: str, names: dict[str, Any]) -> Any:
        """The value of template `text` (field `name` of `step`; engine.flow.templates.evaluate), with `names`
        besides the run's inputs, step outputs and visits."""
        return self._template(evaluate, step, name, text, names)

    def _template(self, function: Callable[[str, dict[str, Any]], Any], step: Step, name: str, text: str,
                  names: dict[str, Any]) -> Any:
        try:
            return function(text, {"inputs": self.inputs, "steps": self.steps, "visits": self.visits, **names})
        except Exception as exc:  # a user's template may raise anything (an undefined name, a division by 0)
            raise RunError(f"{self.at(step, name)}: step {step.id}: its {name} cannot be rendered: {exc}") from None

    def at(self, step: Step, name: str) -> str:
        """Where field `name` of `step` stands: file:line:col (the file alone where it is not known)."""
        at = self.compiled.at.get(step.id, {}).get(name)
        return f"{self.file}:{at[0]}:{at[1]}" if at else self.file


@dataclass
class _Done:
    """What a step produced: the prompt it sent last, its output, the branch taken and the tool calls made."""

    ask: str
    output: Any
    prompt: list[dict[str, str]] | None = None
    branch: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    from_tool: bool = False  # the output is the last call's result
    shown: str = ""  # the last call's result as the step's prompt showed it to the model (JSON)

    def record(self, run: str, step: Step, visit: int, tokens: int, started: float,
               votes: list[dict[str, Any]]) -> StepRecord:
        """What the steps table keeps of this step. A tool's result is stored once, in its call's record: the
        step's entries for its calls refer to theirs, and so do its output and prompt where they hold a result
        (engine.interpreter.runs.with_calls reads them back whole)."""
        calls: list[dict[str, Any]] = [{"tool": c.tool, "syscall": c.syscall} for c in self.tool_calls]
        ask, prompt = self.ask, self.prompt
        if self.from_tool:
            calls[-1]["output"] = True
        if self.shown and prompt:
            calls[-1]["shown"] = True
            mark = result_mark(self.tool_calls[-1].syscall)
            ask = ask.replace(self.shown, mark)
            prompt = [*prompt[:-1], {**prompt[-1], "content": prompt[-1]["content"].replace(self.shown, mark)}]
        return StepRecord(run, step.id, visit, step.kind, prompt, None if self.from_tool else self.output,
                          self.branch, calls or None, tokens, started, time.time(), ask, votes or None)


async def run_flow(kernel: Kernel, compiled: CompiledFlow, inputs: dict[str, Any], *, file: str,
                   run_id: str | None = None, batch: str | None = None, workspace: Path | None = None,
                   journal: Journal | None = None, priority: int = 0) -> RunOutcome:
    """Run the flow `compiled` (from file `file`) once with `inputs` (already resolved) on `kernel`, as run
    `run_id` (default: a new id), its tools in `workspace` (default: a directory of the run's own), given back the
    answers `journal` holds (a replay), its model calls at `priority`.

    A failure ends the run as failed, with a message naming the step; a model still unavailable after the
    kernel's retries, as paused (to be resumed); cancelling (Ctrl-C), as interrupted, and re-raises. Whatever the
    end, the steps it finished stay stored.
    """
    run = _Run.new(compiled, file, inputs, run_id or new_run_id())
    row = RunRow(id=run.id, agent=run.agent, flow=file, status=RunStatus.RUNNING, batch=batch, inputs=inputs,
                 created=time.time(), flow_sha256=compiled.sha256,
                 workspace=None if workspace is None else str(workspace.resolve()), **process_id())
    kernel.open_run(run.id, run.agent, run.flow.tools, workspace=workspace, journal=journal, priority=priority)

    async def start() -> Any:
        await kernel.storage.commit(kernel.storage.start_run, row)
        kernel.events.publish(RunStarted(run.id, agent=run.agent, flow=run.file))  # once it is stored
        return await _walk(kernel, run, compiled.start)

    return await _drive(kernel, run, start())


async def continue_run(kernel: Kernel, compiled: CompiledFlow, row: RunRow, steps: list[StepRow], *, file: str,
                       journal: Journal | None = None) -> RunOutcome:
    """Go on with stored run `row` (claimed by this process) from the step after its stored `steps`, which are
    not run again: the outputs, visits and short-term memory they left are rebuilt from their records; `journal`
    gives back what its unfinished step already got."""
    run = _Run.new(compiled, file, row.inputs or {}, row.id)
    kernel.events.open(run.id, after=max([row.events or 0, *(s.seq or 0 for s in steps)]))
    kernel.open_run(run.id, run.agent, run.flow.tools, workspace=Path(row.workspace) if row.workspace else None,
                    journal=journal)
    for stored in steps:
        run.enter(stored.step, stored.visit)
        run.apply(stored.step, stored.output)
        if not ends_run(stored.kind):
            kernel.memory.restore(run.agent, run.id, progress_entries(stored.ask or "", stored.output,
                                                                      stored.tools or []))
    if steps and ends_run(steps[-1].kind):  # it ended, but the process stopped before storing so
        return await _end(kernel, run, RunStatus.FINISHED, answer=steps[-1].output)

    async def go_on() -> Any:  # in _drive, so that a way out the edited flow lacks ends the run as failed
        kernel.events.publish(RunStarted(run.id, agent=run.agent, flow=run.file))
        current = compiled.start if not steps else _follow(run, steps[-1].step, steps[-1].branch or "next")
        return await _walk(kernel, run, current)

    return await _drive(kernel, run, go_on())


def process_id() -> dict[str, Any]:
    """The host, pid and start time a run row keeps of the process running it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time()}


async def _drive(kernel: Kernel, run: _Run, walk: Coroutine[Any, Any, Any]) -> RunOutcome:
    """Await `walk` (the run's steps, to its answer) and store how the run ended."""
    try:
        answer = await walk
    except asyncio.CancelledError:
        at = run.path[-1] if run.path else run.compiled.start
        await _end(kernel, run, RunStatus.INTERRUPTED, error=f"interrupted at step {at}")
        raise
    except Exception as exc:
        status = exc.ends_run if isinstance(exc, FlowrunError) else None
        if status is None:  # a bug in flowrun: the run is stored as failed, and the error raised
            await _end(kernel, run, RunStatus.FAILED, error=f"internal error in flowrun: {type(exc).__name__}: {exc}")
            raise
        at = "" if isinstance(exc, RunError) or not run.path else f"step {run.path[-1]}: "
        return await _end(kernel, run, status, error=f"{at}{exc}")
    return await _end(kernel, run, RunStatus.FINISHED, answer=answer)


async def _end(kernel: Kernel, run: _Run, status: RunStatus, answer: Any = None,
               error: str | None = None) -> RunOutcome:
    """Close the run in the kernel (its short-term memory moves to long-term memory) and store how it ended."""
    tokens = kernel.scheduler.generated[run.id]
    session = kernel.close_run(run.id)
    if session is not None and session.journal is not None and status == RunStatus.FINISHED:
        session.journal.drop_unused()
    try:  # with the number of its run.ended, published next
        await kernel.storage.commit(kernel.storage.finish_run, run.id, status, answer, error,
                                    kernel.events.next_seq(run.id))
    except StorageError as exc:
        status, error = RunStatus.FAILED, f"{error or 'the run finished'}; and its end could not be stored: {exc}"
    kernel.events.publish(RunEnded(run.id, status=status, error=error, tokens=tokens))
    kernel.events.forget(run.id)
    return RunOutcome(run.id, status, answer, error, run.path)


async def _walk(kernel: Kernel, run: _Run, current: str) -> Any:
    """Walk from step `current` to a terminal; its output, the run's answer."""
    limits = run.flow.limits
    while True:
        step = run.compiled.step(current)
        if len(run.path) >= limits.max_steps:
            raise RunError(f"{run.file}: the run has taken limits.max_steps ({limits.max_steps}) steps and would "
                           f"go on to step {step.id}: raise limits.max_steps if the flow needs more, or see where "
                           f"it loops with `flowrun runs show {run.id[:12]}`")
        visit = run.visits[step.id] + 1
        if limits.max_visits is not None and visit > limits.max_visits:
            raise RunError(f"{run.file}: step {step.id} would run for the {_ordinal(visit)} time, more than "
                           f"limits.max_visits ({limits.max_visits}) allows: raise it if the flow needs more, or "
                           f"see where it loops with `flowrun runs show {run.id[:12]}`")
        run.enter(step.id, visit)
        kernel.events.publish(StepStarted(run.id, step=step.id, visit=visit))
        tokens, started = kernel.scheduler.generated[run.id], time.time()
        run.votes = []
        done = await EXECUTORS[step.kind](kernel, run, step)
        row = done.record(run.id, step, visit, kernel.scheduler.generated[run.id] - tokens, started, run.votes)
        if not ends_run(step.kind):  # first, so that what it evicts to storage is committed with the step
            calls = [vars(call) for call in done.tool_calls]
            await kernel.remember(run.agent, run.id, *progress_entries(done.ask, done.output, calls))
            current = _follow(run, step.id, done.branch or "next")
        row = replace(row, seq=kernel.events.next_seq(run.id))  # its step.ended, published next
        interrupted = await through(kernel.storage.commit(kernel.storage.record_step, row))
        run.apply(step.id, done.output)
        kernel.events.publish(StepEnded(run.id, step=step.id, visit=visit, branch=done.branch,
                                        output=short(done.output), tokens=row.tokens))
        if interrupted:
            raise asyncio.CancelledError
        if ends_run(step.kind):
            return done.output


def _follow(run: _Run, step_id: str, label: str) -> str:
    target = run.compiled.next(step_id, label)
    if target is None:  # a validated flow always has one
        raise RunError(f"step {step_id} has no way out labelled {label!r}")
    return target


async def _process(kernel: Kernel, run: _Run, step: Step) -> _Done:
    """A process or terminal step: the model's answer, using a tool when the step has them."""
    text = run.render(step, "instruction", step.instruction or "")
    names = step.used_tools()
    if step.tools and not step.tool:
        ask = ask_for(f"{text}\nWhich tool should this step use, if any?", labels=[*names, NO_TOOL])
        chosen = await _choose(kernel, run, step, _messages(kernel, run, ask, names), [*names, NO_TOOL])
        names = () if chosen == NO_TOOL else (chosen,)
    if not names and step.output is not None:
        return _Done(text or step.id, _output(run, step, {}))
    if not names:
        return await _answer(kernel, run, step, text)
    carried = _carried_arguments(kernel, step, text) if step.answer_by == "examples" else None
    if step.tool and (step.arguments is not None or carried is not None):
        ask, messages = text or step.id, None
        arguments = carried if carried is not None else _arguments(run, step)
        call = await kernel.call_tool(run.agent, run.id, step.tool, arguments)
    else:
        ask = ask_for(text, tools=names)
        messages = _messages(kernel, run, ask, names, _shots(step, text, tool=step.tool) if step.tool else ())
        call = await (_voted_call(kernel, run, step, messages, names) if step.samples else
                      kernel.use_tool(run.agent, run.id, messages, list(names), options=run.options, key=step.id))
    if step.output is not None:
        output = _output(run, step, {RESULT: call.result})
        return _Done(ask, output, messages, tool_calls=[call], from_tool=output is call.result)
    if step.output_schema is None:
        return _Done(ask, call.result, messages, tool_calls=[call], from_tool=True)
    shown = json.dumps(call.result, ensure_ascii=False)
    done = await _answer(kernel, run, step, f"{text}\n{call.tool} returned: {shown}")
    done.tool_calls, done.shown = [call], shown
    return done


def _carried_arguments(kernel: Kernel, step: Step, text: str) -> Any:
    """The arguments of the `tool:` step's most alike example, carried over to the numbers of `text`; None when no
    example pairs, or the tool would refuse what they carry over to (the model then fills them in)."""
    arguments = carried_answer(step.examples, text, step.examples_shown)
    tool = kernel.tools.tools.get(step.tool or "")
    return None if arguments is None or tool is None or tool.problems(arguments) else arguments


async def _voted_call(kernel: Kernel, run: _Run, step: Step, messages: list[dict[str, str]],
                      names: tuple[str, ...] | list[str]) -> ToolCall:
    """The call of the tool and arguments most of the step's samples picked (made once)."""
    async def pick(key: str, options: dict[str, Any]) -> Any:
        try:
            tool, arguments = await kernel.pick_tool(run.agent, run.id, messages, list(names), options=options,
                                                     key=key)
        except BadArguments as exc:
            return Unfit(str(exc))
        return {"tool": tool, "arguments": arguments}

    picked = await _voted(run, step, pick)
    return await kernel.call_tool(run.agent, run.id, picked["tool"], picked["arguments"])


async def _answer(kernel: Kernel, run: _Run, step: Step, text: str) -> _Done:
    """The model's answer to `text`: free text, or data matching the step's output_schema (asked for twice at
    most: a second time with what was wrong, for a backend that cannot constrain its output)."""
    schema = step.output_schema
    ask = ask_for(text, schema)
    if step.answer_by == "examples" and schema is not None and not step.used_tools():
        value = carried_answer(step.examples, text, step.examples_shown)
        if value is not None and not schema_problems(schema, value, "answer"):
            return _Done(ask, value)
    # a tool step's examples are its calls (see _process), not what it states of their results
    messages = _messages(kernel, run, ask, examples=() if step.used_tools() else _shots(step, text, schema))
    window = WindowPolicy(run.flow.context_policy)
    if step.samples:  # one try each: a sample that does not fit is not counted
        async def sample(key: str, options: dict[str, Any]) -> Any:
            result = await kernel.generate(run.agent, run.id, Request(messages, schema=schema, options=options,
                                                                      key=key), window=window)
            if schema is None:
                return result.text.strip()
            value, problem = _data(result.text, schema)
            return Unfit(problem) if problem else value

        return _Done(ask, await _voted(run, step, sample), messages)
    asked, problem = messages, ""
    for _ in range(2 if schema is not None else 1):
        request = Request(asked, schema=schema, options=run.options, key=step.id)
        result = await kernel.generate(run.agent, run.id, request, window=window)
        if schema is None:
            return _Done(ask, result.text.strip(), messages)
        value, problem = _data(result.text, schema)
        if not problem:
            return _Done(ask, value, messages)
        asked = [*messages, {"role": "assistant", "content": result.text},
                 {"role": "user", "content": f"That answer is not valid: {problem}. Answer again, with JSON "
                                             "matching the schema."}]
    raise RunError(f"{run.file}: step {step.id}: the model's answer failed the step's output_schema twice "
                   f"(the second time: {problem}); a larger model may do better (--model)")


async def _decision(kernel: Kernel, run: _Run, step: Step) -> _Done:
    """A decision: one of the step's labels, from its `decide:` template, its examples' vote or the model."""
    labels = list(step.branches)
    question = run.render(step, "question", step.question or "")
    if step.decide is not None:
        label = run.render(step, "decide", step.decide).strip()
        if label not in step.branches:
            raise RunError(f"{run.file}: step {step.id}: `decide` gave {label!r}, which is not one of its labels "
                           f"({', '.join(labels)})")
        return _Done(question, label, branch=label)
    if step.answer_by == "examples":
        label = voted_label(step.examples, question, step.examples_shown)
        if label is not None:
            return _Done(question, label, branch=label)
    ask = ask_for(question, labels=labels)
    messages = _messages(kernel, run, ask, examples=_shots(step, question, labels=labels))
    label = await _choose(kernel, run, step, messages, labels)
    return _Done(ask, label, messages, branch=label)


async def _choose(kernel: Kernel, run: _Run, step: Step, messages: list[dict[str, str]], labels: list[str]) -> str:
    """One of `labels`, chosen by the model (by a vote of the step's samples, if it has them)."""
    async def choose(key: str, options: dict[str, Any]) -> str:
        return await kernel.choose(run.agent, run.id, messages, labels, key=key,
                                   options={**options, "max_tokens": CHOICE_MAX_TOKENS})

    if not step.samples:
        return await choose(step.id, run.options)

    async def sample(key: str, options: dict[str, Any]) -> Any:
        try:
            return await choose(key, options)
        except KernelError as exc:  # an answer that is not a label (a backend that cannot constrain it)
            return Unfit(str(exc))

    return await _voted(run, step, sample)


async def _voted(run: _Run, step: Step, draw: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> Any:
    """The most common of `step.samples` answers of `draw(key, options)`, all asked at once (so that the scheduler
    shares the model's slots among them), each with its sample's key and options; how the vote went joins
    `run.votes`. An Unfit answer is not counted; a step none of whose samples count fails, and so does one whose
    sample failed (with the first failure, once the others are done)."""
    drawn = [asyncio.ensure_future(draw(sample_key(step.id, n), sample_options(run.options, step.temperature, n)))
             for n in range(1, (step.samples or 1) + 1)]
    # A sample that fails lets the others finish, so that a resumed run has their answers; cancelling the run
    # cancels them all.
    answers = await asyncio.gather(*drawn, return_exceptions=True)
    failed = next((a for a in answers if isinstance(a, BaseException)), None)
    if failed is not None:
        raise failed
    tally = majority(answers)
    if tally is None:
        raise RunError(f"{run.file}: step {step.id}: none of its {len(answers)} samples gave an answer that can be "
                       f"counted (the first: {answers[0].problem}); a larger model may do better (--model)")
    run.votes.append(tally.record())
    return answers[tally.winner]


# How each kind of step (engine.flow.kinds) runs.
EXECUTORS: dict[str, Callable[[Kernel, _Run, Step], Awaitable[_Done]]] = {
    "process": _process, "terminal": _process, "decision": _decision,
}


def _messages(kernel: Kernel, run: _Run, ask: str, tools: tuple[str, ...] | list[str] = (),
              examples: Iterable[dict[str, str]] = ()) -> list[dict[str, str]]:
    known = [kernel.tools.tools[name] for name in tools if name in kernel.tools.tools]
    return step_messages(run.flow.description, run.inputs, known, kernel.memory.recent(run.id), ask, examples)


def _shots(step: Step, question: str, schema: dict[str, Any] | None = None, labels: Iterable[str] = (),
           tool: str | None = None) -> list[dict[str, str]]:
    """The turns of the step's examples sent with `question`: all of them, or the `examples_shown` most like it."""
    return shots(nearest(step.examples, question, step.examples_shown), schema, labels, tool)


def _arguments(run: _Run, step: Step) -> dict[str, Any]:
    """The tool arguments of a step with `arguments`: each string rendered as a template (its value where it is one
    `{{ expression }}`), anything else as written. The tool manager checks them against the tool's parameters."""
    return {name: run.value(step, f"arguments.{name}", value, {}) if isinstance(value, str) else value
            for name, value in (step.arguments or {}).items()}


def _output(run: _Run, step: Step, names: dict[str, Any]) -> Any:
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
                       f"{problem}")
    return value


def _data(text: str, schema: dict[str, Any]) -> tuple[Any, str]:
    """The JSON value in `text` and "" when it matches `schema`; else None and what is wrong."""
    try:
        value = parse_json(text)
    except ValueError as exc:
        return None, f"it is not JSON ({exc})"
    problems = schema_problems(schema, value)
    return (None, "; ".join(problems)) if problems else (value, "")


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
