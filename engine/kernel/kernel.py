"""The kernel: the syscalls an agent run can make, each scheduled, checked and stored.

    generate / choose / use_tool   LLM syscalls: scheduler.submit (snapshots through the context manager);
    pick_tool                      use_tool's pick of a tool and arguments, without the call
    call_tool                      tool syscalls: access check, then the tool manager's own workers
    remember / recall              memory syscalls, reading another agent's only where the access manager allows
    store / load                   storage syscalls: an agent's own data, kept across runs, likewise guarded
    check_agent                    whether a run may start a run of another agent (the access manager decides)
Every syscall is made inside Kernel._recorded, the one place where it is recorded: its timings, tokens,
preemptions and error are stored when it ends (storage.record_syscall), queued to the storage's writer thread, so
that a commit never holds up the other agents' syscalls. A run with a journal (resumed or replayed) gets the
answers and tool results recorded there instead of asking again; those are not stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.errors import ErrorKind, RunFailure
from engine.events import EventBus, SyscallEnded, ToolEnded, ToolStarted
from engine.jsontext import parse_json
from engine.kernel.access import AccessManager, Group
from engine.kernel.asking import Answer, Question
from engine.kernel.bounds import cut, max_result
from engine.kernel.context import ContextManager, WindowPolicy, fit
from engine.kernel.journal import Journal
from engine.kernel.memory import Memory
from engine.kernel.retry import Backoff
from engine.kernel.scheduler import Policy, Scheduler
from engine.kernel.session import Budget, RunSession
from engine.kernel.storage import Storage
from engine.kernel.syscall import Syscall, SyscallKind, to_first_token
from engine.kernel.tables import MemoryRow
from engine.kernel.tools import BadArguments, Tool, ToolCall, ToolError, ToolManager, workspace
from engine.llm.base import Backend, ModelUnavailable, Request, Result

SUMMARY_TOKENS = 128


async def at_once(seconds: float) -> None:
    """Kernel.sleep where waiting serves nothing: a replay (its answers are recorded), a flow's tests."""


class KernelError(RunFailure):
    """A syscall could not be served; the message says why."""


class Kernel:
    """One model backend shared by many agents, with storage, memory, tools and access control."""

    def __init__(self, backend: Backend, storage: Storage, *, policy: Policy = Policy.FIFO, slice_tokens: int = 32,
                 tools: Iterable[Tool] = (), groups: Mapping[str, Group] | None = None,
                 memory_capacity: int = 32, workspaces: Path | None = None, retry: Backoff | None = None) -> None:
        self.storage = storage
        self.retry = retry or Backoff.from_env()  # for model calls that fail in a way that may pass
        # How it waits before trying again (model calls, a step's `retry`): a test's fake clock stands in for it
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        # Who answers what runs ask a person there and then (a terminal, a test's answers); None: the runs wait
        # (called with the id of the run a user started, whose tree asks, and the question)
        self.answerer: Callable[[str, Question], Awaitable[Answer | None]] | None = None
        self.max_result = max_result()  # bytes of a model answer or tool result kept (engine.kernel.bounds)
        self.workspaces = workspaces or Path(".flowrun") / "workspaces"  # a directory per run, for its tools' files
        self.runs: dict[str, RunSession] = {}  # the runs open now (open_run), by id
        self.context = ContextManager(storage)
        self.events = EventBus()  # what happens in each run, for whoever subscribes (engine.events)
        self.scheduler = Scheduler(backend, policy, slice_tokens=slice_tokens, context=self.context,
                                   events=self.events)
        self.tools = ToolManager(tools, storage, self.max_result)
        self.access = AccessManager(storage, groups=groups or {})
        self.memory = Memory(storage, memory_capacity)

    def open_run(self, run: str, agent: str, tools: Iterable[str] = (), *, workspace: Path | None = None,
                 journal: Journal | None = None, priority: int = 0, agents: Iterable[str] = (),
                 budget: Budget | None = None, root: str | None = None) -> RunSession:
        """Open run `run` of `agent`, which may call `tools` and start runs of `agents`, in `workspace` (default:
        its own directory under `workspaces`), given back what `journal` holds before asking again; its model calls
        have `priority` (under the priority policy) and spend `budget` (default: no bound); `root`: the run a user
        started, of whose tree it is (default: itself). close_run releases it."""
        if run in self.runs:
            raise KernelError(f"run {run} is open already")
        session = RunSession(run, agent, frozenset(tools), workspace or self.workspaces / run, journal, priority,
                             frozenset(agents), budget or Budget(), root=root or run)
        self.runs[run] = session
        return session

    def close_run(self, run: str) -> RunSession | None:
        """Release all the kernel holds of `run`: its session, its short-term memory (moved to long-term memory)
        and its token count. The session, or None if the run was not open."""
        self.memory.end_run(run)
        self.scheduler.generated.pop(run, None)
        return self.runs.pop(run, None)

    def _journal(self, run: str) -> Journal | None:
        session = self.runs.get(run)
        return session.journal if session is not None else None

    async def generate(self, agent: str, run: str, request: Request, priority: int | None = None,
                       kind: SyscallKind = SyscallKind.GENERATE,
                       window: WindowPolicy = WindowPolicy.TRUNCATE) -> Result:
        """Text (or data matching request.schema) from the model, scheduled among all agents' requests.

        A model that is unavailable (ModelUnavailable) is tried again after a backoff, up to `retry.attempts` times.

        A prompt too long for the model's window loses (or, under SUMMARIZE, has summarized) its oldest progress.

        Each call the model answers is charged to the run's budget (LimitReached where it is spent); an answer its
        journal gives back was charged when it was first asked.
        """
        session = self.runs.get(run)
        if priority is None:
            priority = session.priority if session is not None else 0
        request = await fit(request, self.scheduler.backend, window,
                            lambda dropped: self._summarize(agent, run, dropped, priority))
        journal = self._journal(run)
        if journal is not None and (text := journal.answer(request.key)) is not None:
            return Result(text, "stop", 0, 0)
        budget = session.budget if session is not None else Budget()
        request, held = budget.charge(request)
        syscall = Syscall(kind, agent, run, replace(request, run=run), priority)
        if journal is not None and (snapshot := journal.snapshot(request.key)) is not None:
            self.context.suspend(syscall, snapshot, store=False)
        with self._recorded(syscall):
            try:
                result = await self._submit(syscall)
            finally:
                budget.settle(held, syscall.tokens)
            result.text = cut(result.text, self.max_result)  # before it is stored (it is syscall.result)
            return result

    @contextlib.contextmanager
    def _recorded(self, syscall: Syscall, *, timed: bool = False) -> Iterator[Syscall]:
        """The one place a syscall is recorded: when the work in the block ends, with the error that ended it, if
        any (a cancelled call, Ctrl-C, is recorded as one, not as an answer). `timed`: the block is the whole of
        the work, so it also sets the start and end times (the scheduler and the tool manager set theirs)."""
        if timed:
            syscall.started = time.time()
        error = None
        try:
            yield syscall
        except BaseException as exc:
            error = str(exc) or type(exc).__name__
            raise
        finally:
            if timed:
                syscall.finished = time.time()
            self.storage.record_syscall(syscall, error)
            running = sum(end - start for start, end in syscall.slices) if syscall.slices else \
                (syscall.finished or time.time()) - (syscall.started or syscall.created)
            first = to_first_token(syscall.first_token, syscall.slices)
            self.events.publish(SyscallEnded(syscall.run, syscall=syscall.id, kind=syscall.kind,
                                             waiting=syscall.waiting, running=running, tokens=syscall.tokens,
                                             input_tokens=syscall.input_tokens, first_token=first, error=error))

    async def _submit(self, syscall: Syscall) -> Result:
        """`syscall` through the scheduler, tried again after a backoff while the model is unavailable."""
        attempt = 1
        while True:
            try:
                return await self.scheduler.submit(syscall)
            except ModelUnavailable as exc:
                if attempt >= self.retry.attempts:
                    raise ModelUnavailable(f"{exc} (tried {attempt} times)") from None
                await self.sleep(self.retry.delay(attempt - 1))  # off the model: its slot serves others
                attempt += 1

    async def _summarize(self, agent: str, run: str, dropped: list[dict[str, str]], priority: int | None) -> str:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in dropped)
        instruction = {"role": "system", "content": "Summarize this progress of an agent in a few sentences, "
                                                    "keeping every fact, name and number."}
        backend = self.scheduler.backend
        room = min(SUMMARY_TOKENS, backend.context // 4)
        while len(text) > 1 and backend.count_tokens([instruction, {"role": "user", "content": text}]) > \
                backend.context - room:
            text = text[max(1, len(text) // 4):]  # the most recent part of what went matters most
        request = Request([instruction, {"role": "user", "content": text}], key="summarize",
                          options={"max_tokens": room, "temperature": 0})
        return (await self.generate(agent, run, request, priority)).text.strip()

    async def choose(self, agent: str, run: str, messages: list[dict[str, str]], labels: list[str],
                     priority: int | None = None, options: dict[str, Any] | None = None, key: str = "") -> str:
        """Exactly one of `labels`, chosen by the model constrained to a JSON Schema enum of them."""
        request = Request(messages, schema={"type": "string", "enum": labels}, options=options or {}, key=key)
        result = await self.generate(agent, run, request, priority, SyscallKind.CHOOSE)
        label = _json_string(result.text)
        if label not in labels:  # a backend that cannot constrain (scripted) is held to the same contract
            said = result.text if len(result.text) <= 80 else f"{result.text[:80]}…"  # an answer may be huge
            raise KernelError(f"the model answered {said!r}, not one of {', '.join(labels)}", kind=ErrorKind.BAD_OUTPUT)
        return label

    async def call_tool(self, agent: str, run: str, name: str, arguments: Any) -> ToolCall:
        """Call tool `name` for `agent`, if the access manager allows it; the call made, with its result (that of
        the same call by the try before, in a retry of the run's step: RunSession.given_back)."""
        with self._recorded(Syscall(SyscallKind.TOOL, agent, run)) as syscall:
            session = self.runs.get(run)
            self.access.check_tool(agent, run, name, session.tools if session else frozenset())
            if session is not None and (call := session.given_back(name, arguments)) is not None:
                session.made.append(call)
                syscall.started = syscall.finished = time.time()
                return call
            token = workspace.set(session.workspace if session else self.workspaces / run)
            self.events.publish(ToolStarted(run, tool=name, syscall=syscall.id))
            failed = None
            try:
                call = await self.tools.call(syscall, name, arguments, self._journal(run))
                if session is not None:
                    session.made.append(call)
                return call
            except BaseException as exc:
                failed = str(exc) or type(exc).__name__
                raise
            finally:
                workspace.reset(token)
                self.events.publish(ToolEnded(run, tool=name, syscall=syscall.id, error=failed))

    async def ask(self, agent: str, run: str, question: Question) -> Answer | None:
        """The answer to what the run asks a person: the one its journal holds (given before it was resumed, or in
        the run a replay replays), or the answerer's, or its time running out, recorded now; None when nobody
        answers now (the run waits)."""
        journal = self._journal(run)
        if journal is not None and (text := journal.answer(question.key)) is not None:
            try:
                return Answer.read(text)
            except ValueError:
                raise KernelError(f"the answer recorded for {question.key!r} is not one an input step gives") from None
        syscall = Syscall(SyscallKind.INPUT, agent, run, Request([], key=question.key))
        session = self.runs.get(run)
        root = session.root if session is not None else run
        answer = await self.answerer(root, question) if self.answerer is not None else None
        if answer is None and question.expired():
            answer = Answer(timed_out=True)
        if answer is not None:
            with self._recorded(syscall, timed=True):
                syscall.started = syscall.created  # it waited for the person from the start
                syscall.result = Result(answer.text(), "stop", 0, 0)
        return answer

    def check_agent(self, agent: str, run: str, callee: str) -> None:
        """Return if `agent`'s run `run` may start a run of agent `callee`; else the access manager audits the
        denial and raises AccessDenied."""
        session = self.runs.get(run)
        self.access.check_agent(agent, run, callee, session.agents if session else frozenset())

    async def use_tool(self, agent: str, run: str, messages: list[dict[str, str]], names: list[str],
                       priority: int | None = None, options: dict[str, Any] | None = None, key: str = "") -> ToolCall:
        """The model picks one of the tools `names` and its arguments (structured output); the call made.

        Only those tools may run: constrained decoding pins the name to them (a `const` per tool), and an answer
        naming another tool (from a backend that cannot constrain) is invalid. An invalid answer, arguments that
        fail the tool's schema, and errors of an idempotent tool (one that may be repeated) go back to the model
        once, with the message; then the call fails.
        """
        tools, schema = self._callable(names)
        asked, problem = list(messages), None
        for _ in range(2):
            request = Request(asked, schema=schema, options=options or {}, key=key)
            result = await self.generate(agent, run, request, priority, SyscallKind.CALL_TOOL)
            try:
                name, arguments = _tool_choice(result.text, tools)
                return await self.call_tool(agent, run, name, arguments)
            except ToolError as exc:
                if not isinstance(exc, BadArguments) and not tools[name].idempotent:
                    raise
                problem = exc
            except (ValueError, KeyError, TypeError) as exc:
                problem = exc
            asked = [*messages, {"role": "assistant", "content": result.text},
                     {"role": "user", "content": f"That tool call is invalid: {problem}. Answer with a valid one."}]
        raise ToolError(f"the model's tool call still failed after the error was sent back: {problem}")

    async def pick_tool(self, agent: str, run: str, messages: list[dict[str, str]], names: list[str],
                        priority: int | None = None, options: dict[str, Any] | None = None, key: str = ""
                        ) -> tuple[str, Any]:
        """The model's pick of one of the tools `names` and its arguments, as use_tool asks for it, without calling
        the tool (a caller votes on several picks, then calls the winner once); BadArguments when the answer is not
        a call of one of them with arguments its parameters accept."""
        tools, schema = self._callable(names)
        request = Request(messages, schema=schema, options=options or {}, key=key)
        result = await self.generate(agent, run, request, priority, SyscallKind.CALL_TOOL)
        try:
            name, arguments = _tool_choice(result.text, tools)
        except (ValueError, KeyError, TypeError) as exc:
            raise BadArguments(f"the model's tool call is invalid: {exc}") from None
        problems = tools[name].problems(arguments)
        if problems:
            raise BadArguments(f"arguments for {name}: " + "; ".join(problems))
        return name, arguments

    def _callable(self, names: list[str]) -> tuple[dict[str, Tool], dict[str, Any]]:
        """The loaded tools among `names`, and the JSON Schema of a call of one of them."""
        tools = {n: self.tools.tools[n] for n in names if n in self.tools.tools}
        if not tools:
            raise ToolError(f"none of the tools {', '.join(names)} is loaded")
        calls, defs = [], {}
        for n, t in tools.items():
            parameters, own = _hoisted(n, t.parameters)
            calls.append({"type": "object", "additionalProperties": False, "required": ["tool", "arguments"],
                          "properties": {"tool": {"const": n}, "arguments": parameters}})
            defs.update(own)
        return tools, {"oneOf": calls, **({"$defs": defs} if defs else {})}

    async def remember(self, agent: str, run: str, *entries: tuple[str, str]) -> None:
        """Add interactions, (role, content) each, to the run's short-term memory (in process; what it evicts to
        long-term memory, and the syscall's record, are queued to storage)."""
        with self._recorded(Syscall(SyscallKind.MEMORY, agent, run), timed=True):
            self.memory.remember(agent, run, entries)

    async def recall(self, agent: str, run: str, query: str, owners: list[str] | None = None, limit: int = 5
                     ) -> list[MemoryRow]:
        """Long-term memories matching `query`, of `agent` or of `owners` the access manager lets it read."""
        owners = owners or [agent]

        def read() -> list[MemoryRow]:
            for owner in owners:
                self.access.check_read(agent, run, owner, "memory")
            return self.memory.recall(owners, query, limit)

        return await self._serve(SyscallKind.MEMORY, agent, run, read)

    async def store(self, agent: str, run: str, key: str, value: Any) -> None:
        """Keep `value` (JSON) under `key` in `agent`'s own storage, across runs."""
        await self._serve(SyscallKind.STORAGE, agent, run, self.storage.put, agent, key, value, run)

    async def load(self, agent: str, run: str, key: str, owner: str | None = None) -> Any:
        """The value under `key` in the storage of `owner` (default: `agent`), if the access manager allows."""
        owner = owner or agent

        def read() -> Any:
            self.access.check_read(agent, run, owner, "storage")
            return self.storage.get(owner, key)

        return await self._serve(SyscallKind.STORAGE, agent, run, read)

    async def _serve(self, kind: SyscallKind, agent: str, run: str, work: Callable[..., Any], *args: Any) -> Any:
        """Run a memory or storage syscall and store its record, on one worker thread (both touch the database)."""
        syscall = Syscall(kind, agent, run)  # made here: its wait for a worker thread counts as waiting

        def serve() -> Any:
            with self._recorded(syscall, timed=True):
                return work(*args)

        return await asyncio.to_thread(serve)


def _hoisted(name: str, parameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tool `name`'s `parameters` without their `$defs`, and those `$defs` renamed `name.X`, its references to them
    renamed to match: in the schema of a call of one tool among several, `#/$defs/X` is read from that schema's root
    (the schemas of servers built on pydantic refer to their nested models so)."""
    if not isinstance(parameters.get("$defs"), dict):
        return parameters, {}
    local = "#/$defs/"

    def renamed(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: local + f"{name}." + v[len(local):] if k == "$ref" and isinstance(v, str) and
                    v.startswith(local) else renamed(v) for k, v in node.items()}
        return [renamed(v) for v in node] if isinstance(node, list) else node

    moved = renamed(parameters)
    return moved, {f"{name}.{k}": v for k, v in moved.pop("$defs").items()}


def _tool_choice(text: str, tools: Mapping[str, Tool]) -> tuple[str, Any]:
    """The tool and arguments a model's answer `text` names (ValueError, KeyError or TypeError if it names none of
    `tools`)."""
    choice = parse_json(text)
    name, arguments = choice["tool"], choice["arguments"]
    if name not in tools:
        raise ValueError(f"{name!r} is not a tool this step may use; use {' or '.join(tools)}")
    return name, arguments


def _json_string(text: str) -> str:
    """The string a JSON string literal holds, or `text` itself when it is not one."""
    try:
        value = parse_json(text)
    except ValueError:
        return text.strip()
    return value if isinstance(value, str) else text.strip()
