"""Replaying a stored run: its flow walked again with the run's recorded model answers and tool results (no model
is loaded and no tool runs), in scratch storage, and every difference from the recording reported."""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

from engine.errors import FlowrunError, RunStatus
from engine.flow.validate import CheckedFlow
from engine.interpreter.children import place_of
from engine.interpreter.resume import journal_of
from engine.interpreter.runs import RunRecord, place_in_parent, record, status, with_calls
from engine.interpreter.setup import kernel_for
from engine.interpreter.walk import RunOutcome, run_flow
from engine.kernel.journal import Journal
from engine.kernel.kernel import at_once
from engine.kernel.storage import Storage
from engine.kernel.tables import StepRow
from engine.llm.scripted import ScriptedBackend


class ReplayError(FlowrunError):
    """The run cannot be replayed on its own; the message says what to replay instead."""


@dataclass
class Replay:
    """A replay of `recorded`: how it ended, its steps, its child runs' records, and how it differs from the
    recording (nothing, ideally)."""

    recorded: RunRecord
    outcome: RunOutcome
    steps: list[StepRow]
    differences: list[str] = field(default_factory=list)
    children: list[RunRecord] = field(default_factory=list)


async def replay_run(recorded: RunRecord, checked: CheckedFlow, *, file: str) -> Replay:
    """Walk `checked` (the flow of `recorded`, from `file`) again on the recorded answers, strictly: a request the
    recording does not hold, in its order, ends the replay as a divergence. A child run is replayed with the run a
    user started (a ReplayError names it): a map item's needs its parent's state."""
    if recorded.run.parent is not None:
        raise ReplayError(f"run {recorded.run.id} is a child run of run {recorded.run.parent} (its step "
                          f"{recorded.run.parent_step}): replay the run a user started, which replays its child runs")
    with tempfile.TemporaryDirectory(prefix="flowrun-replay-") as scratch:
        storage = Storage(f"sqlite:///{scratch}/replay.db")
        try:
            kernel = kernel_for([checked], ScriptedBackend([]), storage, workspaces=Path(scratch))
            kernel.sleep = at_once  # a retry's backoff: the answers are here already
            journal = replay_journal(recorded)
            outcome = await run_flow(kernel, checked.compiled, recorded.run.inputs or {}, file=file, journal=journal,
                                     memory=recorded.run.memory or {})
            # its tool results are the recording's, given back by the journal: its steps refer to those calls
            steps = with_calls(storage.of_runs(StepRow, [outcome.run_id]), recorded.tools)
            children = record(storage, outcome.run_id).children
        finally:
            storage.close()
    replay = Replay(recorded, outcome, steps, children=children)
    replay.differences = differences(replay, checked.compiled.sha256, file)
    return replay


def replay_journal(recorded: RunRecord) -> Journal:
    """What a replay of `recorded` is given back: its answers and tool results, strictly, and its child runs'."""
    journal = journal_of(recorded.syscalls, recorded.tools, strict=True)
    journal.memory = recorded.run.memory or {}
    journal.children = {place_of(c.run): replay_journal(c)
                        for c in recorded.children}
    return journal


def differences(replay: Replay, sha256: str | None, file: str) -> list[str]:
    """What differs between the replay and the recording, step by step (up to the first change of path)."""
    run, found = replay.recorded.run, []
    if run.flow_sha256 and sha256 != run.flow_sha256:
        found.append(f"{file} changed since the run was recorded")
    ended = status(run).ended  # a run that stopped midway is compared over the steps it took
    pairs = zip_longest(replay.recorded.steps, replay.steps if ended else replay.steps[:len(replay.recorded.steps)])
    for n, (old, new) in enumerate(pairs, 1):
        if old is None or new is None or old.step != new.step:
            recorded = f"went on to step {old.step}" if old else "ended"
            replayed = f"went on to step {new.step}" if new else "ended"
            found.append(f"step {n}: the recorded run {recorded}, the replay {replayed}")
            break
        if old.branch != new.branch:
            found.append(f"step {n} ({old.step}): the recorded run took branch {old.branch!r}, the replay "
                         f"{new.branch!r}")
        elif old.output != new.output:
            found.append(f"step {n} ({old.step}): the output differs: recorded {_short(old.output)}, replayed "
                         f"{_short(new.output)}")
    outcome = replay.outcome
    if ended and (outcome.status, outcome.answer, _plain(outcome.error)) != (run.status, run.answer,
                                                                             _plain(run.error)):
        found.append(f"the recorded run {run.status}" + (f": {run.error}" if run.error else "") +
                     f"; the replay {outcome.status}" + (f": {outcome.error}" if outcome.error else ""))
    if ended:
        found.extend(_child_differences(replay.recorded.children, replay.children))
    elif not ended and len(replay.steps) < len(replay.recorded.steps):
        found.append(f"the replay {outcome.status}: {outcome.error}")
    return found


def _child_differences(recorded: list[RunRecord], replayed: list[RunRecord], within: str = "") -> list[str]:
    """How the replayed child runs ended differently from the recorded ones at the same places (those the
    recording cancelled midway, a fail-fast step's, aside)."""
    by_place = {place_in_parent(child.run): child for child in replayed}
    found = []
    for old in recorded:
        place = within + place_in_parent(old.run)
        new = by_place.get(place_in_parent(old.run))
        if old.run.status == RunStatus.INTERRUPTED:
            continue
        if new is None:
            found.append(f"child run at {place}: the recorded run {old.run.status}, the replay did not start it")
        elif (old.run.status, old.run.answer, _plain(old.run.error)) != (new.run.status, new.run.answer,
                                                                          _plain(new.run.error)):
            found.append(f"child run at {place}: the recorded run {old.run.status} "
                         f"({_short(old.run.error or old.run.answer)}), the replay {new.run.status} "
                         f"({_short(new.run.error or new.run.answer)})")
        else:
            found.extend(_child_differences(old.children, new.children, f"{place} > "))
    return found


def _plain(error: str | None) -> str | None:
    """An error with the run ids in it left out (a replay's runs have ids of their own)."""
    return None if error is None else re.sub(r"\b[0-9a-f]{12,32}\b", "…", error)


def _short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return repr(text if len(text) <= width else text[: width - 1] + "…")
