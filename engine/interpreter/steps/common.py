"""What the kinds of step share: the prompt of a model call, the examples it shows, a label the model chooses, and
the vote of a step's samples."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from engine.errors import ErrorKind
from engine.flow.model import Step
from engine.interpreter.alike import nearest
from engine.interpreter.cost import CHOICE_MAX_TOKENS
from engine.interpreter.prompts import shots, step_messages
from engine.interpreter.state import RunError, RunState
from engine.interpreter.vote import Unfit, majority, sample_options
from engine.kernel.kernel import Kernel, KernelError
from engine.llm.base import sample_key


async def prompt_for(kernel: Kernel, run: RunState, step: Step, ask: str, tools: tuple[str, ...] | list[str] = (),
                     examples: Iterable[dict[str, str]] = ()) -> list[dict[str, str]]:
    """The messages of a model call of the run's `step` asking `ask`, offering the loaded ones of `tools`, with
    `examples` and the long-term memories the step recalls (engine.interpreter.prompts.step_messages)."""
    known = [kernel.tools.tools[name] for name in tools if name in kernel.tools.tools]
    return step_messages(run.flow.description, run.inputs, known, kernel.memory.recent(run.id), ask, examples,
                         await recalled(kernel, run, step))


async def recalled(kernel: Kernel, run: RunState, step: Step) -> list[str]:
    """What the long-term memories matching the step's `recall` say, best first (none without one): a memory
    syscall, which the access manager checks for the memories of each agent of its `from`."""
    if step.recall is None:
        return []
    query = run.render(step, "recall.query", step.recall.query)
    owners = list(dict.fromkeys([run.agent, *step.recall.owners]))
    return [memory.content for memory in await kernel.recall(run.agent, run.id, query, owners, step.recall.limit)]


def shown_examples(step: Step, question: str, schema: dict[str, Any] | None = None, labels: Iterable[str] = (),
                   tool: str | None = None) -> list[dict[str, str]]:
    """The turns of the step's examples sent with `question`: all of them, or the `examples_shown` most like it."""
    return shots(nearest(step.examples, question, step.examples_shown), schema, labels, tool)


async def choose_label(kernel: Kernel, run: RunState, step: Step, messages: list[dict[str, str]],
                       labels: list[str]) -> str:
    """One of `labels`, chosen by the model (by a vote of the step's samples, if it has them)."""
    async def choose(key: str, options: dict[str, Any]) -> str:
        return await kernel.choose(run.agent, run.id, messages, labels, key=key,
                                   options={**options, "max_tokens": CHOICE_MAX_TOKENS})

    if not step.samples:
        return await choose(run.key(step), run.options)

    async def sample(key: str, options: dict[str, Any]) -> Any:
        try:
            return await choose(key, options)
        except KernelError as exc:  # an answer that is not a label (a backend that cannot constrain it)
            return Unfit(str(exc))

    return await voted(run, step, sample)


async def voted(run: RunState, step: Step, draw: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> Any:
    """The most common of `step.samples` answers of `draw(key, options)`, all asked at once (so that the scheduler
    shares the model's slots among them), each with its sample's key and options; how the vote went joins
    `run.votes`. An Unfit answer is not counted; a step none of whose samples count fails, and so does one whose
    sample failed (with the first failure, once the others are done)."""
    drawn = [asyncio.ensure_future(draw(sample_key(run.key(step), n), sample_options(run.options, step.temperature, n)))
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
                       f"counted (the first: {answers[0].problem}); a larger model may do better (--model)",
                       kind=ErrorKind.BAD_OUTPUT)
    run.votes.append(tally.record())
    return answers[tally.winner]
