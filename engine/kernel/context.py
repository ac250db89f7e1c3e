"""The context manager: snapshots of suspended generations, kept until they resume; and prompts kept inside the
model's context window."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from enum import StrEnum

from engine.errors import RunFailure
from engine.kernel.storage import Storage
from engine.kernel.syscall import Syscall
from engine.llm.base import Backend, Request, Snapshot

ANSWER_ROOM = 512  # tokens kept free for the answer when a request sets no max_tokens


class WindowPolicy(StrEnum):
    """What to do with the oldest progress when a prompt would not fit the model's window."""

    TRUNCATE = "truncate"  # drop it
    SUMMARIZE = "summarize"  # replace it with a summary the model writes


class ContextOverflow(RunFailure):
    """A prompt does not fit the model's window even with all progress dropped."""


class ContextManager:
    """Holds the snapshot of each suspended syscall (and stores it, given storage); a syscall resumes from exactly
    where it stopped."""

    def __init__(self, storage: Storage | None = None) -> None:
        self.storage = storage
        self._snapshots: dict[str, Snapshot] = {}

    def suspend(self, syscall: Syscall, snapshot: Snapshot, *, store: bool = True) -> None:
        """Keep `snapshot` as the point `syscall` resumes from (and store it, unless it is one read back)."""
        self._snapshots[syscall.id] = snapshot
        if store and self.storage is not None:
            self.storage.record_snapshot(syscall, snapshot)

    def restore(self, syscall: Syscall) -> Snapshot | None:
        """The snapshot `syscall` resumes from (None for a fresh start); it is handed over, not kept."""
        return self._snapshots.pop(syscall.id, None)

    def __len__(self) -> int:
        return len(self._snapshots)


async def fit(request: Request, backend: Backend, policy: WindowPolicy,
              summarize: Callable[[list[dict[str, str]]], Awaitable[str]]) -> Request:
    """`request` with messages that leave room for its answer in `backend`'s window.

    The first message (the agent's description) and the last (the current instruction) are always kept; the
    progress between them goes, oldest first, until the prompt fits; under SUMMARIZE a summary of what went, by
    `summarize`, takes its place (itself cut if it does not fit).
    """
    budget = backend.context - request.options.get("max_tokens", ANSWER_ROOM)
    messages = request.messages
    if surely_fits(messages, budget) or backend.count_tokens(messages) <= budget:
        return request
    if len(messages) < 3:
        raise _overflow(backend, messages, budget)
    head, progress, tail = messages[:1], list(messages[1:-1]), messages[-1:]
    dropped = []
    while progress and backend.count_tokens(head + progress + tail) > budget:
        dropped.append(progress.pop(0))
    if policy is WindowPolicy.SUMMARIZE and dropped:
        summary = {"role": "user", "content": f"Summary of the earlier progress: {await summarize(dropped)}"}
        while progress and backend.count_tokens([*head, summary, *progress, *tail]) > budget:
            progress.pop(0)
        if backend.count_tokens([*head, summary, *progress, *tail]) <= budget:
            progress.insert(0, summary)
    fitted = head + progress + tail
    if backend.count_tokens(fitted) > budget:
        raise _overflow(backend, fitted, budget)
    return dataclasses.replace(request, messages=fitted)


TEMPLATE_ROOM = 16  # tokens a chat template may add around one message (role markers, separators)


def surely_fits(messages: list[dict[str, str]], budget: int) -> bool:
    """Whether `messages` fit in `budget` tokens whatever the tokenizer: a token holds at least one byte of text.
    Most prompts are far inside the window, and counting their tokens exactly costs a tokenizer call."""
    return sum(len(m.get("content", "").encode()) + TEMPLATE_ROOM for m in messages) <= budget


def _overflow(backend: Backend, messages: list[dict[str, str]], budget: int) -> ContextOverflow:
    return ContextOverflow(
        f"the prompt takes {backend.count_tokens(messages)} tokens without any progress, but the model's window "
        f"leaves {budget} for it: shorten the description or instruction, lower max_tokens, or use a larger "
        "context (model.options.num_ctx)")
