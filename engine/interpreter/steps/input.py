"""How an input step runs: it asks a person its `prompt` (Kernel.ask: the answer its journal holds, or the one the
kernel's answerer gives there and then). With no answer the run stops as waiting (the question kept on its row, an
input.required event published) until an answer is recorded (engine.interpreter.answering) and it is resumed. A
timeout takes the `timeout` branch, or fails the step (input_timeout). The answer is the step's output; with
`branches`, it is a label and the run takes that branch."""

from __future__ import annotations

import time
from dataclasses import replace

from engine.errors import EXIT_WAITING, ErrorKind, FlowrunError, RunStatus
from engine.events import InputRequired
from engine.flow.kinds.input import TIMED_OUT
from engine.flow.model import Step
from engine.interpreter.cost import BodyCost, Cost, Prices
from engine.interpreter.state import RunError, RunState, StepDone
from engine.kernel.asking import Question
from engine.kernel.kernel import Kernel


class Waiting(FlowrunError):
    """The run asked a person and waits for the answer: it stops as waiting, with nothing held in memory."""

    ends_run = RunStatus.WAITING
    exit_code = EXIT_WAITING


async def run_input(kernel: Kernel, run: RunState, step: Step) -> StepDone:
    """An input step: the person's answer, or its timeout; Waiting when there is neither yet."""
    prompt = run.render(step, "prompt", step.prompt or "")
    question = Question(run.key(step), step.id, run.visits[step.id], prompt, step.answer_schema,
                        tuple(label for label in step.branches if label != TIMED_OUT),
                        None if step.timeout is None else time.time() + step.timeout)
    answer = await kernel.ask(run.agent, run.id, question)
    if answer is None:
        question = replace(question, seq=kernel.events.next_seq(run.id))
        await kernel.storage.commit(kernel.storage.set_asking, run.id, question.data())
        for stream in dict.fromkeys([run.id, run.root]):  # a child's question shows where its root is watched
            kernel.events.publish(InputRequired(stream, step=step.id, visit=question.visit, key=question.key,
                                                asker=run.id, prompt=prompt, schema=question.schema,
                                                labels=list(question.labels), deadline=question.deadline))
        raise Waiting(f"it waits for an answer: give it with `flowrun runs answer {run.id[:12]} --value JSON` "
                      "(or --text TEXT)")
    if answer.timed_out:
        if TIMED_OUT in step.branches:
            return StepDone(prompt, None, branch=TIMED_OUT)
        within = "" if step.timeout is None else f" within its timeout of {step.timeout:g} s"
        raise RunError(f"{run.file}: step {step.id}: nobody answered{within}", kind=ErrorKind.INPUT_TIMEOUT)
    problems = question.problems(answer.value)
    if problems:  # given in the run a replay replays, or a cassette's: an answer given now was checked
        raise RunError(f"{run.file}: step {step.id}: the answer does not fit: {'; '.join(problems)}",
                       kind=ErrorKind.BAD_OUTPUT)
    return StepDone(prompt, answer.value, branch=answer.value if step.branches else None)


def input_cost(step: Step, prices: Prices, body: BodyCost) -> Cost:
    """An input step asks the model nothing."""
    return Cost()
