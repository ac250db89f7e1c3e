"""What flowrun shows people: a live progress line while runs go on (on a terminal only), and stored runs as
tables and text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import click

from engine.errors import RunStatus
from engine.events import Event, EventBus, RunEnded, RunStarted, StepEnded, StepStarted
from engine.flowtest import CaseResult, Coverage, TestFile
from engine.interpreter.runs import RunFigures, RunRecord, place_in_parent, status
from engine.jsontext import parse_json
from engine.kernel.asking import Answer, Question
from engine.kernel.tables import RunRow

T = TypeVar("T")
_CLEAR = "\r\x1b[2K"
# What a terminal would act on instead of showing: escape sequences (CSI such as colours and cursor moves; OSC such
# as titles, hyperlinks and clipboard writes; DCS, SOS, PM and APC strings; two-byte escapes), the other C0 and C1
# control characters (a carriage return rewrites the line) and the bidirectional overrides that reorder text.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]?|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
                      r"|\x1b[ -/]*[0-~]?|[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


_ASKING = asyncio.Lock()  # held while a person answers on this terminal (ask_person)


def printable(text: str) -> str:
    """`text` (a model's or tool's, as stored) without what a terminal would act on instead of showing: every place
    that prints stored text passes it through here, so that a model cannot move the cursor, retitle the window,
    write the clipboard or hide text."""
    return _CONTROL.sub("", text)


@dataclass
class Progress:
    """Where a run is, as its events tell (engine.events): what a progress display shows of it."""

    run_id: str
    step: str = ""
    steps: int = 0
    status: RunStatus = RunStatus.QUEUED
    tokens: int = 0  # generated in all, once the run has ended (until then, the scheduler counts them)

    def observe(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.status = RunStatus.RUNNING
        elif isinstance(event, StepStarted):
            self.step = event.step
        elif isinstance(event, StepEnded):
            self.steps += 1
        elif isinstance(event, RunEnded):
            self.status, self.tokens = RunStatus(event.status), event.tokens


async def watch(work: Awaitable[T], progress: Sequence[Progress], events: EventBus, generated: Counter[str], *,
                live: bool, every: float = 0.25) -> T:
    """Await `work`, keeping `progress` as the runs' `events` tell, and redrawing a progress line on stderr
    meanwhile when `live` (a terminal)."""
    shown = {p.run_id: p for p in progress}

    def observe(event: Event) -> None:
        if event.run in shown:
            shown[event.run].observe(event)

    events.listeners.append(observe)
    task = asyncio.ensure_future(work)
    started = time.monotonic()
    try:
        while live and not task.done():
            if not _ASKING.locked():  # a person is typing an answer on this terminal: no line over theirs
                click.echo(_CLEAR + status_line(progress, generated, time.monotonic() - started), nl=False, err=True)
            await asyncio.wait({task}, timeout=every)
        return await task
    finally:
        if live:
            click.echo(_CLEAR, nl=False, err=True)
        if not task.done():  # cancelled (Ctrl-C): let the runs store that they were interrupted
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        events.listeners.remove(observe)


def status_line(progress: Sequence[Progress], generated: Counter[str], elapsed: float) -> str:
    """One line: the current step (one run) or a bar of runs done (many), tokens per second, time so far."""
    tokens = sum(generated[p.run_id] or p.tokens for p in progress)
    rate = f"{tokens} tokens, {tokens / elapsed:.0f} tok/s" if elapsed > 0 else f"{tokens} tokens"
    if len(progress) == 1:
        where = f"step {progress[0].steps + 1}: {progress[0].step or 'starting'}"
    else:
        done = sum(p.status not in (RunStatus.QUEUED, RunStatus.RUNNING) for p in progress)
        running = sum(p.status == RunStatus.RUNNING for p in progress)
        filled = round(20 * done / max(1, len(progress)))  # an eval whose cases all lack answers runs none
        where = f"[{'#' * filled}{'-' * (20 - filled)}] {done}/{len(progress)} runs, {running} running"
    return f"{where} · {rate} · {elapsed:.1f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows under headers, in columns as wide as their widest cell."""
    cells = [list(map(str, headers)), *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def runs_table(found: Sequence[RunFigures]) -> str:
    """Runs, one a line: id, agent, status, steps, tokens, waiting, turnaround, start and answer or error."""
    rows = [(f.run.id[:12], f.run.agent, status(f.run), f.steps, f.tokens, _seconds(f.waiting),
             _seconds(f.turnaround), _when(f.run.created), _short(f.run.error or f.run.answer, 40)) for f in found]
    return table(("run", "agent", "status", "steps", "tokens", "waiting", "turnaround", "started",
                  "answer / error"), rows)


def _vote(tally: dict[str, Any]) -> str:
    """How a sampled call's vote went (engine.interpreter.vote.Tally.record), in words."""
    agreed = tally["counts"][str(tally["winner"])]
    unfit = f", {len(tally['unfit'])} not counted" if tally["unfit"] else ""
    return f"{agreed} of {tally['samples']} samples agreed (sample {tally['winner']}){unfit}"


def run_text(record: RunRecord) -> str:
    """A stored run: what it was given, each step with its branch, tool calls, tokens and time, and its end."""
    run = record.run
    took = f" · took {_seconds(run.finished - run.created)}" if run.finished else ""
    called = f" · child of run {run.parent[:12]} at {place_in_parent(run)}" if run.parent else ""
    lines = [f"run {run.id} · {run.agent} ({run.flow}) · {status(run)}{called}",
             f"started {_when(run.created)}{took} · {len(record.steps)} steps · "
             f"{sum(s.tokens for s in record.steps)} tokens" + _with_children(record) +
             (f" · batch {run.batch[:12]}" if run.batch else ""),
             "inputs: " + ", ".join(f"{k}={_short(v, 60)}" for k, v in (run.inputs or {}).items()), ""]
    rows = []
    for n, step in enumerate(record.steps, 1):
        rows.append((n, step.step, step.visit, step.kind, step.branch or "", step.tokens,
                     _seconds(step.finished - step.started), _short(step.output, 60)))
        rows.extend(("", f"  {call['tool']}", "", "", "", "", "",
                     f"{_short(call['arguments'], 30)} -> {_short(call.get('result'), 40)}")
                    for call in step.tools or [])
        rows.extend(("", "  vote", "", "", "", "", "", _vote(tally)) for tally in step.vote or [])
    lines.append(table(("#", "step", "visit", "kind", "branch", "tokens", "time", "output"), rows))
    lines.append("")
    if record.children:
        lines.append("child runs:")
        lines.extend(_tree(record.children, "  "))
        lines.append("")
    if run.status == RunStatus.FINISHED:
        lines.append("answer: " + _text(run.answer))
    elif asking := [r.run for r in record.tree() if r.run.asking is not None and r.run.status == RunStatus.WAITING]:
        for asker in asking:  # its own question, or its child runs'
            lines.extend(_asking(Question.of(asker.asking), asker, run))
    elif run.error:
        lines.append(f"{run.status}: {printable(run.error)}")
    if status(run).resumable:
        lines.append(f"resume it with `flowrun runs resume {run.id[:12]}`")
    return "\n".join(lines)


def _asking(question: Question, asker: RunRow, shown: RunRow) -> list[str]:
    """What run `asker` asks (it, or a child run of the run `shown`), what answer fits, until when, and how to
    give it."""
    want = f"one of {', '.join(question.labels)}" if question.labels else \
        f"JSON matching {json.dumps(question.schema)}" if question.schema is not None else "text"
    until = f", until {_when(question.deadline)}" if question.deadline is not None else ""
    by = "" if asker.id == shown.id else f" (child run {asker.id[:12]})"
    step = "" if asker.id == shown.id else f" --step '{question.key}'"
    return [f"waiting for an answer to step {question.key}{by}{until}; it asks:", printable(question.prompt), "",
            f"answer {want}: `flowrun runs answer {shown.id[:12]}{step} --value JSON` (or --text TEXT)", ""]


def _with_children(record: RunRecord) -> str:
    """The tokens of the run's tree of child runs with its own, where it has children."""
    if not record.children:
        return ""
    tree = record.tree()
    return f" ({sum(s.tokens for r in tree for s in r.steps)} with its {len(tree) - 1} child runs)"


def _tree(children: Sequence[RunRecord], indent: str) -> list[str]:
    """Child runs, one a line under their parent, each with its own below it, indented."""
    lines = []
    for child in children:
        run = child.run
        end = _short(run.answer, 40) if run.status == RunStatus.FINISHED else printable(run.error or "")[:60]
        lines.append(f"{indent}{place_in_parent(run)}: run {run.id[:12]} · {run.agent} · {status(run)} · "
                     f"{len(child.steps)} steps · {sum(s.tokens for s in child.steps)} tokens · {end}")
        lines.extend(_tree(child.children, indent + "  "))
    return lines


def resumable_note(runs: Sequence[RunRow]) -> str:
    """How to resume those of `runs` that stopped before their end ("" when none did)."""
    stopped = [r for r in runs if status(r).resumable]
    if not stopped:
        return ""
    return (f"{len(stopped)} of these runs stopped before their end and can be resumed: "
            f"`flowrun runs resume RUN` (e.g. `flowrun runs resume {stopped[0].id[:12]}`)")


def tested(found: TestFile, results: Sequence[CaseResult], uncovered: Coverage) -> str:
    """A test file's cases, pass or FAIL with each difference, and what no case covered."""
    lines = [f"{found.path} ({found.flow_path})"]
    for result in results:
        took = f"{len(result.steps)} steps, {result.seconds:.1f} s"
        lines.append(f"  {'pass' if result.passed else 'FAIL'}  {result.case.name} ({took})")
        lines.extend(f"        {line}" for problem in result.problems for line in printable(problem).splitlines())
    missed = [f"step {s}" for s in uncovered.steps] + [f"{u} -[{label}]-> {v}" for u, label, v in uncovered.edges]
    lines.append(f"  not covered: {', '.join(missed)}" if missed else "  covered: every step and way out")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "" if value is None else printable(str(value))


def _text(value: Any) -> str:
    return printable(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2))


def _short(value: Any, width: int) -> str:
    if value is None:
        return ""
    text = " ".join(printable(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def _when(stamp: float) -> str:
    try:
        return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):  # past the calendar's years (a deadline centuries away)
        return "never"


async def ask_person(run: str, question: Question) -> Answer | None:
    """Ask `question` on the terminal (stderr, stdin) until the answer fits, or until its deadline: an Answer that
    timed out; None if stdin ends first (the run then waits). Reading stdin goes through the event loop, so the runs
    sharing the model go on meanwhile, and Ctrl-C leaves the run to resume (it asks again)."""
    async with _ASKING:  # runs (map items, say) asking at once are asked one after the other
        click.echo(_CLEAR, nl=False, err=True)
        return await _ask(run, question)


async def _ask(run: str, question: Question) -> Answer | None:
    want = f"one of: {', '.join(question.labels)}" if question.labels else \
        "JSON matching " + json.dumps(question.schema) if question.schema is not None else "text"
    click.echo(f"\nrun {run[:12]} asks (step {question.step}):\n{printable(question.prompt)}\n(answer {want})",
               err=True)
    while True:
        click.echo("> ", err=True, nl=False)
        try:
            line = await asyncio.wait_for(_line(), None if question.deadline is None else
                                          max(0.0, question.deadline - time.time()))
        except TimeoutError:
            click.echo("\n(no answer in time)", err=True)
            return Answer(timed_out=True)
        if line is None:
            return None
        value: Any = line
        if question.schema is not None and question.schema.get("type") != "string":
            try:
                value = parse_json(line)
            except ValueError as exc:
                click.echo(f"that is not JSON ({exc}): answer again", err=True)
                continue
        problems = question.problems(value)
        if not problems:
            return Answer(value)
        click.echo(f"that does not fit ({printable('; '.join(problems))}): answer again", err=True)


async def _line() -> str | None:
    """The next line typed on stdin, read when the event loop sees it ready (no thread is left blocked on it); None
    at its end."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(sys.stdin.fileno())
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None
