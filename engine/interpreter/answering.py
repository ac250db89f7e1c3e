"""Answering a run that waits for a person (an input step's question), from any process: the answer is checked
against the question, then recorded as the run's input syscall while the run (and the runs above it, when a child
run asked) turns from waiting to paused, in one transaction, so that of two answers at once exactly one counts.
The run then goes on as any paused run does (engine.interpreter.resume): its journal gives the input step the
answer. A question whose deadline passed is settled the same way with a timeout, by whoever sees it first."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from engine.errors import FlowrunError, RunStatus
from engine.interpreter.runs import root_of, status
from engine.kernel.asking import Answer, Question
from engine.kernel.storage import Storage
from engine.kernel.syscall import SyscallKind, new_syscall_id
from engine.kernel.tables import RunRow

MAX_ANSWER = 65_536  # characters of JSON an answer may be: it is stored with the run, and shown


class AnswerError(FlowrunError):
    """The answer cannot be taken (the run does not wait, it came too late, another came first); the run is left
    as it was, and the message says why and what to do."""


class UnfitAnswer(AnswerError):
    """The answer does not fit the question (its labels, its schema): the run still waits."""


@dataclass(frozen=True)
class Waiting:
    """A run that waits: the run a user started (`root`), the run that asked (`run`: the root or a child run of
    it), its `question`, and the runs between them (`above`: the asker's parent, its parent, up to the root)."""

    root: RunRow
    run: RunRow
    question: Question
    above: tuple[str, ...]


def waiting(storage: Storage, run_id: str) -> list[Waiting]:
    """The questions the tree of the run `run_id` (a start of its id; a child run's: its root's) waits on the
    answers of: those of its runs that wait (a parent already answered for one child may wait on others)."""
    root = root_of(storage, storage.find_run(run_id))
    if root.status not in (RunStatus.WAITING, RunStatus.PAUSED):
        return []
    found, level, above = [], [root], {root.id: ()}
    while level:
        for run in level:
            if run.asking is not None and run.status == RunStatus.WAITING:
                found.append(Waiting(root, run, Question.of(run.asking), above[run.id]))
        children = [c for c in storage.children([run.id for run in level])
                    if c.status in (RunStatus.WAITING, RunStatus.PAUSED)]
        above.update({c.id: (c.parent or "", *above[c.parent or ""]) for c in children})
        level = children
    return found


def answer(storage: Storage, run_id: str, value: Any, *, step: str | None = None, now: float | None = None
           ) -> Waiting:
    """Record `value` as the answer to what the run `run_id` waits on (its step `step`'s question, where it waits
    on several), and make the run resumable; the question answered. AnswerError, the run left waiting, when the
    run does not wait, the answer does not fit or it came past the question's deadline (then settled as timed
    out)."""
    given = storage.find_run(run_id)
    questions = [q for q in waiting(storage, run_id) if given.parent is None or q.run.id == given.id]
    if not questions:
        run = root_of(storage, given)
        raise AnswerError(f"run {given.id} waits for no answer: it is {status(given if given.parent else run)}")
    if step is not None:  # a step's id, or a request key (`each[2].ask`: an item's)
        named = [q for q in questions if step in (q.question.step, q.question.key)]
        if not named:
            raise AnswerError(f"run {run_id} waits for no answer of step {step!r}: it waits for "
                              f"{', '.join(q.question.key for q in questions)}")
        questions = named
    if len(questions) > 1:
        keys = ", ".join(q.question.key for q in questions)
        raise AnswerError(f"run {run_id} waits for several answers ({keys}): name the one you answer with --step "
                          "(one of these), or answer the child run that asks it")
    [asked] = questions
    if asked.question.expired(now):
        settle(storage, asked, Answer(timed_out=True))
        raise AnswerError(f"too late: step {asked.question.step} stopped waiting at {when(asked.question)}; the "
                          f"run goes on its timeout way when resumed (`flowrun runs resume {asked.root.id[:12]}`)")
    problems = asked.question.problems(value)
    if len(Answer(value).text()) > MAX_ANSWER:
        problems.append(f"it is longer than the {MAX_ANSWER:,} characters of JSON an answer may be")
    if problems:
        raise UnfitAnswer(f"that answer does not fit step {asked.question.step} ({'; '.join(problems)}); the run "
                          f"still waits. It asks: {asked.question.prompt}")
    if not settle(storage, asked, Answer(value)):
        raise AnswerError(f"run {asked.root.id} was answered (or timed out) meanwhile: this answer does not count")
    return asked


def time_out(storage: Storage, now: float | None = None) -> list[Waiting]:
    """Settle every question whose deadline passed as timed out (their runs resumable); those settled here."""
    settled = []
    # a paused root may hold children that still wait: one of them answered, the run not resumed yet
    roots = [*storage.find_runs(limit=None, status=RunStatus.WAITING),
             *storage.find_runs(limit=None, status=RunStatus.PAUSED)]
    for root in roots:
        for asked in waiting(storage, root.id):
            if asked.question.expired(now) and settle(storage, asked, Answer(timed_out=True)):
                settled.append(asked)
    return settled


def settle(storage: Storage, asked: Waiting, given: Answer) -> bool:
    """Record `given` for `asked` and make its runs resumable, if nobody did first."""
    when = given.given
    syscall = {"id": new_syscall_id(), "run_id": asked.run.id, "agent": asked.run.agent,
               "kind": SyscallKind.INPUT.value, "priority": 0, "created": when, "started": when, "finished": when,
               "waiting": 0.0, "turnaround": 0.0, "tokens": 0, "preemptions": 0, "key": asked.question.key,
               "text": given.text()}
    why = (f"step {asked.question.step} timed out: resume the run to go on its timeout way" if given.timed_out else
           f"step {asked.question.step} was answered: resume the run to go on")
    return storage.settle_waiting(asked.run.id, asked.run.events, syscall, why, asked.above)


def when(question: Question) -> str:
    """The question's deadline, as local time."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(question.deadline or 0))
    except (ValueError, OverflowError, OSError):  # past the calendar's years
        return "never"
