"""Syscalls: what an agent run asks of the kernel, with the timings the kernel records for it."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from engine.llm.base import Request, Result

# Ids come from a generator of their own, seeded by the OS once (again in a forked child): uuid4() asks the OS
# each time, and that call lets go of the interpreter lock, which a busy storage thread then holds for up to the
# switch interval (5 ms) before the event loop gets it back; under load that was 6% of the server's time.
_IDS = random.Random()
os.register_at_fork(after_in_child=_IDS.seed)


def new_syscall_id() -> str:
    """A syscall's id: 128 random bits, unique across processes sharing a database as a uuid4 is."""
    return f"{_IDS.getrandbits(128):032x}"


def to_first_token(first: float | None, slices: Sequence[Sequence[float]]) -> float | None:
    """Seconds a model call waited for its first token (which came at `first`): from the start of its time on the
    model (`slices`, each a start and an end) in which that token came, not from an earlier try that failed."""
    began = [start for start, _ in slices if first is not None and start <= first]
    return first - max(began) if began and first is not None else None


class SyscallKind(StrEnum):
    GENERATE = "generate"  # free text or data matching a schema
    CHOOSE = "choose"  # exactly one of a closed set of labels
    CALL_TOOL = "call_tool"  # the model picks a tool and its arguments
    TOOL = "tool"
    INPUT = "input"  # a person's answer to an input step
    MEMORY = "memory"
    STORAGE = "storage"


@dataclass
class Syscall:
    """One request of agent `agent` in run `run`. Higher `priority` goes first under the priority policy.

    Times are seconds since the epoch: waiting = started - created, turnaround = finished - created.
    """

    kind: SyscallKind
    agent: str
    run: str
    request: Request | None = None
    priority: int = 0
    id: str = field(default_factory=new_syscall_id)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    preemptions: int = 0
    slices: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each time on the model
    tokens: int = 0
    input_tokens: int | None = None  # the prompt's tokens, as the backend counted them (see Scheduler._run)
    first_token: float | None = None  # when the first token came
    result: Result | None = None

    @property
    def waiting(self) -> float | None:
        return None if self.started is None else self.started - self.created

    @property
    def turnaround(self) -> float | None:
        return None if self.finished is None else self.finished - self.created
