"""The state of one run's walk (RunState), what a step gives back (StepDone), and the error that stops a run:
what the walk (engine.interpreter.walk) and the kinds of step (engine.interpreter.steps) share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ErrorKind, RunFailure
from engine.flow.compiler import CompiledFlow
from engine.flow.model import Flow, Step
from engine.flow.templates import CAUGHT, evaluate, render
from engine.interpreter.cost import run_options
from engine.interpreter.runs import result_mark
from engine.kernel.session import Budget
from engine.kernel.tables import StepRecord
from engine.kernel.tools import ToolCall

NO_ERROR = {"kind": None, "message": None, "step": None}


class RunError(RunFailure):
    """The run cannot go on: a limit reached, a template that cannot be rendered, a model answer that does not fit."""



@dataclass(frozen=True)
class Origin:
    """Where a child run comes from: its parent run, the step and visit of it that started it, its branch there
    (a parallel's branch name, a map item's index, "" for an agent step), and the try of the step (a `retry`)."""

    run: str
    step: str
    visit: int
    branch: str
    attempt: int = 1

    @property
    def path(self) -> str:
        """The child's place in its parent, as request keys prefix it: `step.` for an agent step, `step.branch.`
        for a parallel's branch, `step[index].` for a map's item."""
        if not self.branch:
            return f"{self.step}."
        return f"{self.step}[{self.branch}]." if self.branch.isdigit() else f"{self.step}.{self.branch}."


@dataclass
class Tally:
    """How many child runs a run a user started has started, its children's included, and how many it may."""

    limit: int
    started: int = 0


@dataclass
class RunState:
    """The state of one walk: what templates see (`inputs`, `steps`, `visits`, `memory`, and a map's sub-flow its
    `item` and `index`) and the path so far. A child run has its `origin`; its model calls' request keys start
    with its `scope` (its place among its parent's, Origin.path), and it is `depth` calls below its root run."""

    compiled: CompiledFlow
    file: str
    inputs: dict[str, Any]
    id: str
    options: dict[str, Any]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # step id -> {"output": latest output}
    visits: dict[str, int] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    votes: list[dict[str, Any]] = field(default_factory=list)  # how the current step's sampled calls were voted
    memory: dict[str, Any] = field(default_factory=dict)  # key -> value its flow remembers (`memory.<key>`)
    names: dict[str, Any] = field(default_factory=dict)  # a map item's `item` and `index`
    origin: Origin | None = None
    scope: str = ""
    depth: int = 0
    root: str = ""  # the run a user started, of whose tree it is (its own id, for that run)
    tally: Tally = field(default_factory=lambda: Tally(0))  # shared by the whole tree of runs
    budget: Budget = field(default_factory=Budget)  # what the tree of runs may spend on the model, and has
    retrying: bool = False  # resumed from failed: its failed step, and its failed child runs, go again
    # what the last error a step's `catch` caught was: templates' `error` (its fields null before any)
    error: dict[str, Any] = field(default_factory=lambda: dict(NO_ERROR))
    attempt: int = 1  # the try of its current step (engine.interpreter.recovery)
    ended_children: dict[tuple[str, int, str], Any] = field(default_factory=dict)  # its step's children that
    # finished, by (step, visit, branch): a retry of the step gets their answers back (engine.interpreter.children)

    @classmethod
    def new(cls, compiled: CompiledFlow, file: str, inputs: dict[str, Any], run_id: str) -> RunState:
        flow = compiled.flow
        run = cls(compiled, file, inputs, run_id, run_options(flow), root=run_id)
        run.visits.update(dict.fromkeys(flow.steps, 0))
        run.tally = Tally(flow.limits.max_child_runs)
        run.budget = Budget(flow.limits.max_model_calls, flow.limits.max_tokens)
        return run

    def child(self, compiled: CompiledFlow, file: str, inputs: dict[str, Any], run_id: str, origin: Origin, *,
              inline: bool, names: dict[str, Any] | None = None) -> RunState:
        """The state of a child run of this one, as it starts: a run of the flow `compiled` (from `file`) with
        `inputs`; `inline`, a sub-flow of this run's flow, whose templates also see this run's steps, visits and
        memory as they are now, and `names`."""
        run = RunState.new(compiled, file, inputs, run_id)
        run.origin, run.scope, run.depth, run.root = origin, self.scope + origin.path, self.depth + 1, self.root
        run.tally, run.budget = self.tally, self.budget
        if inline:
            run.steps, run.visits = dict(self.steps), {**self.visits, **run.visits}
            run.memory, run.names = dict(self.memory), {**self.names, **(names or {})}
            run.error = self.error
        return run

    def key(self, step: Step) -> str:
        """The request key of a model call of `step`: its id, after the run's scope."""
        return self.scope + step.id

    @property
    def flow(self) -> Flow:
        return self.compiled.flow

    # What templates see of the run (visits, outputs) and its path change only through enter and apply, live and
    # when a resumed run's stored steps are read back, so that both build the same state.
    def enter(self, step_id: str, visit: int) -> None:
        """Step `step_id` begins its `visit`: its templates see it counted, and it is on the path."""
        self.visits[step_id] = visit
        self.path.append(step_id)

    def use_memory(self, read: dict[str, Any] | None) -> None:
        """The run's `memory` starts as `read` (as its record keeps it), with a key its flow remembers and `read`
        lacks (added to the flow since) unknown: None."""
        self.memory = dict.fromkeys(self.flow.remembered) | (read or {})

    def apply(self, step_id: str, output: Any, remembered: dict[str, Any] | None = None,
              error: dict[str, Any] | None = None) -> None:
        """Step `step_id` ended with `output`, having remembered `remembered` (or failed with the `error` its
        `catch` caught): later templates see them."""
        self.steps[step_id] = {"output": output}
        self.memory.update(remembered or {})
        if error is not None:
            self.error = error

    def within_visits(self, step: Step, visit: int) -> None:
        """A RunError (a limit) when `visit` of `step` is more than the flow's limits.max_visits allows."""
        most = self.flow.limits.max_visits
        if most is not None and visit > most:
            raise RunError(f"{self.file}: step {step.id} would run for the {_ordinal(visit)} time, more than "
                           f"limits.max_visits ({most}) allows: raise it if the flow needs more, or see where it "
                           f"loops with `flowrun runs show {self.id[:12]}`", kind=ErrorKind.LIMIT)

    @property
    def agent(self) -> str:
        return self.flow.name

    def render(self, step: Step, name: str, text: str, names: dict[str, Any] | None = None) -> str:
        """Template `text` (field `name` of `step`) rendered with the run's inputs, step outputs and visits, and
        `names`."""
        return self._template(render, step, name, text, names or {})

    def value(self, step: Step, name: str, text: str, names: dict[str, Any]) -> Any:
        """The value of template `text` (field `name` of `step`; engine.flow.templates.evaluate), with `names`
        besides the run's inputs, step outputs and visits."""
        return self._template(evaluate, step, name, text, names)

    def _template(self, function: Callable[[str, dict[str, Any]], Any], step: Step, name: str, text: str,
                  names: dict[str, Any]) -> Any:
        try:
            return function(text, {"inputs": self.inputs, "steps": self.steps, "visits": self.visits,
                                   "memory": self.memory, CAUGHT: self.error, **self.names, **names})
        except Exception as exc:  # a user's template may raise anything (an undefined name, a division by 0)
            raise RunError(f"{self.at(step, name)}: step {step.id}: its {name} cannot be rendered: {exc}") from None

    def at(self, step: Step, name: str) -> str:
        """Where field `name` of `step` stands: file:line:col (the file alone where it is not known)."""
        at = self.compiled.at.get(step.id, {}).get(name)
        return f"{self.file}:{at[0]}:{at[1]}" if at else self.file


@dataclass
class StepDone:
    """What a step produced: the prompt it sent last, its output, the branch taken and the tool calls made."""

    ask: str
    output: Any
    prompt: list[dict[str, str]] | None = None
    branch: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    from_tool: bool = False  # the output is the last call's result
    shown: str = ""  # the last call's result as the step's prompt showed it to the model (JSON)
    remembered: dict[str, Any] = field(default_factory=dict)  # what its `remember` stored, once it is stored
    error: dict[str, Any] | None = None  # the error its `catch` caught: {kind, message, step}

    def record(self, run: str, step: Step, visit: int, tokens: int, when: tuple[float, float],
               votes: list[dict[str, Any]], seq: int) -> StepRecord:
        """What the steps table keeps of this step (with the tokens it generated, when it started and ended, how
        its samples voted, the number of its step.ended event). A tool's result is stored once, in its call's
        record: the step's entries for its calls refer to theirs, and so do its output and prompt where they hold
        a result (engine.interpreter.runs.with_calls reads them back whole)."""
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
                          self.branch, calls or None, tokens, *when, ask, votes or None, seq, self.remembered or None,
                          self.error)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
