"""How a decision runs: one of its labels. `decide:` renders it from data, with no model call; with `answer_by:
examples` the examples most like the question vote (engine.interpreter.alike), with no model call unless the vote
is tied; otherwise the model chooses, constrained to the labels (by a vote of its samples, with `samples: N`)."""

from __future__ import annotations

from engine.errors import ErrorKind
from engine.flow.model import Step
from engine.interpreter.alike import voted_label
from engine.interpreter.cost import BodyCost, Cost, Prices
from engine.interpreter.prompts import ask_for
from engine.interpreter.state import RunError, RunState, StepDone
from engine.interpreter.steps.common import choose_label, prompt_for, shown_examples
from engine.kernel.kernel import Kernel


async def run_decision(kernel: Kernel, run: RunState, step: Step) -> StepDone:
    """A decision: one of the step's labels, from its `decide:` template, its examples' vote or the model."""
    labels = list(step.branches)
    question = run.render(step, "question", step.question or "")
    if step.decide is not None:
        label = run.render(step, "decide", step.decide).strip()
        if label not in step.branches:
            raise RunError(f"{run.file}: step {step.id}: `decide` gave {label!r}, which is not one of its labels "
                           f"({', '.join(labels)})", kind=ErrorKind.BAD_OUTPUT)
        return StepDone(question, label, branch=label)
    if step.answer_by == "examples":
        label = voted_label(step.examples, question, step.examples_shown)
        if label is not None:
            return StepDone(question, label, branch=label)
    ask = ask_for(question, labels=labels)
    messages = await prompt_for(kernel, run, step, ask, examples=shown_examples(step, question, labels=labels))
    label = await choose_label(kernel, run, step, messages, labels)
    return StepDone(ask, label, messages, branch=label)


def decision_cost(step: Step, prices: Prices, body: BodyCost) -> Cost:
    """The most one try of a decision costs: nothing with `decide`; else a label (one per sample), which the
    examples' vote may spare."""
    return Cost() if step.decide is not None else prices.label * (step.samples or 1)
